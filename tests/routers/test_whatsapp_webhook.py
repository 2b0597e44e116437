"""POST /whatsapp-webhook through the real app: signatures (twilio's RequestValidator), public URLs behind
ngrok or a proxy, replays, the allowlist, TwiML replies and late replies sent with the WhatsApp skill."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import re
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode
from xml.etree import ElementTree

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routers.whatsapp_webhook import INTERRUPTED, WORKING, twiml
from tests.fakes.llm import FakeGemini, gemini_content, gemini_error
from tests.fakes.server import Reply
from tests.fakes.slack import CHAT_POST_MESSAGE
from tests.workflows.world import (
    CLAUDE_PATH,
    OWNER,
    STRANGER,
    TWILIO_TOKEN,
    finished_runs,
    later,
    post_whatsapp,
    runs_of,
    twilio_signature,
    whatsapp_form,
    world,
)

#: The zone offset a time in the hour the clocks repeat in autumn carries ("02:40 Europe/Berlin (CEST, UTC+02:00)"):
#: the tests that read the real clock see it one hour a year.
REPEATED_HOUR = r"( \(\w+, UTC[+-]\d\d:\d\d\))?"


@pytest.fixture
async def w():
    async with world() as fakes:
        yield fakes


SECOND_SENDER = "+15551230002"
REFUSAL = "Sorry, this number is not allowed to use this service."


def messages(response) -> list[str]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/xml")
    root = ElementTree.fromstring(response.text)
    assert root.tag == "Response"
    return [element.text or "" for element in root.findall("Message")]


# --- Signature ---------------------------------------------------------------------


async def test_twilio_documented_test_vector_is_what_we_validate_with():
    # The vector from twilio-python's own tests: our validation is the library's, not a copy.
    from twilio.request_validator import RequestValidator

    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+14158675309", "Digits": "1234", "From": "+14158675309"}
    params |= {"To": "+18005551212"}
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert RequestValidator("12345").validate(url, params, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")


async def test_missing_signature_is_403_and_nothing_runs(w, make_client):
    async with make_client(**w.settings()) as client:
        response = await post_whatsapp(client, whatsapp_form("start"), signature="")
        assert response.status_code == 403
        assert response.headers["content-type"] == "application/problem+json"
        assert "PUBLIC_BASE_URL" in response.json()["detail"]
        assert await runs_of(client, "command.start") == []
    assert w.toggl.starts == [] and w.slack.requests == [] and w.claude.requests == []


async def test_wrong_signature_is_403(w, make_client):
    form = whatsapp_form("help")
    forged = twilio_signature("http://testserver/whatsapp-webhook", form, token="not-the-token")
    async with make_client(**w.settings()) as client:
        response = await post_whatsapp(client, form, signature=forged)
    assert response.status_code == 403


async def test_tampered_field_breaks_the_signature(w, make_client):
    form = whatsapp_form("status")
    signature = twilio_signature("http://testserver/whatsapp-webhook", form)
    async with make_client(**w.settings()) as client:
        response = await post_whatsapp(client, {**form, "Body": "start"}, signature=signature)
    assert response.status_code == 403
    assert w.toggl.starts == []


async def test_an_unknown_new_field_is_covered_by_the_signature(w, make_client):
    # Twilio adds fields without notice; validation runs over whatever arrives.
    form = {**whatsapp_form("help"), "SomeFieldTwilioAddsNextYear": "x y"}
    async with make_client(**w.settings()) as client:
        assert "Commands:" in messages(await post_whatsapp(client, form))[0]


@pytest.mark.parametrize(("fields", "status"), [(200, 200), (201, 413)])
async def test_the_form_field_limit_is_exact(w, make_client, fields, status):
    """200 fields pass, 201 do not (found by a mutation review: the edge was untested)."""
    base = whatsapp_form("help")
    form = {**base, **{f"k{i}": "" for i in range(fields - len(base))}}
    async with make_client(**w.settings()) as client:
        response = await post_whatsapp(client, form)
    assert response.status_code == status


async def test_a_form_with_too_many_fields_is_413_before_its_signature_is_computed(w, make_client, monkeypatch):
    """Found by a code review: the signature check's cost grew with the square of the fields, and anyone can
    post a forged form (10,000 fields held the event loop 5 s before the 403)."""
    from twilio.request_validator import RequestValidator

    form = {**whatsapp_form("start"), **{f"k{i}": "" for i in range(200)}}
    signature = twilio_signature("http://testserver/whatsapp-webhook", form)  # a valid one: still refused
    computed: list[str] = []
    original = RequestValidator.compute_signature

    def spy(self, uri, *args, **kwargs):
        computed.append(uri)
        return original(self, uri, *args, **kwargs)

    monkeypatch.setattr(RequestValidator, "compute_signature", spy)
    async with make_client(**w.settings()) as client:
        response = await post_whatsapp(client, form, signature=signature)
        assert await runs_of(client, "command.start") == []
    assert response.status_code == 413
    assert response.json()["limit_fields"] == 200
    assert response.json()["detail"] == "The form has more than 200 fields; a Twilio webhook has fewer."
    assert computed == [] and w.toggl.starts == []


@pytest.mark.parametrize(
    ("body", "limit"),
    [
        pytest.param(("a=&" * 20_000).encode(), "limit_fields", id="many-fields"),  # 60 KB: under the size cap
        pytest.param(b"Body=" + b"x" * (64 * 1024), "limit_bytes", id="too-big"),
    ],
)
async def test_a_form_is_refused_before_it_is_parsed(w, make_client, monkeypatch, body, limit):
    """Found by a security review: the 200-field limit was checked after parsing, and parsing 1 MiB of
    "a=&a=&..." held the event loop for 0.4 s per unauthenticated request."""
    import routers.whatsapp_webhook as webhook

    parsed: list[int] = []
    original = webhook.parse_qsl
    monkeypatch.setattr(webhook, "parse_qsl", lambda text, **kw: parsed.append(len(text)) or original(text, **kw))
    async with make_client(**w.settings()) as client:
        response = await client.post(
            "/whatsapp-webhook",
            content=body,
            headers={"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": "forged"},
        )
    assert response.status_code == 413
    assert limit in response.json()
    assert parsed == []


async def test_a_captured_form_re_cut_to_change_its_message_sid_is_not_acted_on_again(w, make_client):
    """Found by a security review: Twilio signs the fields run together, so MessageSid could swallow the next
    field ("SM..." + "MessageTypetext", that field dropped) under the same signature; the new "SID" was a new
    message, and every such replay started another timer."""
    form = whatsapp_form("start Deep work for 25 min")
    signature = twilio_signature("http://testserver/whatsapp-webhook", form)
    re_cut = {key: value for key, value in form.items() if key != "MessageType"}
    re_cut["MessageSid"] = form["MessageSid"] + "MessageType" + form["MessageType"]
    assert twilio_signature("http://testserver/whatsapp-webhook", re_cut) == signature  # the same signed string
    async with make_client(**w.settings()) as client:
        first = await post_whatsapp(client, form, signature=signature)
        replayed = await post_whatsapp(client, re_cut, signature=signature)
        assert len(await runs_of(client, "command.start")) == 1
    assert messages(first)[0].startswith("Started")
    assert replayed.status_code == 200 and messages(replayed) == []
    assert len(w.toggl.starts) == 1


async def test_a_form_at_the_field_limit_with_repeated_names_is_verified_without_a_scan_per_name(
    w, make_client, monkeypatch
):
    """Twilio signs every value of a repeated name; the check reads them grouped, not by starlette's getlist
    (a scan of every field per name)."""
    from starlette.datastructures import ImmutableMultiDict

    def scan(*_args, **_kwargs):
        raise AssertionError("getlist scans every field")

    monkeypatch.setattr(ImmutableMultiDict, "getlist", scan)
    fields = [*whatsapp_form("help").items(), *[(f"k{i}", "v") for i in range(187)]]
    fields += [("MediaUrl0", "https://b.example"), ("MediaUrl0", "https://a.example")]
    assert len(fields) == 200
    url = "http://testserver/whatsapp-webhook"
    signed = url + "".join(name + value for name, value in sorted(fields))
    signature = base64.b64encode(hmac.new(TWILIO_TOKEN.encode(), signed.encode(), hashlib.sha1).digest()).decode()
    async with make_client(**w.settings()) as client:
        response = await client.post(
            "/whatsapp-webhook",
            content=urlencode(fields),
            headers={"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature},
        )
    assert response.status_code == 200
    assert "Commands:" in messages(response)[0]


async def test_no_auth_token_is_503_never_unsigned(w, make_client):
    async with make_client(**w.settings(twilio_auth_token=None)) as client:
        response = await post_whatsapp(client, whatsapp_form("help"), signature="anything")
    assert response.status_code == 503
    assert response.json()["missing_settings"] == ["TWILIO_AUTH_TOKEN"]
    assert TWILIO_TOKEN not in response.text


async def test_ngrok_public_base_url_is_the_signed_url(w, make_client):
    form = whatsapp_form("help")
    signed = "https://abc123.ngrok.app/whatsapp-webhook?tenant=1"
    async with make_client(send_api_key=True, **w.settings(public_base_url="https://abc123.ngrok.app/")) as client:
        ok = await post_whatsapp(client, form, signed_url=signed, path="/whatsapp-webhook?tenant=1")
        # What the app itself sees (http://testserver/...) is not what Twilio signed.
        local = await post_whatsapp(
            client,
            whatsapp_form("help", sid="SM" + "b" * 32),
            signed_url="http://testserver/whatsapp-webhook",
        )
    assert "Commands:" in messages(ok)[0]
    assert local.status_code == 403


async def test_forwarded_headers_only_when_trusted(w, make_client):
    signed = "https://bot.example.com/whatsapp-webhook"
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "bot.example.com"}
    async with make_client(**w.settings(trust_proxy_headers=True)) as client:
        trusted = await post_whatsapp(client, whatsapp_form("help"), signed_url=signed, headers=forwarded)
    async with make_client(**w.settings()) as client:
        untrusted = await post_whatsapp(client, whatsapp_form("help"), signed_url=signed, headers=forwarded)
    assert "Commands:" in messages(trusted)[0]
    assert untrusted.status_code == 403


async def test_proxy_header_lists_use_the_client_most_value(w, make_client):
    signed = "https://bot.example.com/whatsapp-webhook"
    forwarded = {"X-Forwarded-Proto": "https, http", "X-Forwarded-Host": "bot.example.com, internal:8000"}
    async with make_client(**w.settings(trust_proxy_headers=True)) as client:
        response = await post_whatsapp(client, whatsapp_form("help"), signed_url=signed, headers=forwarded)
    assert "Commands:" in messages(response)[0]


# --- Replays ----------------------------------------------------------------------------


async def test_redelivery_executes_nothing_again(w, make_client):
    form = whatsapp_form("start writing for 30 min")
    async with make_client(**w.settings()) as client:
        first = messages(await post_whatsapp(client, form))
        again = messages(await post_whatsapp(client, form))
    assert "Started 'writing'" in first[0]
    assert again == []  # <Response/>: no second reply
    assert len(w.toggl.starts) == 1
    assert len(w.slack.calls("POST", CHAT_POST_MESSAGE)) == 1


async def test_ten_concurrent_duplicates_make_one_action(w, make_client):
    form = whatsapp_form("start review for 1 h")
    async with make_client(**w.settings()) as client:
        responses = await asyncio.gather(*(post_whatsapp(client, form) for _ in range(10)))
        runs = await runs_of(client, "command.start")
    replies = [messages(response) for response in responses]
    assert sum(1 for reply in replies if reply) == 1
    assert len(w.toggl.starts) == 1
    assert w.toggl.starts[0]["description"] == "review"
    assert len(w.slack.calls("POST", CHAT_POST_MESSAGE)) == 1
    assert len(runs) == 1


# --- Allowlist ----------------------------------------------------------------------------


async def test_stranger_is_refused_without_action_or_llm_call(w, make_client):
    async with make_client(**w.settings()) as client:
        command = messages(await post_whatsapp(client, whatsapp_form("start", sender=STRANGER)))
        chat = messages(
            await post_whatsapp(client, whatsapp_form("what should I do today?", sid="SM" + "c" * 32, sender=STRANGER))
        )
    # Told once; the refusal is a billed message, so the second one within the hour is an empty <Response/>.
    assert command == ["Sorry, this number is not allowed to use this service."]
    assert chat == []
    assert w.toggl.starts == [] and w.claude.requests == [] and w.slack.requests == []


async def test_a_stranger_is_told_once_an_hour_and_each_stranger_on_their_own(w, make_client):
    other = "+15550009999"
    async with make_client(**w.settings()) as client:
        first = [
            messages(await post_whatsapp(client, whatsapp_form("hi", sid=f"SM{i:032d}", sender=STRANGER)))
            for i in range(3)
        ]
        second_stranger = messages(await post_whatsapp(client, whatsapp_form("hi", sid="SM" + "e" * 32, sender=other)))
        with later(timedelta(minutes=61)):
            an_hour_later = messages(
                await post_whatsapp(client, whatsapp_form("hi", sid="SM" + "f" * 32, sender=STRANGER))
            )
    assert first == [[REFUSAL], [], []]
    assert second_stranger == [REFUSAL]
    assert an_hour_later == [REFUSAL]
    assert w.claude.requests == [] and w.twilio.sent == []


async def test_a_sender_over_the_rate_limit_is_told_once_and_nothing_runs(w, make_client):
    """Found in review: inbound messages had no rate limit, so one number could spend LLM tokens without end."""
    settings_ = w.settings(rate_limit_per_minute=2, whatsapp_allowed_senders=f"{OWNER},{SECOND_SENDER}")
    async with make_client(**settings_) as client:
        replies = [messages(await post_whatsapp(client, whatsapp_form("help", sid=f"SM{i:032d}"))) for i in range(2)]
        over = messages(await post_whatsapp(client, whatsapp_form("start writing for 5 min", sid="SM" + "a" * 32)))
        again = messages(await post_whatsapp(client, whatsapp_form("what now?", sid="SM" + "b" * 32)))
        other_sender = messages(
            await post_whatsapp(client, whatsapp_form("help", sid="SM" + "c" * 32, sender=SECOND_SENDER))
        )
        with later(timedelta(minutes=3)):
            after = messages(await post_whatsapp(client, whatsapp_form("start writing for 5 min", sid="SM" + "d" * 32)))
    assert all("Commands:" in reply[0] for reply in replies)
    [notice] = over
    assert re.fullmatch(
        r"You have sent more than 2 messages in a minute, so this one was not acted on\. "
        r"Wait \d+ s and send it again\.",
        notice,
    ), notice
    assert again == []  # told once a minute, not once per message
    assert "Commands:" in other_sender[0]  # each sender has a budget of their own
    assert w.claude.requests == []
    [start] = w.toggl.starts  # only the one sent after the window
    assert start["description"] == "writing"
    assert after[0].startswith("Started 'writing'")


async def test_an_empty_allowlist_allows_no_one_and_says_how_to_fix_it(w, make_client, caplog):
    """Found by a black-box review: in development (the documented ngrok set-up) an empty list let any WhatsApp
    user start timers on the owner's Toggl and post to their Slack, with only a log line to show for it."""
    caplog.set_level(logging.WARNING, logger="orchestrator.inbound")
    async with make_client(**w.settings(whatsapp_allowed_senders=None)) as client:
        reply = messages(await post_whatsapp(client, whatsapp_form("start Stranger for 5 min", sender=STRANGER)))
        advice = (await client.get("/health")).json()["integrations"]["whatsapp_webhook"]["advice"]
        assert await runs_of(client, "command.start") == []
    assert reply == [REFUSAL]
    assert w.toggl.starts == [] and w.slack.posts == []
    assert any("WHATSAPP_ALLOWED_SENDERS is empty" in record.getMessage() for record in caplog.records)
    assert any(line.startswith("WHATSAPP_ALLOWED_SENDERS is empty, so every sender is refused") for line in advice)


