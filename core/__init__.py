"""Shared plumbing: settings, errors, logging, store, ledger, auth, dependencies."""

__version__ = "0.1.0"
