"""POST /morning-briefing through the real app and skills, against fake Toggl, Slack and Claude."""

from __future__ import annotations

import re

import pytest

from tests.fakes.server import Reply
from tests.workflows.world import CLAUDE_PATH, TOGGL_BASE, post_whatsapp, runs_of, whatsapp_form, world

#: The zone offset a time in the hour the clocks repeat in autumn carries ("02:40 Europe/Berlin (CEST, UTC+02:00)"):
#: the tests that read the real clock see it one hour a year.
REPEATED_HOUR = r"( \(\w+, UTC[+-]\d\d:\d\d\))?"


@pytest.fixture
async def w():
    async with world() as fakes:
        yield fakes


def steps_by_name(report: dict) -> dict[str, dict]:
    return {step["name"]: step for step in report["steps"]}


async def test_ok_briefing_posts_one_summary_with_plan_and_timer(w, make_client):
    w.claude.answer = "- Draft the proposal\n- Lunch walk"
    async with make_client(**w.settings(briefing_channel="#random")) as client:
        response = await client.post("/morning-briefing", json={"task": "Proposal", "duration_minutes": 60})
        report = response.json()
        run = (await client.get(f"/runs/{report['run_id']}")).json()
        schedule = (await client.get("/schedule")).json()

    assert response.status_code == 200, report
    assert report["status"] == "ok"
    assert report["plan"] == "- Draft the proposal\n- Lunch walk"
    steps = steps_by_name(report)
    assert [step["name"] for step in report["steps"]] == ["plan", "timer", "slack"]
    assert all(step["status"] == "ok" for step in report["steps"])
    assert steps["timer"]["external_id"] == "9001"
    assert steps["slack"]["external_id"] == "1732521600.000001"

    # What reached the fakes: the prompt, the running timer, one summary in BRIEFING_CHANNEL.
    [prompt] = w.claude.prompts
    assert "60-minute focus block: Proposal" in prompt
    assert w.claude.calls("POST", CLAUDE_PATH)[0].json["system"].startswith("You are a concise productivity")
    [started] = w.toggl.starts
    assert (started["description"], started["duration"]) == ("Proposal", -1)
    [summary] = w.slack.posts
    assert summary["channel"] == "#random"
    assert "- Draft the proposal" in summary["text"]
    assert re.search(
        rf"\*Timer\*: 'Proposal' started \d\d:\d\d Europe/Berlin{REPEATED_HOUR}, stops \d\d:\d\d Europe/Berlin",
        summary["text"],
    )

    # One ledger run, one action per step.
    assert (run["kind"], run["trigger"], run["status"]) == ("briefing", "api", "ok")
    assert sorted((a["skill"], a["operation"], a["status"]) for a in run["actions"]) == [
        ("ai_router", "generate", "ok"),
        ("slack", "post_message", "ok"),
        ("toggl", "start_timer", "ok"),
    ]
    # The planned stop of the briefing timer is persisted.
    assert [stop["id"] for stop in schedule["stops"]] == ["stop:9001"]


async def test_plan_failure_still_sends_the_summary_saying_so(w, make_client):
    w.claude.fail = Reply(400, json={"type": "error", "error": {"type": "invalid_request_error", "message": "nope"}})
    async with make_client(**w.settings()) as client:
        response = await client.post("/morning-briefing", json={})
        report = response.json()
        run = (await client.get(f"/runs/{report['run_id']}")).json()
    assert response.status_code == 200
    assert report["status"] == "partial" and report["plan"] is None
    steps = steps_by_name(report)
    assert steps["plan"]["status"] == "failed" and steps["plan"]["detail"]
    assert steps["timer"]["status"] == "ok" and steps["slack"]["status"] == "ok"
    [summary] = w.slack.posts
    assert "*Plan*: could not be generated" in summary["text"]
    assert "'Deep Work' started" in summary["text"]
    assert run["status"] == "partial"
    assert {a["operation"]: a["status"] for a in run["actions"]}["generate"] == "failed"


async def test_the_briefings_own_settings_are_named_when_missing(w, make_client):
    """Found by a black-box review: the timer step dropped `missing_settings` (TOGGL_WORKSPACE_ID), and the Slack
    step said "pass `channel` or set SLACK_DEFAULT_CHANNEL", leaving out BRIEFING_CHANNEL."""
    settings = w.settings(toggl_workspace_id=None, slack_default_channel=None)
    async with make_client(**settings) as client:
        report = (await client.post("/morning-briefing", json={})).json()
    steps = steps_by_name(report)
    assert (steps["timer"]["status"], steps["timer"]["missing_settings"]) == (
        "not_configured",
        ["TOGGL_WORKSPACE_ID"],
    )
    assert steps["timer"]["detail"].startswith("No Toggl workspace: set TOGGL_WORKSPACE_ID")
    assert (steps["slack"]["status"], steps["slack"]["missing_settings"]) == ("not_configured", ["BRIEFING_CHANNEL"])
    assert steps["slack"]["detail"] == (
        "no channel for the summary: pass `channel`, or set BRIEFING_CHANNEL (or SLACK_DEFAULT_CHANNEL)"
    )
    assert w.toggl.starts == [] and w.slack.posts == []