# --- Commands and replies ---------------------------------------------------------------------


async def test_dry_run_holds_for_chat_commands_too(w, make_client):
    """Found by a black-box review: with DRY_RUN=true, WhatsApp's start, stop, brief and chat acted for real
    (a Toggl timer, Slack posts, LLM calls). The reply still answers the sender, saying nothing was sent."""
    w.toggl.running = {
        "id": 77,
        "workspace_id": 4242,
        "description": "Old",
        "start": "2026-11-26T07:00:00Z",
        "stop": None,
        "duration": -int(datetime(2026, 11, 26, 7, tzinfo=UTC).timestamp()),
    }
    async with make_client(**w.settings(dry_run=True)) as client:
        [started] = messages(
            await post_whatsapp(client, whatsapp_form("start Deep work for 25 min", sid="SM" + "1" * 32))
        )
        [stopped] = messages(await post_whatsapp(client, whatsapp_form("stop", sid="SM" + "2" * 32)))
        [chat] = messages(await post_whatsapp(client, whatsapp_form("what should I do first?", sid="SM" + "3" * 32)))
        [brief] = messages(await post_whatsapp(client, whatsapp_form("brief", sid="SM" + "4" * 32)))
        schedule = (await client.get("/schedule")).json()
        start_run = (await runs_of(client, "command.start"))[0]
        start_run = (await client.get(f"/runs/{start_run['id']}")).json()
    dry = "Dry run (DRY_RUN=true), nothing was sent: "
    assert started.startswith(dry + "Would start 'Deep work' at ") and "Slack #general would be told." in started
    assert stopped == dry + "Would stop 'Old' (entry 77)."
    assert chat == dry + "The assistant (claude claude-haiku-4-5) was not asked."
    assert brief.startswith(dry)
    # Nothing reached Toggl but reads, nor Slack, nor the LLM; no stop was planned.
    assert w.toggl.starts == [] and w.toggl.stops == [] and w.slack.requests == [] and w.claude.requests == []
    assert schedule["stops"] == []
    assert start_run["status"] == "dry_run" and start_run["input_summary"]["dry_run"] is True
    assert [(a["skill"], a["status"]) for a in start_run["actions"]] == [("toggl", "dry_run"), ("slack", "dry_run")]
    assert start_run["actions"][0]["request"]["json"]["description"] == "Deep work"


