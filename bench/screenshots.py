"""Real screenshots of the running service with headless Chromium (Debian's `chromium` package).

    python -m bench.screenshots    # docs/img/swagger-ui.png, runs-ledger.png (GET /runs), run-detail.png

What it does, in order:
1. starts the vendor fakes and the service (no APP_API_KEY, so a browser can open /runs),
2. fills the ledger with real runs: an LLM call and a Toggl timer against the fakes, and dry runs
   of Slack, WhatsApp, email and the morning briefing,
3. takes the screenshots.

The service serves Swagger UI's files itself (fastapi-offline), and Chromium runs with every host but
127.0.0.1 unresolvable, so the /docs screenshot also shows that the page needs no CDN and no internet.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from bench.run import Bench

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "img"


def _populate(url: str) -> list[str]:
    """Real runs in the ledger: two against the fakes, the rest dry runs."""
    calls = [
        ("/ai-process", {"text": "Plan my morning in three bullet points.", "provider": "claude"}, False),
        ("/start-timer", {"task_name": "Deep Work", "duration_minutes": 90}, False),
        ("/slack-notify", {"message": "Deploy finished :rocket:", "channel": "#general"}, True),
        ("/whatsapp-send", {"to": "+15551234567", "body": "Standup in 5 minutes"}, True),
        (
            "/send-email",
            {"to_address": "ann@example.com", "subject": "Daily plan", "body": "Deep work 9-10:30."},
            True,
        ),
        ("/morning-briefing", {"channel": "#daily"}, True),
    ]
    done = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for path, body, dry_run in calls:
            response = client.post(path, json=body, params={"dry_run": "true"} if dry_run else None)
            done.append(f"{path} -> {response.status_code}")
    return done


def _chromium(url: str, out: Path, *, size: str) -> None:
    profile = tempfile.mkdtemp(prefix="chromium-")
    argv = [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={size}",
        "--virtual-time-budget=15000",  # let Swagger UI fetch and render the schema before the shot
        f"--screenshot={out}",
        # Only the service: a page that still reached for a CDN would render blank.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ]
    try:
        subprocess.run([*argv, url], check=True, capture_output=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="shots-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        bench = Bench(duration=0, workdir=workdir, stack=stack)
        fake_url, smtp_port = bench.fakes("fakes", {})
        _, url, _ = bench.service("service", fake_url, smtp_port, APP_API_KEY="", LOG_LEVEL="WARNING")
        print("\n".join(_populate(url)))
        _chromium(url + "/docs", IMAGES / "swagger-ui.png", size="1280,1500")
        _chromium(url + "/runs?limit=6", IMAGES / "runs-ledger.png", size="1100,420")
        with httpx.Client(base_url=url) as client:
            runs = client.get("/runs", params={"limit": 50}).json()
        briefing = next(run["id"] for run in runs["items"] if run["kind"] == "briefing")
        # One run with its actions: the briefing's three steps, each with the exact request it would send.
        _chromium(url + f"/runs/{briefing}", IMAGES / "run-detail.png", size="1100,560")
        print(json.dumps({"runs": runs["total"], "kinds": sorted({r["kind"] for r in runs["items"]})}))
        time.sleep(0.1)
    print(f"wrote swagger-ui.png, runs-ledger.png and run-detail.png in {IMAGES}")


if __name__ == "__main__":
    main()
