"""Twilio's delivery status callbacks: asked for on every message, signed, and a failed delivery recorded once."""

from __future__ import annotations

import asyncio

import pytest

from tests.workflows.world import (
    OWNER,
    TWILIO_SID,
    finished_runs,
    post_whatsapp,
    runs_of,
    twilio_signature,
    world,
)

PUBLIC = "https://orchestrator.example.test"


@pytest.fixture
async def w():
    async with world() as fakes:
        yield fakes


def status_form(sid: str, status: str, *, code: str | None = None) -> dict[str, str]:
    """What Twilio posts to a StatusCallback (form-encoded, every field covered by the signature)."""
    form = {
        "MessageSid": sid,
        "SmsSid": sid,
        "MessageStatus": status,
        "SmsStatus": status,
        "AccountSid": TWILIO_SID,
        "From": "whatsapp:+14155238886",
        "To": f"whatsapp:{OWNER}",
        "ApiVersion": "2010-04-01",
        "ChannelPrefix": "whatsapp",
    }
    if code is not None:
        form["ErrorCode"] = code
    return form


async def post_status(client, form: dict[str, str], *, signature: str | None = None):
    return await post_whatsapp(
        client, form, signed_url=f"{PUBLIC}/whatsapp-status", path="/whatsapp-status", signature=signature
    )


async def send_one(client) -> tuple[str, str]:
    """Send a WhatsApp message through the API; its Twilio SID and the run that sent it."""
    response = await client.post("/whatsapp-send", json={"to": OWNER, "body": "Standup in 5 minutes"})
    assert response.status_code == 200, response.text
    body = response.json()
    return body["sids"][0], body["run_id"]


async def test_every_message_asks_twilio_for_status_callbacks(w, make_client):
    async with make_client(send_api_key=True, **w.settings(public_base_url=PUBLIC + "/")) as client:
        await send_one(client)
    assert w.twilio.sent[0]["StatusCallback"] == f"{PUBLIC}/whatsapp-status"


async def test_without_a_public_url_no_callback_is_asked_for(w, make_client):
    async with make_client(**w.settings()) as client:
        await send_one(client)
    assert "StatusCallback" not in w.twilio.sent[0]


async def test_an_undelivered_message_becomes_a_failed_run_with_the_hint_linked_to_its_send(w, make_client):
    async with make_client(send_api_key=True, **w.settings(public_base_url=PUBLIC)) as client:
        sid, send_run = await send_one(client)
        response = await post_status(client, status_form(sid, "undelivered", code="63016"))
        [run] = await finished_runs(client, "whatsapp.delivery")
    assert response.status_code == 204
    assert (run["trigger"], run["status"]) == ("whatsapp", "failed")
    assert run["input_summary"] == {
        "message_sid": sid,
        "status": "undelivered",
        "to": OWNER,
        "twilio_code": 63016,
        "send_run_id": send_run,
    }
    assert "409 conflict" in run["error"] and "approved template (ContentSid)" in run["error"]
    [action] = run["actions"]
    assert (action["skill"], action["operation"], action["status"], action["external_id"]) == (
        "whatsapp",
        "delivery",
        "failed",
        sid,
    )


async def test_a_part_sent_before_a_later_part_failed_is_recorded_and_its_callback_finds_the_send(w, make_client):
    """Found by a black-box review: when part 2 of a long message failed, the action kept no SID, so part 1's
    delivery failure could not be linked to the run that sent it."""
    w.twilio.fail_after = 1
    async with make_client(send_api_key=True, **w.settings(public_base_url=PUBLIC)) as client:
        response = await client.post("/whatsapp-send", json={"to": OWNER, "body": "word " * 400})
        problem = response.json()
        [sent_sid] = problem["sent_sids"]
        send = (await client.get(f"/runs/{problem['run_id']}")).json()
        await post_status(client, status_form(sent_sid, "undelivered", code="63016"))
        [delivery] = await finished_runs(client, "whatsapp.delivery")
    assert response.status_code == 422
    assert "Parts 1-1 of 2 were sent" in problem["detail"]
    [action] = send["actions"]
    assert (action["status"], action["external_id"]) == ("failed", sent_sid)
    assert delivery["input_summary"]["send_run_id"] == problem["run_id"]


async def test_an_unknown_failure_code_is_still_recorded(w, make_client):
    async with make_client(send_api_key=True, **w.settings(public_base_url=PUBLIC)) as client:
        sid, _ = await send_one(client)
        await post_status(client, status_form(sid, "failed", code="30008"))
        [run] = await finished_runs(client, "whatsapp.delivery")
    assert run["status"] == "failed"
    assert "could not deliver it. (Twilio 30008)" in run["error"]


@pytest.mark.parametrize("status", ["queued", "sent", "delivered", "read"])
async def test_progress_statuses_record_nothing(w, make_client, status):
    async with make_client(send_api_key=True, **w.settings(public_base_url=PUBLIC)) as client:
        sid, _ = await send_one(client)
        response = await post_status(client, status_form(sid, status))
        assert response.status_code == 204
        assert await runs_of(client, "whatsapp.delivery") == []