async def test_start_starts_the_timer_posts_to_slack_and_confirms_both(w, make_client):
    async with make_client(**w.settings()) as client:
        [reply] = messages(await post_whatsapp(client, whatsapp_form("Start Deep writing for 45 minutes")))
        schedule = (await client.get("/schedule")).json()
        [run] = await runs_of(client, "command.start")

    [started] = w.toggl.starts
    assert started["description"] == "Deep writing"
    assert started["duration"] == -1 and started["workspace_id"] == 4242
    [post] = w.slack.posts
    assert post["channel"] == "#general"
    assert "Deep writing" in post["text"] and "Europe/Berlin" in post["text"]
    # Times shown in TIMEZONE (Europe/Berlin), and both effects confirmed.
    assert re.search(
        rf"Started 'Deep writing' at \d\d:\d\d Europe/Berlin{REPEATED_HOUR}; it stops at \d\d:\d\d Europe/Berlin", reply
    )
    assert "Posted to Slack C0000000001" in reply
    # The planned stop is persisted and visible.
    [stop] = [job for job in schedule["stops"] if job["status"] == "pending"]
    assert stop["id"] == "stop:9001" and stop["description"] == "Deep writing"
    assert run["trigger"] == "whatsapp" and run["status"] == "ok"
    assert [(a["skill"], a["operation"], a["status"]) for a in run["actions"]] == [
        ("toggl", "start_timer", "ok"),
        ("slack", "post_message", "ok"),
    ]


