"""Findings of review session 9 (the run-kind enum, Twilio webhooks), each with the test that shows it."""

from __future__ import annotations

import ast

from tests.routers.test_runs_kind_filter import _kind_arguments


def test_the_run_kind_check_sees_a_kind_handed_positionally_to_a_helper_that_records_the_run():
    """`send_chat_reply(ledger, RunKind.SLACK_REPLY, ...)` records the Slack thread reply. The check that every
    RunKind member is recorded somewhere read only `kind=` and a fixed list of names, missed it, and failed on
    main: `slack.reply` looked recorded nowhere."""
    passed = {ast.unparse(kind) for _where, kind, _function in _kind_arguments() if kind is not None}

    assert "RunKind.SLACK_REPLY" in passed
    assert "RunKind.WHATSAPP_REPLY" in passed
