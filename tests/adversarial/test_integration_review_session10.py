"""Integration review of session 10: where two of the day's merged changes meet and disagree.

The review's GET /schedule checks (a done late stop says why it keeps its late stop) are assertions in the tests
of the same scenarios: tests/workflows/test_mutation_survivors.py and test_late_stop_after_lost_answer.py."""

from __future__ import annotations

from tests.workflows.world import (
    finished_runs,
    wait_for,
    world,
)


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