async def test_start_alone_uses_the_briefing_task_and_minutes(w, make_client):
    async with make_client(**w.settings(briefing_task="Focus", briefing_timer_minutes=25)) as client:
        [reply] = messages(await post_whatsapp(client, whatsapp_form("start")))
        schedule = (await client.get("/schedule")).json()
    assert w.toggl.starts[0]["description"] == "Focus"
    [stop] = schedule["stops"]
    started = w.toggl.starts[0]["start"]
    from datetime import datetime, timedelta

    planned = datetime.fromisoformat(stop["run_at"].replace("Z", "+00:00"))
    assert planned - datetime.fromisoformat(started.replace("Z", "+00:00")) == timedelta(minutes=25)
    assert "Started 'Focus'" in reply


@pytest.mark.parametrize("text", ["start for 0 min", "start writing for 1441 min", "start 25 h"])
async def test_a_duration_outside_a_minute_to_a_day_starts_nothing(w, make_client, text):
    """Pinned by a mutation review: "for 0 min" would start a timer due to stop at once, and a week-long one
    would start unrefused."""
    async with make_client(**w.settings()) as client:
        [reply] = messages(await post_whatsapp(client, whatsapp_form(text)))
        assert await runs_of(client, "command.start") == []
    assert reply == "A timer can run from 1 minute to 24 hours. Try: start writing for 45 min"
    assert w.toggl.starts == []


