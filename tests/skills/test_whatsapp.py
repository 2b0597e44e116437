"""WhatsAppSkill with respx: the exact form and Basic auth Twilio receives, splitting, and every error mapping."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl

import httpx
import pytest
import regex
import respx
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import (
    Conflict,
    InvalidInput,
    NotConfigured,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from core.upstream import MAX_RESPONSE_BYTES
from skills.whatsapp import ATTEMPTS, MAX_BODY_CHARS, WhatsAppSkill, split_message, whatsapp_address

SID = "AC0123456789abcdef0123456789abcdef"
AUTH_TOKEN = "twilio-secret-token"
BASE = "http://twilio.test"
URL = f"{BASE}/2010-04-01/Accounts/{SID}/Messages.json"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=2.0) as client:
        yield client


@pytest.fixture
def skill(make_settings, http):
    def _make(**overrides):
        values = {"twilio_account_sid": SID, "twilio_auth_token": AUTH_TOKEN, "twilio_base_url": BASE}
        return WhatsAppSkill(make_settings(**{**values, **overrides}), http)

    return _make


@pytest.fixture
def twilio() -> AsyncIterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


def _created(sid: str = "SM00000000000000000000000000000001") -> httpx.Response:
    return httpx.Response(201, json={"sid": sid, "status": "queued"})


def _form(request: httpx.Request) -> list[tuple[str, str]]:
    return parse_qsl(request.content.decode(), keep_blank_values=True)


def _twilio_error(code: int, status: int = 400, message: str = "refused") -> httpx.Response:
    return httpx.Response(
        status,
        json={
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
    )


# --- What reaches Twilio ---------------------------------------------------------------


async def test_sends_the_exact_form_with_basic_auth(skill, twilio):
    route = twilio.post(URL).mock(return_value=_created())
    sent = await skill().send_message(to="+15551234567", body="Meeting moved to 9:30.")

    request = route.calls.last.request
    assert _form(request) == [
        ("From", "whatsapp:+14155238886"),
        ("To", "whatsapp:+15551234567"),
        ("Body", "Meeting moved to 9:30."),
    ]
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    expected = base64.b64encode(f"{SID}:{AUTH_TOKEN}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {expected}"
    assert (sent.to, sent.sids, sent.parts, sent.dry_run) == (
        "whatsapp:+15551234567",
        ["SM00000000000000000000000000000001"],
        1,
        False,
    )
    assert sent.payload == {
        "url": URL,
        "messages": [
            {"From": "whatsapp:+14155238886", "To": "whatsapp:+15551234567", "Body": "Meeting moved to 9:30."}
        ],
    }
    assert sent.ledger_external_id() == "SM00000000000000000000000000000001"


async def test_prefixed_recipient_and_configured_sender(skill, twilio):
    route = twilio.post(URL).mock(return_value=_created())
    await skill(twilio_whatsapp_number="+15550001111").send_message(to="whatsapp:+447700900123", body="hi")
    form = dict(_form(route.calls.last.request))
    assert (form["From"], form["To"]) == ("whatsapp:+15550001111", "whatsapp:+447700900123")


@pytest.mark.parametrize(
    "to",
    [
        "15551234567",
        "+0551234567",
        "+1 555 123 4567",
        "whatsapp:15551234567",
        "+1",
        "sms:+15551234567",
        # A trailing newline passed (`$` matches before it) and reached Twilio (found by a black-box review).
        "+15551234567\n",
        "whatsapp:+15551234567\n",
        # E.164: at most 15 digits, and none shorter than 7 is accepted.
        "+1234567890123456",
        "+123456",
    ],
)
async def test_invalid_recipient_is_422_and_nothing_is_sent(skill, twilio, to):
    route = twilio.post(URL).mock(return_value=_created())
    with pytest.raises(InvalidInput) as caught:
        await skill().send_message(to=to, body="hi")
    assert "E.164" in caught.value.detail
    assert not route.called


async def test_blank_body_is_422(skill, twilio):
    route = twilio.post(URL).mock(return_value=_created())
    with pytest.raises(InvalidInput):
        await skill().send_message(to="+15551234567", body=" \n ")
    assert not route.called


async def test_unconfigured_names_both_variables(make_settings, http, twilio):
    route = twilio.post(url__regex=r".*").mock(return_value=_created())
    with pytest.raises(NotConfigured) as caught:
        await WhatsAppSkill(make_settings(), http).send_message(to="+15551234567", body="hi")
    assert caught.value.extras["missing_settings"] == ["TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"]
    assert not route.called


async def test_dry_run_records_the_forms_and_sends_nothing(skill, twilio):
    route = twilio.post(URL).mock(return_value=_created())
    sent = await skill().send_message(to="+15551234567", body="word " * 400, dry_run=True)
    assert not route.called
    assert (sent.dry_run, sent.sids, sent.parts) == (True, [], 2)
    assert [m["Body"] for m in sent.payload["messages"]] == split_message("word " * 400)


async def test_long_body_is_sent_as_several_messages_in_order(skill, twilio):
    sids = [f"SM{n:032d}" for n in range(1, 4)]
    route = twilio.post(URL).mock(side_effect=[_created(sid) for sid in sids])
    body = " ".join(f"w{n:04d}" for n in range(700))  # 4,199 characters
    sent = await skill().send_message(to="+15551234567", body=body)

    bodies = [dict(_form(call.request))["Body"] for call in route.calls]
    assert len(bodies) == 3
    assert all(len(part) <= MAX_BODY_CHARS for part in bodies)
    assert " ".join(bodies) == body, "parts must be in order and lose nothing but the whitespace at each cut"
    assert sent.sids == sids
    assert sent.parts == 3
    assert sent.ledger_external_id() == ",".join(sids)


async def test_a_failed_later_part_reports_what_was_already_sent(skill, twilio):
    twilio.post(URL).mock(side_effect=[_created("SM1"), _twilio_error(21611, message="queue full")])
    with pytest.raises(UpstreamError) as caught:
        await skill().send_message(to="+15551234567", body="a " * 1000)
    assert caught.value.extras["sent_sids"] == ["SM1"]
    assert caught.value.detail.endswith(" Parts 1-1 of 2 were sent; part 2 failed.")


async def test_a_failed_later_part_leaves_the_sent_sids_on_the_ledger_action(client, skill, twilio):
    """Part 1's status callbacks must find this run even though the send failed (workflows.deliveries)."""
    twilio.post(URL).mock(side_effect=[_created("SM1"), _twilio_error(21611, message="queue full")])
    ledger = client.app.state.resources.ledger
    with pytest.raises(UpstreamError):
        async with ledger.run("whatsapp.send", trigger="api") as run:
            async with run.action("whatsapp", "send_message") as action:
                await skill().send_message(to="+15551234567", body="a " * 1000)
    assert action.external_id == "SM1"
    assert [m["Body"] for m in action.request["messages"]] == split_message("a " * 1000)


