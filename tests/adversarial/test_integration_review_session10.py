"""Integration review of session 10: where two of the day's merged changes meet and disagree."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import time_machine

from tests.workflows.test_late_stop_after_lost_answer import lose_the_first_stop_answer
from tests.workflows.test_scheduler import stop_row
from tests.workflows.world import (
    TOGGL_BASE,
    FakeToggl,
    finished_runs,
    post_whatsapp,
    wait_for,
    whatsapp_form,
    world,
)


async def test_get_schedule_says_why_a_done_late_stop_still_shows_its_late_time(make_client, monkeypatch):
    """GET /schedule now lists the day's ended stops "with their result" (8cc9a7e), and a late planned stop whose
    set-back failed ends `done` with its `backdate_error` (the entry keeps the late stop, to be corrected by hand)
    only in its run's result. The listing showed it `done` with `error: null`: the one list of stops said all was
    well with an entry recording the outage as work."""
    monkeypatch.setattr(FakeToggl, "_update", lambda self, request: httpx.Response(400, json="Stop time is invalid"))
    async with world() as w:
        settings = w.settings()
        async with make_client(**settings) as client:
            await post_whatsapp(client, whatsapp_form("start report for 5 min"))
        with time_machine.travel(datetime.now(UTC) + timedelta(minutes=10), tick=True):
            async with make_client(**settings) as client:
                await wait_for(lambda: w.toggl.stops == ["9001"])
                [run] = await finished_runs(client, "schedule.stop_timer")
                await stop_row(client, until=lambda row: row.status != "pending")
                [listed] = (await client.get("/schedule")).json()["stops"]
    assert "Stop time is invalid" in run["result"]["backdate_error"]
    assert (listed["status"], listed["run_id"]) == ("done", run["id"])
    assert listed["error"] is not None and "Stop time is invalid" in listed["error"]


async def test_get_schedule_says_why_a_late_stop_answered_409_was_not_checked(make_client):
    """The 409 path's `backdate_error` comes without `stopped_late_at` (939a6ce: the entry could not be read to
    tell whether this stop ended it late): GET /schedule must carry it too, not `done` with `error: null`."""
    async with world() as w:
        settings = w.settings()
        w.toggl.mock.get(url__regex=rf"{TOGGL_BASE}/me/time_entries/\d+$").mock(
            return_value=httpx.Response(503, json="Toggl is down for maintenance")
        )
        async with make_client(**settings) as client:
            await post_whatsapp(client, whatsapp_form("start report for 5 min"))
        lose_the_first_stop_answer(w.toggl, httpx.ReadTimeout)
        with time_machine.travel(datetime.now(UTC) + timedelta(minutes=10), tick=True):
            async with make_client(**settings) as client:
                [run] = await finished_runs(client, "schedule.stop_timer")
                await stop_row(client, until=lambda row: row.status != "pending")
                [listed] = (await client.get("/schedule")).json()["stops"]
    assert "stopped_late_at" not in run["result"]
    assert listed["status"] == "done"
    assert listed["error"] == run["result"]["backdate_error"]


async def test_the_brief_commands_briefing_run_keeps_the_api_wording(make_client):
    """f5dce52: "The ledger's rows of a chat run (the action's and the run's `error`) keep the API wording: GET
    /runs is read by whoever runs the service." The `brief` command runs the briefing with audience "chat" for its
    reply, and its `briefing` run's error and result were built from those chat-worded steps: GET /runs read "the
    operator must set TOGGL_WORKSPACE_ID", not the API's "or pass workspace_id" nor 'check the running timer'."""
    from tests.routers.test_slack_events import callback, mention, post

    async with world() as w:
        w.toggl.fail_start = 502
        async with make_client(**w.settings()) as client:
            await post(client, callback(mention("<@UBOT> brief")))
            [run] = await finished_runs(client, "briefing")
            await wait_for(lambda: any(sent.get("thread_ts") for sent in w.slack.posts))
    [reply] = [sent["text"] for sent in w.slack.posts if sent.get("thread_ts")]
    assert 'send "status"' in reply  # the chat reply keeps the chat wording
    api_check = "check the running timer (GET /timers/current or Toggl) before retrying."
    assert api_check in run["error"] and 'send "status"' not in run["error"], run["error"]
    [timer] = [step for step in run["result"]["steps"] if step["name"] == "timer"]
    assert timer["detail"].endswith(api_check), timer
