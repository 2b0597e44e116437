"""The README's "Trying a webhook without Twilio or Slack" snippet is run, not only read: as first written it used
a MessageSid the webhook ignores, so whoever followed it got an empty <Response/> and no reply (found by a docs
audit)."""

from __future__ import annotations

import asyncio
import re
import textwrap
from pathlib import Path
from xml.etree import ElementTree

import httpx

from tests.workflows.world import TWILIO_TOKEN, world

README = Path(__file__).resolve().parents[2] / "README.md"


def _snippet() -> str:
    text = README.read_text()
    section = text[text.index("**Trying a webhook without Twilio or Slack.**") :]
    [code] = re.findall(r"<<'PY'\n(.*?)\n\s*PY\n", section, re.DOTALL)[:1]
    return textwrap.dedent(code)


async def test_the_readme_whatsapp_snippet_gets_a_reply_every_time(make_client, monkeypatch):
    sender = re.search(r'"From": "whatsapp:(\+\d+)"', _snippet()).group(1)  # in WHATSAPP_ALLOWED_SENDERS, it says
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", TWILIO_TOKEN)  # the snippet reads it with Settings(), as from .env
    loop = asyncio.get_running_loop()
    printed: list[str] = []
    async with (
        world() as w,
        make_client(**w.settings(public_base_url="http://localhost:8000", whatsapp_allowed_senders=sender)) as client,
    ):

        def post(url: str, *, data: dict[str, str], headers: dict[str, str]) -> httpx.Response:
            assert url == "http://localhost:8000/whatsapp-webhook"
            sent = client.post("/whatsapp-webhook", data=data, headers=headers)
            return asyncio.run_coroutine_threadsafe(sent, loop).result(timeout=10)

        monkeypatch.setattr(httpx, "post", post)
        for _ in range(2):  # run twice, as a reader would: each run must be a new message
            code = compile(_snippet(), str(README), "exec")
            await asyncio.to_thread(exec, code, {"print": printed.append})
    replies = [[m.text for m in ElementTree.fromstring(answer).findall("Message")] for answer in printed]
    assert [len(reply) for reply in replies] == [1, 1], printed
    assert all(reply[0] == "No timer is running." for reply in replies), replies