@pytest.mark.parametrize(
    "reply",
    [
        httpx.Response(201, json={"status": "queued"}),
        httpx.Response(201, json={"sid": "", "status": "queued"}),
        httpx.Response(200, text="<html>proxy</html>", headers={"content-type": "text/html"}),
    ],
    ids=["no-sid", "empty-sid", "html"],
)
async def test_a_2xx_without_a_sid_says_the_outcome_is_unknown_and_is_not_retried(skill, twilio, reply):
    """Found by a black-box review: a plain 502 that invited a resend, though Twilio most likely sent it."""
    route = twilio.post(URL).mock(return_value=reply)
    with pytest.raises(UpstreamError) as caught:
        await skill().send_message(to="+15551234567", body="hi")
    assert route.call_count == 1
    assert caught.value.extras["outcome_unknown"] is True
    assert caught.value.detail.startswith(f"Twilio answered HTTP {reply.status_code} without a message SID.")
    assert "The outcome is unknown: the message may have been sent; check Twilio's message log" in caught.value.detail


async def test_a_2xx_too_large_to_read_says_the_outcome_is_unknown_and_is_not_retried(skill, twilio):
    route = twilio.post(URL).mock(return_value=httpx.Response(201, content=b" " * (MAX_RESPONSE_BYTES + 1)))
    with pytest.raises(UpstreamError) as caught:
        await skill().send_message(to="+15551234567", body="hi")
    assert route.call_count == 1
    assert caught.value.extras["outcome_unknown"] is True
    assert caught.value.detail.startswith("Twilio answered with a body that could not be read (")
    assert "The outcome is unknown: the message may have been sent" in caught.value.detail