async def test_near_misses_go_to_the_assistant_not_toggl(w, make_client):
    w.claude.answer = "Take it easy today."
    async with make_client(**w.settings()) as client:
        first = messages(await post_whatsapp(client, whatsapp_form("I can't start today")))
        second = messages(await post_whatsapp(client, whatsapp_form("starting soon", sid="SM" + "d" * 32)))
    assert first == second == ["Take it easy today."]
    assert w.toggl.starts == []
    assert w.claude.prompts == ["I can't start today", "starting soon"]


async def test_stop_and_status(w, make_client):
    async with make_client(**w.settings()) as client:
        messages(await post_whatsapp(client, whatsapp_form("start focus for 10 m", sid="SM" + "1" * 32)))
        [status] = messages(await post_whatsapp(client, whatsapp_form("STATUS", sid="SM" + "2" * 32)))
        [stop] = messages(await post_whatsapp(client, whatsapp_form("stop", sid="SM" + "3" * 32)))
        [again] = messages(await post_whatsapp(client, whatsapp_form("stop!", sid="SM" + "4" * 32)))
        [idle] = messages(await post_whatsapp(client, whatsapp_form("status", sid="SM" + "5" * 32)))
        schedule = (await client.get("/schedule")).json()
    assert re.fullmatch(rf"'focus' running since \d\d:\d\d Europe/Berlin{REPEATED_HOUR} \(0 min\)\.", status)
    assert stop == "Stopped 'focus' after 0 min."
    assert again == idle == "No timer is running."
    assert w.toggl.stops == ["9001"]
    # Stopped by hand: the planned stop is cancelled.
    assert [job["status"] for job in schedule["stops"]] == ["cancelled"]