async def test_a_redelivered_failure_is_recorded_once(w, make_client):
    async with make_client(send_api_key=True, **w.settings(public_base_url=PUBLIC)) as client:
        sid, _ = await send_one(client)
        form = status_form(sid, "undelivered", code="63015")
        responses = await asyncio.gather(*(post_status(client, form) for _ in range(5)))
        await finished_runs(client, "whatsapp.delivery")
        await asyncio.sleep(0.2)
        runs = await runs_of(client, "whatsapp.delivery")
    assert [response.status_code for response in responses] == [204] * 5
    assert len(runs) == 1


async def test_a_bad_signature_is_403_and_records_nothing(w, make_client):
    async with make_client(send_api_key=True, **w.settings(public_base_url=PUBLIC)) as client:
        form = status_form("SM" + "f" * 32, "undelivered", code="63016")
        forged = twilio_signature(f"{PUBLIC}/whatsapp-status", form, token="not-the-auth-token")
        response = await post_status(client, form, signature=forged)
        await asyncio.sleep(0.1)
        assert await runs_of(client, "whatsapp.delivery") == []
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_a_signed_callback_whose_sid_is_not_a_twilio_sid_records_nothing(w, make_client):
    """A captured callback re-cut so that MessageSid swallows the next field keeps its signature (Twilio signs the
    fields run together): it must not pass for another message's status (found by a security review)."""
    async with make_client(send_api_key=True, **w.settings(public_base_url=PUBLIC)) as client:
        form = status_form("SM" + "f" * 32, "undelivered", code="63016")
        re_cut = {**form, "MessageSid": form["MessageSid"] + "MessageStatus" + form["MessageStatus"]}
        del re_cut["MessageStatus"]
        signature = twilio_signature(f"{PUBLIC}/whatsapp-status", form)
        assert twilio_signature(f"{PUBLIC}/whatsapp-status", re_cut) == signature
        response = await post_status(client, re_cut, signature=signature)
        await asyncio.sleep(0.1)
        assert await runs_of(client, "whatsapp.delivery") == []
    assert response.status_code == 204


async def test_no_auth_token_is_503(w, make_client):
    async with make_client(send_api_key=True, **w.settings(public_base_url=PUBLIC, twilio_auth_token=None)) as client:
        response = await post_status(client, status_form("SM" + "e" * 32, "failed"))
    assert response.status_code == 503


async def test_a_callback_that_failed_before_its_run_was_written_is_recorded_by_twilios_retry(
    w, make_client, monkeypatch
):
    """The run itself is the dedupe: nothing is claimed before it exists, so a failed first try is not lost."""
    from core.ledger import Ledger

    real_lookup = Ledger.find_run_by_external_id
    calls = 0

    async def flaky_lookup(self, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("database went away")
        return await real_lookup(self, **kwargs)

    monkeypatch.setattr(Ledger, "find_run_by_external_id", flaky_lookup)
    async with make_client(send_api_key=True, **w.settings(public_base_url=PUBLIC)) as client:
        sid, send_run = await send_one(client)
        form = status_form(sid, "undelivered", code="63016")
        first = await post_status(client, form)
        retry = await post_status(client, form)
        [run] = await finished_runs(client, "whatsapp.delivery")
    assert (first.status_code, retry.status_code) == (500, 204)
    assert run["input_summary"]["send_run_id"] == send_run


async def test_each_failure_status_of_one_message_links_to_the_send_not_to_an_earlier_failure(w, make_client):
    async with make_client(send_api_key=True, **w.settings(public_base_url=PUBLIC)) as client:
        sid, send_run = await send_one(client)
        await post_status(client, status_form(sid, "undelivered", code="63016"))
        await post_status(client, status_form(sid, "failed", code="63016"))
        runs = await finished_runs(client, "whatsapp.delivery", count=2)
    assert sorted(run["input_summary"]["status"] for run in runs) == ["failed", "undelivered"]
    assert [run["input_summary"]["send_run_id"] for run in runs] == [send_run, send_run]


async def test_a_non_ascii_error_code_is_kept_as_unknown_not_a_500(w, make_client):
    async with make_client(send_api_key=True, **w.settings(public_base_url=PUBLIC)) as client:
        sid, _ = await send_one(client)
        response = await post_status(client, status_form(sid, "failed", code="²"))
        [run] = await finished_runs(client, "whatsapp.delivery")
    assert response.status_code == 204
    assert run["input_summary"]["twilio_code"] is None


async def test_a_failure_of_the_last_part_of_a_ten_part_message_links_to_its_send(w, make_client):
    """Ten SIDs (349 characters) no longer fit a 255-character external id: the column is TEXT since 0005."""
    body = " ".join(["word"] * 3_000)  # 14,999 characters: ten parts of at most 1,600
    async with make_client(send_api_key=True, **w.settings(public_base_url=PUBLIC)) as client:
        response = await client.post("/whatsapp-send", json={"to": OWNER, "body": body})
        assert response.status_code == 200, response.text
        sent = response.json()
        assert sent["parts"] == 10
        await post_status(client, status_form(sent["sids"][-1], "undelivered", code="63016"))
        [run] = await finished_runs(client, "whatsapp.delivery")
        send = (await client.get(f"/runs/{sent['run_id']}")).json()
    assert run["input_summary"]["send_run_id"] == sent["run_id"]
    assert send["actions"][0]["external_id"] == ",".join(sent["sids"])