async def test_unconfigured_toggl_is_reported_and_the_rest_runs(w, make_client):
    async with make_client(**w.settings(toggl_api_token=None)) as client:
        response = await client.post("/morning-briefing", json={})
        report = response.json()
        run = (await client.get(f"/runs/{report['run_id']}")).json()
    assert response.status_code == 200
    steps = steps_by_name(report)
    assert steps["timer"]["status"] == "not_configured"
    assert "TOGGL_API_TOKEN" in steps["timer"]["detail"]
    assert steps["plan"]["status"] == "ok" and steps["slack"]["status"] == "ok"
    assert report["status"] == "partial"
    assert "*Timer*: not started" in w.slack.posts[0]["text"]
    assert {a["operation"]: a["status"] for a in run["actions"]}["start_timer"] == "not_configured"


async def test_slack_failure_is_partial(w, make_client):
    async with make_client(**w.settings()) as client:
        response = await client.post("/morning-briefing", json={"channel": "#does-not-exist"})
    report = response.json()
    assert response.status_code == 200
    assert report["status"] == "partial"
    assert steps_by_name(report)["slack"]["status"] == "failed"
    assert "channel" in steps_by_name(report)["slack"]["detail"].lower()


async def test_every_step_failing_is_a_502_problem_with_the_steps(w, make_client):
    w.claude.fail = Reply(400, json={"type": "error", "error": {"type": "invalid_request_error", "message": "no"}})
    async with make_client(**w.settings(toggl_api_token=None, slack_bot_token=None)) as client:
        response = await client.post("/morning-briefing", json={})
        body = response.json()
        run = (await client.get(f"/runs/{body['run_id']}")).json()
    assert response.status_code == 502
    assert response.headers["content-type"] == "application/problem+json"
    assert body["briefing_status"] == "failed"
    assert [(s["name"], s["status"]) for s in body["steps"]] == [
        ("plan", "failed"),
        ("timer", "not_configured"),
        ("slack", "not_configured"),
    ]
    assert run["status"] == "failed"


async def test_nothing_configured_is_a_503_not_configured_listing_every_variable(make_client):
    """No upstream was called, so a 502 "briefing-failed" would blame one wrongly: the set-up is what is missing."""
    async with make_client() as client:
        response = await client.post("/morning-briefing", json={})
        body = response.json()
        run = (await client.get(f"/runs/{body['run_id']}")).json()
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert body["type"] == "/problems/not-configured"
    assert body["missing_settings"] == ["GEMINI_API_KEY", "ANTHROPIC_API_KEY", "TOGGL_API_TOKEN", "SLACK_BOT_TOKEN"]
    assert "timer: toggl is not configured: set TOGGL_API_TOKEN" in body["detail"]
    assert [(s["name"], s["status"], s["missing_settings"]) for s in body["steps"]] == [
        ("plan", "not_configured", ["GEMINI_API_KEY", "ANTHROPIC_API_KEY"]),
        ("timer", "not_configured", ["TOGGL_API_TOKEN"]),
        ("slack", "not_configured", ["SLACK_BOT_TOKEN"]),
    ]
    assert run["status"] == "failed"
    # The list view shows `error`: it says what did not succeed (it was null).
    reasons = run["error"].split("; ")
    assert reasons[0].startswith("plan not_configured: No LLM provider is configured")
    assert [reason.split(":")[0] for reason in reasons] == [
        "plan not_configured",
        "timer not_configured",
        "slack not_configured",
    ]


async def test_a_dry_run_with_nothing_configured_is_a_503_not_a_502(w, make_client):
    """Under DRY_RUN a missing LLM is `not_configured`, as in the real run (it read `skipped`), and nobody's
    upstream failed: 503 not-configured, not 502 briefing-failed (pinned by a mutation review). The fakes' URLs
    are set, so a call that should not happen would reach them."""
    settings = {
        "dry_run": True,
        "toggl_base_url": TOGGL_BASE,
        "slack_base_url": w.slack.base_url,
        "anthropic_base_url": w.claude.url,
    }
    async with make_client(**settings) as client:
        response = await client.post("/morning-briefing", json={})
        body = response.json()
        run = (await client.get(f"/runs/{body['run_id']}")).json()
    assert response.status_code == 503, body
    assert response.headers["content-type"] == "application/problem+json"
    assert body["type"] == "/problems/not-configured"
    assert [(s["name"], s["status"], s["missing_settings"]) for s in body["steps"]] == [
        ("plan", "not_configured", ["GEMINI_API_KEY", "ANTHROPIC_API_KEY"]),
        ("timer", "not_configured", ["TOGGL_API_TOKEN"]),
        ("slack", "not_configured", ["SLACK_BOT_TOKEN"]),
    ]
    assert body["missing_settings"] == ["GEMINI_API_KEY", "ANTHROPIC_API_KEY", "TOGGL_API_TOKEN", "SLACK_BOT_TOKEN"]
    assert w.toggl.starts == [] and w.slack.requests == [] and w.claude.requests == []
    assert w.toggl.mock.calls.call_count == 0  # no httpx request at all, to a fake or anywhere else
    assert run["status"] == "failed"


