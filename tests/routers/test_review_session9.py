"""Findings of review session 9 (the run-kind enum, Twilio webhooks), each with the test that shows it."""

from __future__ import annotations

import ast

import pytest

from core.secrets import without_credentials
from tests.routers.test_runs_kind_filter import _kind_arguments
from tests.workflows.world import post_whatsapp, whatsapp_form, world


def test_the_run_kind_check_sees_a_kind_handed_positionally_to_a_helper_that_records_the_run():
    """`send_chat_reply(ledger, RunKind.SLACK_REPLY, ...)` records the Slack thread reply. The check that every
    RunKind member is recorded somewhere read only `kind=` and a fixed list of names, missed it, and failed on
    main: `slack.reply` looked recorded nowhere."""
    passed = {ast.unparse(kind) for _where, kind, _function in _kind_arguments() if kind is not None}

    assert "RunKind.SLACK_REPLY" in passed
    assert "RunKind.WHATSAPP_REPLY" in passed


@pytest.fixture
async def w():
    async with world() as fakes:
        yield fakes


@pytest.mark.parametrize("path", ["/whatsapp-webhook", "/whatsapp-status"])
@pytest.mark.parametrize(
    ("overrides", "headers"),
    [
        ({}, {"Host": "testserver:abc"}),
        ({"trust_proxy_headers": True}, {"X-Forwarded-Host": "example.com:abc"}),
        ({"trust_proxy_headers": True}, {"X-Forwarded-Host": "[abc"}),
    ],
    ids=["host-port-not-a-number", "forwarded-port-not-a-number", "forwarded-host-unreadable"],
)
async def test_a_webhook_addressed_to_a_host_no_url_can_carry_is_a_403_not_a_500(
    w, make_client, caplog, path, overrides, headers
):
    """Without PUBLIC_BASE_URL the URL checked is the request's own: a Host (or trusted X-Forwarded-Host) whose
    port is not a number made twilio's validator raise ValueError, and anyone's unsigned POST got a 500."""
    form = whatsapp_form("stop")
    async with make_client(**w.settings(**overrides)) as client:
        response = await post_whatsapp(client, form, path=path, headers=headers, signature="bm90IGEgc2lnbmF0dXJl")
        runs = (await client.get("/runs")).json()["items"]

    assert response.status_code == 403, response.text
    assert response.json()["type"] == "/problems/forbidden"
    assert "X-Twilio-Signature is missing or does not match" in response.json()["detail"]
    assert runs == [] and w.toggl.stops == [] and w.twilio.sent == []
    assert any("rejected a whatsapp" in record.getMessage() for record in caplog.records)


def test_a_url_that_cannot_be_split_is_printed_as_a_placeholder():
    assert without_credentials("http://[abc/whatsapp-webhook") == "(a URL that cannot be read)"
    assert without_credentials("https://user:pw@host:8443/p?key=k#f") == "https://host:8443/p"