async def test_too_many_parts_is_422(skill, twilio):
    route = twilio.post(URL).mock(return_value=_created())
    with pytest.raises(InvalidInput):
        await skill().send_message(to="+15551234567", body="x " * (MAX_BODY_CHARS * 6))
    assert not route.called


async def test_the_part_limit_is_exact_at_the_skill(skill, twilio):
    """Ten parts are sent, eleven refused with nothing sent (found by a mutation review: the workflows and
    late replies call the skill directly, without the router's own check)."""
    route = twilio.post(URL).mock(return_value=_created())
    await skill().send_message(to="+15551234567", body="a" * (1600 * 10))
    assert route.call_count == 10
    with pytest.raises(InvalidInput) as caught:
        await skill().send_message(to="+15551234567", body="a" * (1600 * 10 + 1))
    assert route.call_count == 10
    assert "would need 11 WhatsApp messages; the limit is 10" in caught.value.detail


# --- Splitting --------------------------------------------------------------------------


def test_split_exactly_the_limit_is_one_part():
    body = "abc " * 399 + "abcd"
    assert len(body) == 1600
    assert split_message(body) == [body]
    assert split_message("a" * 1600) == ["a" * 1600]


def test_split_a_word_free_string_one_over_the_limit_is_cut_hard():
    assert split_message("a" * 1601) == ["a" * 1600, "a"]


def test_split_prefers_the_last_space_within_the_limit():
    body = "a" * 1595 + " bbbbbbbbbb"
    assert split_message(body) == ["a" * 1595, "b" * 10]


def test_split_at_a_space_right_after_the_limit():
    body = "a" * 1600 + " tail"
    assert split_message(body) == ["a" * 1600, "tail"]


def test_split_drops_all_the_whitespace_at_a_cut():
    assert split_message("a" * 1600 + "   \n tail") == ["a" * 1600, "tail"]
    assert split_message("a" * 1598 + "  " + "b" * 10) == ["a" * 1598, "b" * 10]


def test_split_cuts_on_a_tab():
    assert split_message("a" * 1595 + "\t" + "b" * 10) == ["a" * 1595, "b" * 10]


def test_split_keeps_newlines_inside_parts_and_cuts_on_them():
    body = "line one\nline two\n" + "z" * 1595
    assert split_message(body) == ["line one\nline two", "z" * 1595]


