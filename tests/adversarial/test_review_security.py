"""Security review: each test here failed on the code before the fix it names."""

from __future__ import annotations

import time

import pytest

from workflows.commands import strip_mentions

API_KEY = "review-security-key-0123456789"
#: A name an attacker's DNS answers first with its own server, then with 127.0.0.1 (DNS rebinding): the
#: victim's browser then sends the attacker page's requests to this service, same-origin, with this Host.
REBOUND = "rebind.attacker.example"


@pytest.mark.parametrize("host", [REBOUND, f"{REBOUND}:8000", "127.0.0.1.nip.io", "LOCALHOST.attacker.example."])
async def test_without_a_key_a_page_on_another_name_cannot_use_the_service(make_client, host) -> None:
    """Without APP_API_KEY a loopback service was open to any web page the owner visited: DNS rebinding
    sends the page's requests to 127.0.0.1 with the page's own Host, and a browser then lets the page read
    the answers (GET /runs: recipients, phone numbers, email excerpts) and send email and WhatsApp."""
    async with make_client() as client:
        refused = await client.get("/runs", headers={"Host": host})
        assert refused.status_code == 403, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert "APP_API_KEY" in refused.json()["detail"]
        posted = await client.post("/send-email", headers={"Host": host}, json={"to_address": "a@b.example"})
        assert posted.status_code == 403, posted.text


@pytest.mark.parametrize(
    "host", ["127.0.0.1:8000", "localhost:8000", "[::1]:8000", "192.168.1.20:8000", "app.localhost", "testserver", None]
)
async def test_without_a_key_this_machine_by_address_or_local_name_still_works(make_client, host) -> None:
    async with make_client() as client:
        headers = {"Host": host} if host else {}
        assert (await client.get("/runs", headers=headers)).status_code == 200


async def test_a_name_is_fine_with_the_key_and_for_what_needs_no_key(make_client) -> None:
    async with make_client(app_api_key=API_KEY, send_api_key=True) as client:
        assert (await client.get("/runs", headers={"Host": "abc.ngrok.app"})).status_code == 200
    async with make_client() as client:
        # Nothing there to protect by the Host: /health and /problems, and the webhooks carry signatures.
        assert (await client.get("/health", headers={"Host": REBOUND})).status_code == 200
        assert (await client.get("/problems", headers={"Host": REBOUND})).status_code == 200


def test_slack_mention_stripping_is_linear() -> None:
    """`<@U|<@U|...` (40,000 characters, Slack's longest message) held the event loop for about 2 s: for each
    `<@U|`, `[^>]*` ran to the end of the text before giving up, quadratic in the length. A workspace member
    posting through the API (whose `<` Slack does not escape) could stall every request with a few DMs."""
    text = "<@U|" * 10_000
    started = time.perf_counter()
    strip_mentions(text)
    assert time.perf_counter() - started < 1.0  # linear: about 1 ms; the quadratic pattern took about 2 s
    assert strip_mentions("<@U12AB|ann>: status") == "status"
    assert strip_mentions("<@U12AB> <@U9|x|y> start") == "start"


@pytest.mark.parametrize("host", ["[abc", "[::1", "[", "evil.example]"])
async def test_a_malformed_host_is_refused_not_a_crash(make_client, host) -> None:
    """A Host urlsplit cannot read ("[abc": "Invalid IPv6 URL") was a ValueError inside the check, so a 500."""
    async with make_client() as client:
        response = await client.get("/runs", headers={"Host": host})
    assert response.status_code == 403, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
