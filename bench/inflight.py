"""Keep N slow actions in flight against the service (email, Slack, LLM in turn) until stopped.

    python -m bench.inflight --url http://127.0.0.1:9210 --key KEY --inflight 200 --seconds 30
    python -m bench.inflight --url http://127.0.0.1:9211 --llm-only ...   # LLM calls only (a passthrough has no other)

Prints one JSON line at the end: completed, failed (by status), and the
smallest number in flight seen after the ramp-up.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from collections import Counter

import httpx

ACTIONS = [
    ("/send-email", {"to_address": "ann@example.com", "subject": "Bench", "body": "Slow relay test."}),
    ("/slack-notify", {"message": "Bench message", "channel": "#general"}),
    ("/ai-process", {"text": "Summarise my day", "provider": "claude"}),
]


async def main(url: str, key: str, inflight: int, seconds: float, *, llm_only: bool = False) -> None:
    statuses: Counter[str] = Counter()
    in_flight = 0
    min_in_flight_after_ramp: int | None = None
    started = time.monotonic()
    deadline = started + seconds
    cycle = itertools.cycle([action for action in ACTIONS if action[0] == "/ai-process"] if llm_only else ACTIONS)
    limits = httpx.Limits(max_connections=inflight + 10, max_keepalive_connections=inflight + 10)

    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": key}, limits=limits, timeout=60) as client:

        async def worker() -> None:
            nonlocal in_flight
            while time.monotonic() < deadline:
                path, body = next(cycle)
                in_flight += 1
                try:
                    response = await client.post(path, json=body)
                    statuses[f"{path} {response.status_code}"] += 1
                except httpx.HTTPError as exc:
                    statuses[f"{path} {type(exc).__name__}"] += 1
                finally:
                    in_flight -= 1

        async def watch() -> None:
            nonlocal min_in_flight_after_ramp
            await asyncio.sleep(3)  # ramp-up
            while time.monotonic() < deadline - 2.5:
                if min_in_flight_after_ramp is None or in_flight < min_in_flight_after_ramp:
                    min_in_flight_after_ramp = in_flight
                await asyncio.sleep(0.05)

        await asyncio.gather(watch(), *(worker() for _ in range(inflight)))
    print(json.dumps({"statuses": dict(statuses), "min_in_flight_after_ramp": min_in_flight_after_ramp}), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--inflight", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--llm-only", action="store_true", help="only /ai-process (what a passthrough answers)")
    args = parser.parse_args()
    asyncio.run(main(args.url, args.key, args.inflight, args.seconds, llm_only=args.llm_only))