def test_split_counts_emoji_as_two_units_and_never_cuts_one():
    body = "😀" * 801  # 1,602 UTF-16 units
    parts = split_message(body)
    assert parts == ["😀" * 800, "😀"]
    assert all(len(part.encode("utf-16-le")) // 2 <= 1600 for part in parts)


FLAG = "\U0001f1fa\U0001f1f8"  # 🇺🇸: two regional indicators
FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # 👨‍👩‍👧: three emoji joined by U+200D
THUMB = "\U0001f44d\U0001f3fd"  # 👍🏽: an emoji and a skin-tone modifier


@pytest.mark.parametrize(
    "body", ["a" + FLAG * 500, "a" + FAMILY * 300, "ab" + THUMB * 500], ids=["flags", "zwj", "tone"]
)
def test_a_hard_cut_never_splits_a_flag_or_an_emoji_sequence(body):
    """Found by a black-box review: "a" + 🇺🇸 x 500 ended part 1 on a lone 🇺, and every flag after it paired wrong."""
    parts = split_message(body)
    assert len(parts) > 1
    assert "".join(parts) == body
    clusters = regex.findall(r"\X", body)
    assert [cluster for part in parts for cluster in regex.findall(r"\X", part)] == clusters
    assert all(len(part.encode("utf-16-le")) // 2 <= MAX_BODY_CHARS for part in parts)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["a", "é", "😀", FLAG, FAMILY, THUMB, "e\u0301"]), min_size=1, max_size=400))
def test_any_word_free_text_is_cut_only_between_grapheme_clusters(pieces):
    body = "".join(pieces)
    parts = split_message(body, limit=37)
    assert "".join(parts) == body
    assert [c for part in parts for c in regex.findall(r"\X", part)] == regex.findall(r"\X", body)
    assert all(len(part.encode("utf-16-le")) // 2 <= 37 for part in parts)


def test_split_accented_text_counts_characters_not_bytes():
    body = "é" * 1600  # 3,200 UTF-8 bytes, 1,600 characters
    assert split_message(body) == [body]


def test_split_small_limit_and_empty_input():
    assert split_message("one two three", limit=7) == ["one two", "three"]
    assert split_message("") == []
    assert split_message("   ") == []


def test_whatsapp_address_normalises():
    assert whatsapp_address("+15551234567") == "whatsapp:+15551234567"
    assert whatsapp_address("whatsapp:+15551234567") == "whatsapp:+15551234567"
    # The longest and shortest numbers accepted: 15 digits (E.164's maximum) and 7.
    assert whatsapp_address("+123456789012345") == "whatsapp:+123456789012345"
    assert whatsapp_address("+1234567") == "whatsapp:+1234567"


# --- Twilio errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status", "problem", "http_status", "words"),
    [
        (63015, 400, Conflict, 409, "join <your-sandbox-code>"),
        (63016, 400, Conflict, 409, "24 hours"),
        (21211, 400, InvalidInput, 422, "not a valid phone number"),
        (21614, 400, InvalidInput, 422, "not a valid mobile number"),
        (21610, 400, Conflict, 409, "opted out"),
        (20003, 401, UpstreamError, 502, "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"),
        (20404, 404, UpstreamError, 502, "TWILIO_ACCOUNT_SID"),
        (63007, 400, UpstreamError, 502, "TWILIO_WHATSAPP_NUMBER"),
        (21606, 400, UpstreamError, 502, "TWILIO_WHATSAPP_NUMBER"),
        (21212, 400, UpstreamError, 502, "TWILIO_WHATSAPP_NUMBER"),
        (21617, 400, InvalidInput, 422, "exceeds 1,600 characters"),
        (21408, 400, InvalidInput, 422, "Geo permissions"),
        (30000, 400, UpstreamError, 502, "Twilio refused the message"),
    ],
)
async def test_error_codes_get_a_human_hint_and_are_not_retried(
    skill, twilio, code, status, problem, http_status, words
):
    route = twilio.post(URL).mock(return_value=_twilio_error(code, status, message=f"message for {code}"))
    with pytest.raises(problem) as caught:
        await skill().send_message(to="+15551234567", body="hi")
    assert caught.value.status == http_status
    assert words in caught.value.detail
    assert f"Twilio {code}: message for {code}" in caught.value.detail
    assert caught.value.extras["twilio_code"] == code
    assert caught.value.extras["more_info"].endswith(str(code))
    assert route.call_count == 1
    assert AUTH_TOKEN not in caught.value.detail


@pytest.mark.parametrize("status", [401, 403])
async def test_401_or_403_without_a_body_names_the_credentials(skill, twilio, status):
    twilio.post(URL).mock(return_value=httpx.Response(status))
    with pytest.raises(UpstreamError) as caught:
        await skill().send_message(to="+15551234567", body="hi")
    assert caught.value.extras["settings"] == ["TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"]
    assert caught.value.detail == "Twilio refused the credentials: check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN."


async def test_404_without_a_code_names_the_base_url_and_the_account_sid(skill, twilio):
    twilio.post(URL).mock(return_value=httpx.Response(404, text="Not Found"))
    with pytest.raises(UpstreamError) as caught:
        await skill().send_message(to="+15551234567", body="hi")
    assert caught.value.extras["settings"] == ["TWILIO_BASE_URL", "TWILIO_ACCOUNT_SID"]
    assert caught.value.detail == (
        "Twilio answered 404 without its error code: check TWILIO_BASE_URL (the REST API root, "
        "https://api.twilio.com) and TWILIO_ACCOUNT_SID."
    )


async def test_a_refusal_without_a_code_still_shows_twilios_message(skill, twilio):
    twilio.post(URL).mock(return_value=httpx.Response(400, json={"message": "Missing required parameter To"}))
    with pytest.raises(UpstreamError) as caught:
        await skill().send_message(to="+15551234567", body="hi")
    assert caught.value.detail == "Twilio refused the message. (Missing required parameter To)"


async def test_429_waits_out_retry_after_then_succeeds(skill, twilio):
    route = twilio.post(URL).mock(
        side_effect=[httpx.Response(429, headers={"Retry-After": "1"}, json={"code": 20429}), _created()]
    )
    started = time.monotonic()
    sent = await skill().send_message(to="+15551234567", body="hi")
    assert time.monotonic() - started >= 0.95
    assert route.call_count == 2
    assert sent.sids == ["SM00000000000000000000000000000001"]


async def test_429_that_persists_is_429_with_retry_after(skill, twilio):
    route = twilio.post(URL).mock(return_value=httpx.Response(429, headers={"Retry-After": "0"}, json={"code": 20429}))
    with pytest.raises(UpstreamRateLimited) as caught:
        await skill().send_message(to="+15551234567", body="hi")
    assert route.call_count == ATTEMPTS
    assert caught.value.headers["Retry-After"] == "0"


async def test_429_without_retry_after_backs_off_then_gives_up(skill, twilio):
    route = twilio.post(URL).mock(return_value=httpx.Response(429, json={"code": 20429, "message": "Too Many"}))
    with pytest.raises(UpstreamRateLimited) as caught:
        await skill().send_message(to="+15551234567", body="hi")
    assert route.call_count == ATTEMPTS
    assert "Retry-After" not in caught.value.headers
    # Twilio's context, as on every other Twilio problem (it was missing here; found by review).
    assert (caught.value.extras["twilio_code"], caught.value.extras["upstream_status"]) == (20429, 429)


async def test_429_with_long_retry_after_is_passed_on_at_once(skill, twilio):
    route = twilio.post(URL).mock(return_value=httpx.Response(429, headers={"Retry-After": "300"}))
    with pytest.raises(UpstreamRateLimited) as caught:
        await skill().send_message(to="+15551234567", body="hi")
    assert route.call_count == 1
    assert caught.value.headers["Retry-After"] == "300"


async def test_code_20429_is_a_rate_limit_whatever_the_http_status(skill, twilio):
    route = twilio.post(URL).mock(
        return_value=httpx.Response(400, headers={"Retry-After": "0"}, json={"code": 20429, "message": "Too Many"})
    )
    with pytest.raises(UpstreamRateLimited) as caught:
        await skill().send_message(to="+15551234567", body="hi")
    assert route.call_count == ATTEMPTS  # refused, not processed: retried like a 429
    assert caught.value.headers["Retry-After"] == "0"


_UNKNOWN = (
    "The outcome is unknown: the message may have been sent; check Twilio's message log (Monitor > Logs > Messaging) "
    "for messages to whatsapp:+15551234567 before retrying."
)


@pytest.mark.parametrize(
    ("response", "problem", "status", "lead"),
    [
        (
            httpx.Response(500, json={"code": 20500, "message": "Internal"}),
            UpstreamError,
            502,
            "Twilio answered 500 (Twilio 20500: Internal).",
        ),
        (
            httpx.Response(502, text="<html>Bad gateway</html>", headers={"content-type": "text/html"}),
            UpstreamError,
            502,
            "Twilio answered 502.",
        ),
        (
            httpx.Response(503, json={"code": 20503, "message": "Service unavailable"}),
            UpstreamUnavailable,
            503,
            "Twilio answered 503 (Twilio 20503: Service unavailable).",
        ),
        (httpx.Response(504, text="gateway timeout"), UpstreamTimeout, 504, "Twilio answered 504."),
    ],
    ids=["500", "502-html", "503", "504"],
)
async def test_5xx_is_sent_once_and_says_the_outcome_is_unknown(skill, twilio, response, problem, status, lead):
    # Twilio: after a 500 on a message create, "it is possible for a customer to receive multiple messages"
    # if it is retried. A good answer is queued behind the fault: a retry would send a second message.
    route = twilio.post(URL).mock(side_effect=[response, _created()])
    with pytest.raises(problem) as caught:
        await skill().send_message(to="+15551234567", body="hi")
    assert route.call_count == 1
    assert type(caught.value) is problem
    assert caught.value.status == status
    assert caught.value.retryable is False
    assert caught.value.extras["upstream_status"] == response.status_code
    assert caught.value.detail == f"{lead} {_UNKNOWN}"


async def test_a_503_retry_after_is_passed_on_without_sending_again(skill, twilio):
    """Not retried (the message may exist), but the caller learns when Twilio will serve again."""
    route = twilio.post(URL).mock(
        side_effect=[httpx.Response(503, headers={"Retry-After": "120"}, json={"code": 20503}), _created()]
    )
    with pytest.raises(UpstreamUnavailable) as caught:
        await skill().send_message(to="+15551234567", body="hi")
    assert route.call_count == 1
    assert caught.value.headers["Retry-After"] == "120"


async def test_a_5xx_on_a_later_part_stops_there_and_reports_what_was_sent(skill, twilio):
    route = twilio.post(URL).mock(side_effect=[_created("SM1"), httpx.Response(500), _created("SM2")])
    with pytest.raises(UpstreamError) as caught:
        await skill().send_message(to="+15551234567", body="a " * 1000)
    assert route.call_count == 2
    assert caught.value.extras["sent_sids"] == ["SM1"]
    assert "outcome is unknown" in caught.value.detail
    assert "Parts 1-1 of 2 were sent" in caught.value.detail


@pytest.mark.parametrize(
    ("exc", "problem", "status", "calls"),
    [
        # Never reached Twilio: retried within the bound.
        (httpx.ConnectError("refused"), UpstreamUnavailable, 503, ATTEMPTS),
        (httpx.ConnectTimeout("slow connect"), UpstreamTimeout, 504, ATTEMPTS),
        # Reached Twilio, which may have sent the message: never repeated.
        (httpx.ReadTimeout("slow"), UpstreamTimeout, 504, 1),
        (httpx.RemoteProtocolError("reset"), UpstreamUnavailable, 503, 1),
    ],
    ids=["refused", "connect-timeout", "timeout", "reset"],
)
async def test_transport_failures_are_mapped_and_only_unsent_ones_retried(skill, twilio, exc, problem, status, calls):
    route = twilio.post(URL).mock(side_effect=exc)
    with pytest.raises(problem) as caught:
        await skill().send_message(to="+15551234567", body="hi")
    assert caught.value.status == status
    assert route.call_count == calls
    if calls == 1:
        assert "outcome is unknown" in caught.value.detail


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(201, text="<html>ok</html>", headers={"content-type": "text/html"}),
        httpx.Response(201, text="{broken", headers={"content-type": "application/json"}),
        httpx.Response(201, json=["no", "sid"]),
        httpx.Response(201, json={"status": "queued"}),
    ],
    ids=["html", "invalid-json", "json-list", "no-sid"],
)
async def test_unusable_success_is_502_and_not_retried(skill, twilio, response):
    route = twilio.post(URL).mock(return_value=response)
    with pytest.raises(UpstreamError) as caught:
        await skill().send_message(to="+15551234567", body="hi")
    assert type(caught.value) is UpstreamError
    assert route.call_count == 1


async def test_4xx_with_html_body(skill, twilio):
    twilio.post(URL).mock(return_value=httpx.Response(400, text="<html>nope</html>"))
    with pytest.raises(UpstreamError) as caught:
        await skill().send_message(to="+15551234567", body="hi")
    assert "without a usable JSON body" in caught.value.detail