async def test_a_dry_run_stop_keeps_the_real_timers_planned_stop(w, make_client):
    """Under DRY_RUN nothing is stopped, so the running timer still needs its planned stop: Toggl has no
    auto-stop, and cancelling it would leave the timer running for good (pinned by a mutation review)."""
    async with make_client(**w.settings()) as client:
        messages(await post_whatsapp(client, whatsapp_form("start focus for 10 m", sid="SM" + "1" * 32)))
    async with make_client(**w.settings(dry_run=True)) as client:
        [reply] = messages(await post_whatsapp(client, whatsapp_form("stop", sid="SM" + "2" * 32)))
        schedule = (await client.get("/schedule")).json()
    assert "focus" in reply
    assert w.toggl.stops == []
    assert [(job["id"], job["status"]) for job in schedule["stops"]] == [("stop:9001", "pending")]


async def test_a_dry_run_stop_with_nothing_running_answers_as_the_real_one_and_is_recorded_dry_run(
    w, make_client, tmp_path
):
    """The reply is the real one's ("No timer is running."), and the run says `dry_run` as POST /stop-timer's
    does: it read `ok` beside its `dry_run` action, as if a real stop had run (found by a dry-run review)."""
    replies, runs = {}, {}
    for dry_run in (True, False):
        database = f"sqlite+aiosqlite:///{tmp_path}/{dry_run}.db"
        async with make_client(**w.settings(dry_run=dry_run, database_url=database)) as client:
            [replies[dry_run]] = messages(await post_whatsapp(client, whatsapp_form("stop")))
            [runs[dry_run]] = await runs_of(client, "command.stop")
    assert replies[True] == replies[False] == "No timer is running."
    assert (runs[True]["status"], runs[False]["status"]) == ("dry_run", "ok")
    assert runs[True]["input_summary"]["dry_run"] is True
    assert [a["status"] for a in runs[True]["actions"]] == ["dry_run"]
    assert w.toggl.stops == []


async def test_stop_of_a_timer_started_elsewhere_without_description(w, make_client):
    # A timer started in Toggl's own app may have no description.
    w.toggl.running = {
        "id": 4242,
        "workspace_id": 123,
        "description": None,
        "start": "2026-11-25T08:00:00Z",
        "stop": None,
        "duration": -1795680000,
    }
    async with make_client(**w.settings()) as client:
        [stop] = messages(await post_whatsapp(client, whatsapp_form("stop", sid="SM" + "6" * 32)))
    assert re.fullmatch(r"Stopped the timer after \d+ h \d\d min\.", stop)
    assert w.toggl.stops == ["4242"]


async def test_toggl_failure_becomes_the_reply_and_a_failed_run(w, make_client):
    w.toggl.fail_start = 500
    async with make_client(**w.settings()) as client:
        [reply] = messages(await post_whatsapp(client, whatsapp_form("start")))
        [run] = await runs_of(client, "command.start")
    assert reply.startswith("Could not start the timer:")
    assert run["status"] == "failed"
    assert w.slack.requests == []


async def test_slow_work_answers_within_two_seconds_and_sends_the_rest(w, make_client):
    w.claude.delay = 2.5
    w.claude.answer = "A slow but thoughtful answer."
    async with make_client(**w.settings()) as client:
        started = time.perf_counter()
        reply = messages(await post_whatsapp(client, whatsapp_form("plan my week please")))
        elapsed = time.perf_counter() - started
        [run] = await finished_runs(client, "whatsapp.reply")
    assert elapsed < 2.0
    assert reply == ["Working on it; the answer follows in a moment."]
    assert w.twilio.sent == [
        {"From": "whatsapp:+14155238886", "To": f"whatsapp:{OWNER}", "Body": "A slow but thoughtful answer."}
    ]
    assert run["status"] == "ok" and run["actions"][0]["external_id"].startswith("SM")


async def test_long_reply_is_split_into_1600_character_messages(w, make_client):
    w.claude.answer = ("word " * 700).strip()  # 3,499 characters
    async with make_client(**w.settings()) as client:
        reply = messages(await post_whatsapp(client, whatsapp_form("tell me a long story")))
    assert len(reply) == 3
    assert all(len(part) <= 1600 for part in reply)
    assert " ".join(reply) == w.claude.answer


async def test_shutdown_waits_for_late_work_and_it_is_not_lost(w, make_client):
    w.claude.delay = 1.8
    async with make_client(**w.settings()) as client:
        reply = messages(await post_whatsapp(client, whatsapp_form("think hard")))
        assert reply == ["Working on it; the answer follows in a moment."]
    # Leaving the lifespan waited for the background reply instead of dropping it.
    assert len(w.twilio.sent) == 1
    assert len(w.claude.calls("POST", CLAUDE_PATH)) == 1


