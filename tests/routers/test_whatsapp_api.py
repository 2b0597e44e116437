"""POST /whatsapp-send through the real app; Twilio mocked with respx on the app's shared httpx client."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from urllib.parse import parse_qsl

import httpx
import pytest
import respx

from skills.whatsapp import ATTEMPTS

SID = "AC00000000000000000000000000000001"
AUTH_TOKEN = "twilio-api-secret"
BASE = "http://twilio.test"
PATH = f"/2010-04-01/Accounts/{SID}/Messages.json"


@pytest.fixture
def twilio() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


@pytest.fixture
def wa_client(make_client):
    def _make(**overrides):
        values = {"twilio_account_sid": SID, "twilio_auth_token": AUTH_TOKEN, "twilio_base_url": BASE}
        return make_client(**{**values, **overrides})

    return _make


def _created(sid: str = "SM00000000000000000000000000000001") -> httpx.Response:
    return httpx.Response(201, json={"sid": sid, "status": "queued"})


async def _only_run(client) -> dict:
    page = (await client.get("/runs", params={"kind": "whatsapp.send"})).json()
    assert page["total"] == 1, page
    return (await client.get(f"/runs/{page['items'][0]['id']}")).json()


async def test_sends_and_records_the_run(wa_client, twilio):
    route = twilio.post(PATH).mock(return_value=_created())
    async with wa_client() as client:
        response = await client.post("/whatsapp-send", json={"to": "+15551234567", "body": "Standup in 5"})
        assert response.status_code == 200, response.text
        body = response.json()
        run = (await client.get(f"/runs/{body['run_id']}")).json()

    assert body == {
        "run_id": body["run_id"],
        "dry_run": False,
        "to": "whatsapp:+15551234567",
        "sids": ["SM00000000000000000000000000000001"],
        "parts": 1,
    }
    request = route.calls.last.request
    assert parse_qsl(request.content.decode()) == [
        ("From", "whatsapp:+14155238886"),
        ("To", "whatsapp:+15551234567"),
        ("Body", "Standup in 5"),
    ]
    assert request.headers["authorization"] == "Basic " + base64.b64encode(f"{SID}:{AUTH_TOKEN}".encode()).decode()

    assert (run["kind"], run["trigger"], run["status"]) == ("whatsapp.send", "api", "ok")
    [action] = run["actions"]
    assert (action["skill"], action["operation"], action["status"]) == ("whatsapp", "send_message", "ok")
    assert action["external_id"] == "SM00000000000000000000000000000001"
    assert action["request"]["messages"] == [
        {"From": "whatsapp:+14155238886", "To": "whatsapp:+15551234567", "Body": "Standup in 5"}
    ]
    assert AUTH_TOKEN not in str(run)


async def test_long_body_is_split_and_every_sid_returned(wa_client, twilio):
    route = twilio.post(PATH).mock(side_effect=[_created("SM1"), _created("SM2")])
    text = "word " * 500  # 2,500 characters
    async with wa_client() as client:
        response = await client.post("/whatsapp-send", json={"to": "whatsapp:+15551234567", "body": text})
    assert response.json()["sids"] == ["SM1", "SM2"]
    assert response.json()["parts"] == 2
    bodies = [dict(parse_qsl(call.request.content.decode()))["Body"] for call in route.calls]
    assert " ".join(bodies) == text.strip()


async def test_a_retry_after_a_part_failed_never_sends_the_sent_parts_again(wa_client, twilio):
    """Found by a review: part 2 refused (429, three times), the key was released, and the retry with the same key
    sent part 1 a second time."""
    refused = httpx.Response(429, json={"code": 20429, "message": "Too Many Requests"}, headers={"Retry-After": "0"})
    route = twilio.post(PATH).mock(side_effect=[_created("SM1"), refused, refused, refused, _created("SM2")])
    headers = {"Idempotency-Key": "parts-1"}
    async with wa_client() as client:
        first = await client.post("/whatsapp-send", json={"to": "+15551234567", "body": "word " * 400}, headers=headers)
        retry = await client.post("/whatsapp-send", json={"to": "+15551234567", "body": "word " * 400}, headers=headers)
    assert first.status_code == 429 and first.json()["sent_sids"] == ["SM1"]
    assert retry.status_code == 429 and retry.headers["idempotent-replayed"] == "true"
    # The first answer says when Twilio takes messages again; the replay is final for the key, so it does not
    # invite a retry with it (a client honouring Retry-After looped on the replay for 24 hours).
    assert "retry-after" in first.headers and "retry-after" not in retry.headers
    assert route.call_count == 4  # part 1 once, part 2 three times; nothing more


async def test_invalid_number_is_422_and_twilio_is_not_called(wa_client, twilio):
    route = twilio.post(PATH).mock(return_value=_created())
    async with wa_client() as client:
        response = await client.post("/whatsapp-send", json={"to": "555-123-4567", "body": "hi"})
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["field"] == "body.to" and "E.164" in error["message"]
    assert not route.called


async def test_unconfigured_is_503_naming_the_variables(make_client):
    async with make_client() as client:
        response = await client.post("/whatsapp-send", json={"to": "+15551234567", "body": "hi"})
        run = await _only_run(client)
    assert response.status_code == 503
    assert response.json()["missing_settings"] == ["TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"]
    assert run["status"] == "failed"
    # Every failed action's problem names its ledger record (found by a black-box review: only request_id).
    assert response.json()["run_id"] == run["id"]


async def test_sandbox_not_joined_is_409_with_the_join_hint_and_recorded(wa_client, twilio):
    twilio.post(PATH).mock(
        return_value=httpx.Response(
            400,
            json={
                "code": 63015,
                "message": "Channel Sandbox can only send messages to phone numbers that have joined the Sandbox",
                "more_info": "https://www.twilio.com/docs/errors/63015",
                "status": 400,
            },
        )
    )
    async with wa_client() as client:
        response = await client.post("/whatsapp-send", json={"to": "+15551234567", "body": "hi"})
        run = await _only_run(client)
    assert response.status_code == 409
    problem = response.json()
    assert "join <your-sandbox-code>" in problem["detail"]
    assert problem["twilio_code"] == 63015
    assert problem["more_info"] == "https://www.twilio.com/docs/errors/63015"
    [action] = run["actions"]
    assert action["status"] == "failed"
    assert action["attempts"] == 1
    assert "63015" in action["error"]


async def test_auth_failure_is_502_naming_the_credentials_without_the_token(wa_client, twilio):
    twilio.post(PATH).mock(return_value=httpx.Response(401, json={"code": 20003, "message": "Authenticate"}))
    async with wa_client() as client:
        response = await client.post("/whatsapp-send", json={"to": "+15551234567", "body": "hi"})
    assert response.status_code == 502
    assert response.json()["settings"] == ["TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"]
    assert AUTH_TOKEN not in response.text


@pytest.mark.parametrize(
    ("effect", "status", "headers", "attempts"),
    [
        (httpx.Response(429, headers={"Retry-After": "0"}, json={"code": 20429}), 429, {"retry-after": "0"}, ATTEMPTS),
        (httpx.Response(429, json={"code": 20429}), 429, {}, ATTEMPTS),
        (httpx.ConnectError("refused"), 503, {}, ATTEMPTS),
        # Reached Twilio, which may have sent the message: one attempt, never repeated.
        (httpx.Response(500, json={"code": 20500}), 502, {}, 1),
        (httpx.Response(503, text="<html>down</html>"), 503, {}, 1),
        (httpx.Response(504, text="gateway timeout"), 504, {}, 1),
        (httpx.ReadTimeout("slow"), 504, {}, 1),
        (httpx.RemoteProtocolError("reset"), 503, {}, 1),
    ],
    ids=["429-retry-after", "429-bare", "refused", "500", "503-html", "504", "timeout", "reset"],
)
async def test_faults_are_mapped_bounded_and_recorded(wa_client, twilio, effect, status, headers, attempts):
    route = twilio.post(PATH)
    if isinstance(effect, Exception):
        route.mock(side_effect=effect)
    else:
        route.mock(return_value=effect)
    async with wa_client() as client:
        response = await client.post("/whatsapp-send", json={"to": "+15551234567", "body": "hi"})
        run = await _only_run(client)
    assert response.status_code == status
    assert response.json()["upstream"] == "twilio"
    for name, value in headers.items():
        assert response.headers[name] == value
    assert route.call_count == attempts
    [action] = run["actions"]
    assert (run["status"], action["status"], action["attempts"]) == ("failed", "failed", attempts)
    assert action["error"].startswith(str(status))
    if attempts == 1:
        assert "The outcome is unknown: the message may have been sent" in response.json()["detail"]
        assert "outcome is unknown" in action["error"]


async def test_500_is_one_post_and_a_failed_action_saying_how_to_check(wa_client, twilio):
    # A good answer is queued behind the fault: a retry would send the message a second time.
    route = twilio.post(PATH).mock(
        side_effect=[httpx.Response(500, json={"code": 20500, "message": "Internal Server Error"}), _created()]
    )
    async with wa_client() as client:
        response = await client.post("/whatsapp-send", json={"to": "+15551234567", "body": "hi"})
        run = await _only_run(client)
    assert route.call_count == 1
    assert response.status_code == 502
    problem = response.json()
    detail = (
        "Twilio answered 500 (Twilio 20500: Internal Server Error). The outcome is unknown: the message may have "
        "been sent; check Twilio's message log (Monitor > Logs > Messaging) for messages to whatsapp:+15551234567 "
        "before retrying."
    )
    assert (problem["type"], problem["detail"]) == ("/problems/upstream-error", detail)
    assert (problem["upstream_status"], problem["twilio_code"]) == (500, 20500)
    [action] = run["actions"]
    assert (action["status"], action["attempts"], action["error"]) == ("failed", 1, f"502 upstream-error: {detail}")


async def test_slow_answer_past_the_shared_client_timeout_is_504(make_client):
    # A real slow server (not respx), so the shared client's own timeout is what fires.
    from tests.fakes.server import FakeUpstream, Reply

    async with FakeUpstream() as fake:
        fake.route("POST", PATH, lambda request: Reply(201, json={"sid": "SMlate"}, delay=1.0))
        async with make_client(
            twilio_account_sid=SID, twilio_auth_token=AUTH_TOKEN, twilio_base_url=fake.url, http_timeout_seconds=0.2
        ) as client:
            response = await client.post("/whatsapp-send", json={"to": "+15551234567", "body": "hi"})
            run = await _only_run(client)
    assert response.status_code == 504
    assert "did not answer in time" in response.json()["detail"]
    # Twilio got the request and may have sent it: never repeated.
    assert len(fake.calls("POST", PATH)) == 1
    assert fake.requests[0].form == {"From": "whatsapp:+14155238886", "To": "whatsapp:+15551234567", "Body": "hi"}
    assert run["actions"][0]["attempts"] == 1


async def test_idempotency_key_sends_once_and_replays(wa_client, twilio):
    route = twilio.post(PATH).mock(return_value=_created())
    headers = {"Idempotency-Key": "wa-0001"}
    async with wa_client() as client:
        first = await client.post("/whatsapp-send", json={"to": "+15551234567", "body": "hi"}, headers=headers)
        second = await client.post("/whatsapp-send", json={"to": "+15551234567", "body": "hi"}, headers=headers)
    assert second.json() == first.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert route.call_count == 1


async def test_dry_run_records_the_exact_forms_without_calling_twilio(wa_client, twilio):
    route = twilio.post(PATH).mock(return_value=_created())
    async with wa_client() as client:
        response = await client.post("/whatsapp-send?dry_run=true", json={"to": "+15551234567", "body": "hi"})
        run = (await client.get(f"/runs/{response.json()['run_id']}")).json()
    assert response.json()["dry_run"] is True
    assert response.json()["sids"] == []
    assert not route.called
    assert run["status"] == "dry_run"
    assert run["actions"][0]["request"] == {
        "url": f"{BASE}{PATH}",
        "messages": [{"From": "whatsapp:+14155238886", "To": "whatsapp:+15551234567", "Body": "hi"}],
    }


async def test_sending_is_rate_limited_per_client(wa_client, twilio):
    route = twilio.post(PATH).mock(return_value=_created())
    async with wa_client(rate_limit_per_minute=2) as client:
        statuses = [
            (await client.post("/whatsapp-send", json={"to": "+15551234567", "body": f"m{n}"})).status_code
            for n in range(3)
        ]
        limited = await client.post("/whatsapp-send", json={"to": "+15551234567", "body": "again"})
    assert statuses == [200, 200, 429]
    assert int(limited.headers["Retry-After"]) >= 1
    assert route.call_count == 2