async def test_a_dry_run_with_only_an_llm_answers_what_the_real_run_would(w, make_client):
    """A rehearsal must not contradict the real run: with only an LLM configured the real briefing is a 200
    `partial` (a plan, no timer, no post), so the dry run is too. It was a 503 "nothing the briefing needs is
    configured", its plan step `skipped` counting as not configured (found by a test-writing review)."""
    only_llm = {"anthropic_api_key": w.settings()["anthropic_api_key"], "anthropic_base_url": w.claude.url}
    async with make_client(**only_llm) as client:
        rehearsal = await client.post("/morning-briefing", json={"dry_run": True})
        assert w.claude.requests == []  # a dry run makes no LLM call
        real = await client.post("/morning-briefing", json={})
    assert rehearsal.status_code == real.status_code == 200, rehearsal.json()
    assert rehearsal.json()["status"] == real.json()["status"] == "partial"
    assert [(s["name"], s["status"]) for s in rehearsal.json()["steps"]] == [
        ("plan", "skipped"),
        ("timer", "not_configured"),
        ("slack", "not_configured"),
    ]
    assert [(s["name"], s["status"]) for s in real.json()["steps"]] == [
        ("plan", "ok"),
        ("timer", "not_configured"),
        ("slack", "not_configured"),
    ]
    assert len(w.claude.requests) == 1 and w.toggl.starts == [] and w.slack.requests == []
    # The rehearsal names the model the real run used.
    model = real.json()["steps"][0]["detail"]
    assert rehearsal.json()["steps"][0]["detail"] == f"dry run: no LLM call (would ask {model})"


async def test_a_dry_run_whose_plan_the_router_refuses_answers_what_the_real_run_would(w, make_client):
    """The router refuses the plan prompt before calling anyone (here it is over MAX_INPUT_CHARS; a local model's
    small context window does the same): the real run reports the plan `failed` and still starts the timer and
    posts, a 200 `partial`. The dry run's plan let that refusal escape the briefing: the whole rehearsal was a
    413, and the `brief` command and BRIEFING_CRON under DRY_RUN failed outright (found by a dry-run review)."""
    async with make_client(**w.settings(max_input_chars=60)) as client:
        rehearsal = await client.post("/morning-briefing", json={"dry_run": True})
        assert w.claude.requests == [] and w.toggl.starts == [] and w.slack.requests == []
        real = await client.post("/morning-briefing", json={})
        rehearsal_run = (await client.get(f"/runs/{rehearsal.json().get('run_id')}")).json()
    assert rehearsal.status_code == real.status_code == 200, rehearsal.json()
    assert rehearsal.json()["status"] == real.json()["status"] == "partial"
    assert [(s["name"], s["status"]) for s in rehearsal.json()["steps"]] == [
        (s["name"], s["status"]) for s in real.json()["steps"]
    ]
    plan = steps_by_name(rehearsal.json())["plan"]
    assert plan["status"] == "failed"
    assert plan["detail"] == steps_by_name(real.json())["plan"]["detail"]
    assert plan["detail"].startswith("413 payload-too-large: text has")
    assert rehearsal_run["status"] == "partial" and rehearsal_run["input_summary"]["dry_run"] is True
    assert {a["operation"]: a["status"] for a in rehearsal_run["actions"]} == {
        "generate": "failed",
        "start_timer": "dry_run",
        "post_message": "dry_run",
    }
    # Nothing was asked of the model in either run: the prompt never left the router.
    assert w.claude.requests == [] and len(w.toggl.starts) == 1 and len(w.slack.posts) == 1


async def test_idempotency_key_replays_instead_of_starting_a_second_timer(w, make_client):
    headers = {"Idempotency-Key": "briefing-2026-11-25"}
    async with make_client(**w.settings()) as client:
        first = await client.post("/morning-briefing", json={}, headers=headers)
        second = await client.post("/morning-briefing", json={}, headers=headers)
        other = await client.post("/morning-briefing", json={"task": "Other"}, headers=headers)
    assert first.status_code == second.status_code == 200
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.json() == first.json()
    assert other.status_code == 422
    assert len(w.toggl.starts) == 1 and len(w.slack.posts) == 1


