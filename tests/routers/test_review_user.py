"""Found by a new user's walk through the README and docs (black-box, against the running service)."""

from __future__ import annotations

import pytest


def _refused():
    from sqlalchemy.exc import OperationalError

    return OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))


@pytest.mark.parametrize("path", ["/runs", "/runs/r1", "/schedule"])
async def test_a_read_that_meets_the_database_down_acted_on_nothing(make_client, monkeypatch, path):
    """GET /runs with PostgreSQL stopped said "what it did may not be recorded. The outcome is unknown: check GET
    /runs once the database is back before retrying", with `outcome_unknown` and no Retry-After: a read does
    nothing, so it is the plain "retry after 5 s" refusal."""
    from core.ledger import Ledger
    from workflows.scheduler import JobScheduler

    async def down(self, *args, **kwargs):
        raise _refused()

    monkeypatch.setattr(Ledger, "list_runs", down)
    monkeypatch.setattr(Ledger, "get_run", down)
    monkeypatch.setattr(JobScheduler, "describe", down)
    async with make_client() as client:
        response = await client.get(path)
    assert response.status_code == 503
    body = response.json()
    assert body["type"] == "/problems/store-unavailable"
    assert body["nothing_sent"] is True and "outcome_unknown" not in body
    assert response.headers["retry-after"] == "5"
    assert "outcome is unknown" not in body["detail"]


async def test_every_setting_skills_says_is_missing_is_one_it_lists(make_client):
    """GET /skills with nothing set: email's missing_settings named SMTP_FROM, which neither its required_settings
    (SMTP_HOST) nor its optional_settings listed, so a reader setting what /skills lists still had no email."""
    async with make_client() as client:
        skills = (await client.get("/skills")).json()["skills"]
    for skill in skills:
        listed = set(skill["required_settings"]) | set(skill["optional_settings"])
        assert set(skill["missing_settings"]) <= listed, skill