async def test_media_without_text_gets_help_and_no_llm_call(w, make_client):
    form = {**whatsapp_form(""), "NumMedia": "1", "MediaUrl0": "https://api.twilio.com/media/ME1"}
    async with make_client(**w.settings()) as client:
        [reply] = messages(await post_whatsapp(client, form))
    assert reply.startswith("Send me a text message.")
    assert w.claude.requests == []


def test_a_repeated_reply_is_built_once_and_still_escaped():
    from routers.whatsapp_webhook import _twiml_text, twiml

    _twiml_text.cache_clear()
    first, second = twiml("a & <b>", "two"), twiml("a & <b>", "two")
    expected = (
        b'<?xml version="1.0" encoding="UTF-8"?>'
        b"<Response><Message>a &amp; &lt;b&gt;</Message><Message>two</Message></Response>"
    )
    assert first.body == second.body == expected
    assert first.media_type == "text/xml"
    assert (_twiml_text.cache_info().misses, _twiml_text.cache_info().hits) == (1, 1)


# --- Replies are well-formed XML -------------------------------------------------------------

XML_FORBIDDEN = re.compile(r"[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


async def test_control_characters_in_a_task_do_not_break_the_twiml(w, make_client):
    async with make_client(**w.settings()) as client:
        response = await post_whatsapp(client, whatsapp_form("start a b\x01c for 5 min"))
        vertical_tab = await post_whatsapp(client, whatsapp_form("start a\x0bb for 5 min", sid="SM" + "7" * 32))
    [reply] = messages(response)  # parses with ElementTree
    # \x01 is a control character, which a Toggl description may not hold: refused, and said so in valid TwiML.
    assert reply.startswith("Could not start the timer: The timer's description contains a control character")
    assert "\x01" not in response.text and "&#1;" not in response.text
    # \x0b starts a new line: a command is one line, so this is chat (the LLM's answer), not a timer.
    [chat] = messages(vertical_tab)
    assert not chat.startswith(("Started", "Could not start"))
    assert w.toggl.starts == []


async def test_a_late_reply_is_sent_without_forbidden_characters(w, make_client):
    w.claude.delay = 1.8
    w.claude.answer = "Done\x01 \ufffeand\x1b dusted."
    async with make_client(**w.settings()) as client:
        assert messages(await post_whatsapp(client, whatsapp_form("think hard"))) == [WORKING]
        await finished_runs(client, "whatsapp.reply")
    assert [sent["Body"] for sent in w.twilio.sent] == ["Done and dusted."]


async def test_a_late_answer_cut_off_by_a_shutdown_is_replaced_by_an_apology(w, make_client):
    """The sender was told "working on it"; when the shutdown's grace ran out first, nothing more came."""
    w.claude.delay = 3  # past the webhook's 1.5 s and the 0.2 s grace
    async with make_client(**w.settings(shutdown_grace_seconds=0.2, llm_timeout_seconds=30)) as client:
        assert messages(await post_whatsapp(client, whatsapp_form("think hard"))) == [WORKING]
    [sent] = w.twilio.sent
    assert (sent["To"], sent["Body"]) == (whatsapp_form("x")["From"], INTERRUPTED)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(exclude_categories=())), min_size=1, max_size=3))
def test_any_text_builds_twiml_that_parses(texts):
    response = twiml(*texts)
    root = ElementTree.fromstring(response.body)
    parsed = [element.text or "" for element in root.findall("Message")]
    # What survives is the text minus the characters XML 1.0 forbids (a parser reads CR as LF).
    expected = [XML_FORBIDDEN.sub("", text).replace("\r\n", "\n").replace("\r", "\n") for text in texts]
    assert parsed == expected


# --- Secrets never reach a chat reply ---------------------------------------------------------

GEMINI_KEY = "AIzaSyD-test-gemini-key-000000000000000"


async def test_a_key_echoed_by_the_llm_is_scrubbed_from_the_twiml_reply(w, make_client):
    message = f"API key not valid: {GEMINI_KEY}. Please pass a valid API key."
    async with FakeGemini() as gemini:
        gemini.route("POST", gemini.path, lambda _: gemini_error(400, "INVALID_ARGUMENT", message))
        settings_ = w.settings(anthropic_api_key=None, gemini_api_key=GEMINI_KEY, gemini_base_url=gemini.url)
        async with make_client(**settings_) as client:
            response = await post_whatsapp(client, whatsapp_form("what should I do first?"))
        assert len(gemini.calls()) == 1
    [reply] = messages(response)
    assert reply.startswith("The assistant could not answer:")
    assert "***" in reply and GEMINI_KEY not in response.text