async def test_dry_run_sends_nothing(w, make_client):
    async with make_client(**w.settings()) as client:
        response = await client.post("/morning-briefing", json={"dry_run": True})
        report = response.json()
        run = (await client.get(f"/runs/{report['run_id']}")).json()
    assert response.status_code == 200
    assert report["dry_run"] is True  # said at the top, as every other endpoint does (found by a black-box review)
    assert [(s["name"], s["status"]) for s in report["steps"]] == [
        ("plan", "skipped"),
        ("timer", "ok"),
        ("slack", "ok"),
    ]
    assert steps_by_name(report)["slack"]["detail"] == "dry run: would post to #general"
    assert w.toggl.starts == [] and w.slack.requests == [] and w.claude.requests == []
    assert run["status"] == "dry_run"
    slack_action = next(a for a in run["actions"] if a["skill"] == "slack")
    assert slack_action["request"]["channel"] == "#general"
    assert "Plan*: not generated (dry run" in slack_action["request"]["text"]


async def test_no_body_means_the_defaults_like_an_empty_object(w, make_client):
    """Found by a black-box review: `curl -X POST .../morning-briefing?dry_run=true` was a 422 "body: Field
    required", though every field is optional (and /stop-timer takes no body)."""
    async with make_client(**w.settings(briefing_task="Inbox zero")) as client:
        bare = await client.post("/morning-briefing?dry_run=true")
        empty = await client.post("/morning-briefing?dry_run=true", json={})
    assert bare.status_code == empty.status_code == 200
    assert bare.json()["dry_run"] is empty.json()["dry_run"] is True
    assert [step["status"] for step in bare.json()["steps"]] == ["skipped", "ok", "ok"]
    assert steps_by_name(bare.json())["timer"]["detail"].startswith("dry run: 'Inbox zero' started")
    assert w.toggl.starts == [] and w.slack.requests == []


async def test_a_task_with_a_control_character_is_422_and_nothing_runs(w, make_client):
    async with make_client(**w.settings()) as client:
        response = await client.post("/morning-briefing", json={"task": "plan\u0000day"})
        runs = (await client.get("/runs", params={"kind": "briefing"})).json()
    assert response.status_code == 422
    assert "control character" in response.json()["errors"][0]["message"]
    assert runs["total"] == 0
    assert w.toggl.starts == [] and w.claude.requests == [] and w.slack.requests == []


async def test_requires_the_api_key(w, make_client):
    async with make_client(**w.settings(app_api_key="k" * 32)) as client:
        refused = await client.post("/morning-briefing", json={})
        allowed = await client.post("/morning-briefing", json={}, headers={"X-API-Key": "k" * 32})
    assert refused.status_code == 401
    assert allowed.status_code == 200


async def test_rejects_unknown_fields_and_bad_durations(w, make_client):
    async with make_client(**w.settings()) as client:
        unknown = await client.post("/morning-briefing", json={"chanel": "#typo"})
        too_long = await client.post("/morning-briefing", json={"duration_minutes": 24 * 60 + 1})
    assert unknown.status_code == too_long.status_code == 422
    assert w.toggl.starts == []


async def test_whatsapp_brief_command_replies_with_the_plan(w, make_client):
    w.claude.answer = "- Inbox zero\n- Ship it"
    async with make_client(**w.settings()) as client:
        response = await post_whatsapp(client, whatsapp_form("Briefing"))
        [run] = await runs_of(client, "briefing")
    assert response.status_code == 200
    assert "- Inbox zero\n- Ship it" in response.text
    assert "Timer: &apos;Deep Work&apos; started" in response.text or "Timer: 'Deep Work' started" in response.text
    assert run["trigger"] == "whatsapp"
    assert len(w.slack.posts) == 1


async def test_a_step_error_quoting_the_api_key_is_scrubbed_in_the_report_and_the_slack_summary(w, make_client):
    """Found by review: the plan step's error went verbatim into the 200 report and the summary posted to Slack."""
    from tests.workflows.world import ANTHROPIC_KEY

    w.claude.fail = Reply(
        400, json={"type": "error", "error": {"type": "invalid_request_error", "message": f"bad key {ANTHROPIC_KEY}"}}
    )
    async with make_client(**w.settings()) as client:
        response = await client.post("/morning-briefing", json={})
    assert response.status_code == 200, response.text
    plan = steps_by_name(response.json())["plan"]
    assert plan["status"] == "failed" and "bad key ***" in plan["detail"]
    assert ANTHROPIC_KEY not in response.text
    [summary] = w.slack.posts
    assert "bad key ***" in summary["text"] and ANTHROPIC_KEY not in summary["text"]
