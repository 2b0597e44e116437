"""A run's status and trigger are StrEnums beside RunKind (core.run_kinds, re-exported by core.ledger), not Literal
aliases private to routers/runs.py: the ledger writes and compares statuses from the same list GET /runs filters on.

The values are those of the Literals they replace, in the same order; OpenAPI names them (components RunStatus and
RunTrigger) as it names RunKind, and a bad filter is the 422 a bad kind is, down to `errors[].type`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

import core.ledger  # read as core.ledger.X where used: without the change a test fails on what it checks
from core.store import Run

#: What routers/runs.py's Literal aliases held: the values and their order (the 422 lists them in it) stay.
STATUSES = ["running", "ok", "partial", "failed", "dry_run", "cancelled"]
TRIGGERS = ["api", "whatsapp", "slack", "schedule"]


def test_the_statuses_and_triggers_are_enums_beside_the_kinds_with_the_same_values():
    from core import run_kinds

    assert core.ledger.RunStatus is run_kinds.RunStatus and core.ledger.RunTrigger is run_kinds.RunTrigger
    assert [status.value for status in core.ledger.RunStatus] == STATUSES
    assert [trigger.value for trigger in core.ledger.RunTrigger] == TRIGGERS
    # StrEnum members equal their strings, so callers that pass "ok" or "api" keep working.
    assert core.ledger.RunStatus.DRY_RUN == "dry_run" and core.ledger.RunTrigger.SCHEDULE == "schedule"


@pytest.mark.parametrize(("name", "values"), [("status", STATUSES), ("trigger", TRIGGERS)])
async def test_openapi_names_the_status_and_trigger_enums_as_it_names_the_kinds(client, name, values):
    schema = (await client.get("/openapi.json")).json()
    [parameter] = [p for p in schema["paths"]["/runs"]["get"]["parameters"] if p["name"] == name]
    refs = [option["$ref"] for option in parameter["schema"]["anyOf"] if "$ref" in option]
    assert refs == [f"#/components/schemas/Run{name.title()}"], parameter["schema"]
    component = schema["components"]["schemas"][f"Run{name.title()}"]
    assert (component["type"], component["enum"]) == ("string", values)
    assert parameter["required"] is False


@pytest.mark.parametrize(
    ("params", "values"),
    [({"status": "done"}, STATUSES), ({"trigger": "cron"}, TRIGGERS), ({"status": "OK"}, STATUSES)],
)
async def test_a_bad_status_or_trigger_is_the_422_of_a_bad_kind(client, params, values):
    [(name, bad)] = params.items()
    response = await client.get("/runs", params=params)
    kind = (await client.get("/runs", params={"kind": "slack.notfy"})).json()

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == "/problems/invalid-input"
    assert body["detail"] == f"The request is invalid: check query.{name}."
    listed = [f"'{value}'" for value in values]
    assert body["errors"] == [
        {
            "field": f"query.{name}",
            "message": f"Input should be {', '.join(listed[:-1])} or {listed[-1]}",
            "type": "enum",
        }
    ]
    # The same shape and error type as a bad kind: the Literal said "literal_error" where the kind said "enum".
    assert sorted(body) == sorted(kind) and body["errors"][0]["type"] == kind["errors"][0]["type"]
    assert bad not in response.text


async def test_every_status_and_trigger_is_written_and_filters(client):
    ledger = client.app.state.resources.ledger
    RunStatus, RunTrigger = core.ledger.RunStatus, core.ledger.RunTrigger
    ids = {}
    for status, trigger in zip(RunStatus, [*RunTrigger, *RunTrigger], strict=False):
        run_id = await ledger.start_run(core.ledger.RunKind.BRIEFING, trigger=trigger)
        if status != RunStatus.RUNNING:
            await ledger.finish_run(run_id, status=status)  # a member, as callers may now pass
        ids[status] = run_id

    for status, trigger in zip(RunStatus, [*RunTrigger, *RunTrigger], strict=False):
        page = (await client.get("/runs", params={"status": status.value, "trigger": trigger.value})).json()
        assert [(item["id"], item["status"], item["trigger"]) for item in page["items"]] == [
            (ids[status], status.value, trigger.value)
        ]
    async with client.app.state.resources.sessions() as session:
        stored = (await session.scalars(select(Run.status))).all()
    assert sorted(stored) == sorted(STATUSES)


async def test_the_prune_still_finds_and_closes_a_running_run_by_its_status(client):
    """The ledger's own comparisons (`abandoned_runs`, `close_interrupted`) now name RunStatus.RUNNING."""
    resources = client.app.state.resources
    ledger, settings = resources.ledger, resources.settings
    old = await ledger.start_run(core.ledger.RunKind.SLACK_NOTIFY, trigger=core.ledger.RunTrigger.API)
    async with resources.sessions.begin() as session:
        (await session.get(Run, old)).created_at = datetime.now(UTC) - settings.abandoned_after - timedelta(minutes=1)
    [abandoned] = await ledger.abandoned_runs(settings.abandoned_after)
    assert abandoned.id == old
    assert await ledger.close_interrupted(abandoned, settings.abandoned_after) is True
    assert (await ledger.get_run(old)).status == "failed"
    assert await ledger.abandoned_runs(settings.abandoned_after) == []