async def test_a_key_split_by_a_control_character_is_scrubbed_before_the_twiml_drops_it(w, make_client):
    """TwiML drops the control character; dropped after the scrub, it would rejoin a key the scrubber missed."""
    split = GEMINI_KEY[:12] + "\x01" + GEMINI_KEY[12:]
    async with FakeGemini() as gemini:
        gemini.route("POST", gemini.path, lambda _: Reply(200, json=gemini_content(f"Your key is {split}.")))
        settings_ = w.settings(anthropic_api_key=None, gemini_api_key=GEMINI_KEY, gemini_base_url=gemini.url)
        async with make_client(**settings_) as client:
            response = await post_whatsapp(client, whatsapp_form("what is my key?"))
        assert len(gemini.calls()) == 1
    [reply] = messages(response)
    assert reply == "Your key is ***."
    assert GEMINI_KEY not in response.text


async def test_a_chat_answer_cut_at_max_tokens_says_so(w, make_client):
    body = gemini_content("First, answer the two urgent emails. Then")
    body["candidates"][0]["finishReason"] = "MAX_TOKENS"
    async with FakeGemini() as gemini:
        gemini.route("POST", gemini.path, lambda _: Reply(200, json=body))
        settings_ = w.settings(anthropic_api_key=None, gemini_api_key=GEMINI_KEY, gemini_base_url=gemini.url)
        async with make_client(**settings_) as client:
            response = await post_whatsapp(client, whatsapp_form("what should I do first?"))
            [listed] = (await client.get("/runs", params={"kind": "inbound.chat"})).json()["items"]
            run = (await client.get(f"/runs/{listed['id']}")).json()
    [reply] = messages(response)
    assert reply == (
        "First, answer the two urgent emails. Then "
        "[…cut short: the model stopped before the end of its answer (MAX_TOKENS)]"
    )
    assert run["result"]["truncated"] is True


async def test_a_task_from_whatsapp_is_escaped_in_the_slack_announcement(w, make_client):
    """Found by a black-box review: "start <!here|here> ping <@U0ADMIN> for 5 min" pinged #general."""
    async with make_client(**w.settings()) as client:
        [reply] = messages(await post_whatsapp(client, whatsapp_form("start <!here|here> ping <@U0ADMIN> for 5 min")))
    assert w.toggl.starts[0]["description"] == "<!here|here> ping <@U0ADMIN>"
    [announcement] = w.slack.posts
    assert "'&lt;!here|here&gt; ping &lt;@U0ADMIN&gt;' started at " in announcement["text"]
    assert "Started '<!here|here> ping <@U0ADMIN>'" in reply  # WhatsApp shows it as typed


async def test_a_chat_question_the_model_refuses_outright_says_so(w, make_client):
    """A refusal with no text was "the assistant could not answer" after the prompt went to another provider."""
    refused = {"candidates": [{"finishReason": "SAFETY", "index": 0}], "modelVersion": "gemini-x"}
    async with FakeGemini() as gemini:
        gemini.route("POST", gemini.path, lambda _: Reply(200, json=refused))
        settings_ = w.settings(gemini_api_key=GEMINI_KEY, gemini_base_url=gemini.url)
        async with make_client(**settings_) as client:
            response = await post_whatsapp(client, whatsapp_form("something a model refuses"))
    assert messages(response) == ["The assistant's safety checks stopped it from answering this."]
    assert w.claude.calls() == []  # not sent on to Claude


async def test_a_start_with_no_slack_channel_says_what_to_set_and_records_why(w, make_client):
    """Found by a black-box review: the WhatsApp sender was told to "pass `channel`", which a chat cannot, and
    the run read `partial` with no error. The reply names the operator's setting only; the run (read through
    GET /runs) keeps the API wording."""
    async with make_client(**w.settings(slack_default_channel=None)) as client:
        [reply] = messages(await post_whatsapp(client, whatsapp_form("start writing for 25 min")))
        [run] = await runs_of(client, "command.start")
    assert reply.startswith("Started 'writing'")
    assert reply.endswith("Slack was not told: No Slack channel: the operator must set SLACK_DEFAULT_CHANNEL.")
    assert (run["status"], run["error"]) == (
        "partial",
        "No Slack channel: set SLACK_DEFAULT_CHANNEL, or pass `channel` to POST /slack-notify.",
    )
    assert len(w.toggl.starts) == 1 and w.slack.posts == []
