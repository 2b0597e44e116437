"""CPU per Claude call through three paths, against the fake vendor on 127.0.0.1: where the SDK's cost lies.

    taskset -c 0 .venv/bin/python -m bench.sdk_cpu [--calls 3000] [--rounds 2]

    raw    a bare aiohttp POST of the Messages API body, answer read with json.loads
    sdk    the service's own ClaudeProvider.generate (AsyncAnthropic on DefaultAioHttpClient)
    post   the same AsyncAnthropic client's lower-level `post("/v1/messages", cast_to=httpx2.Response)`,
           which skips `messages.create`'s argument handling

The fake runs in its own process pinned to CPU 1; calls are sequential (one in flight), so the figure is the
event loop's own CPU per call (`time.process_time`, every thread of this process). Not run by pytest.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import uvloop
from pydantic import SecretStr

from bench.fakes import _free_port
from bench.transports import CLAUDE_MODEL, HEADERS, _claude_request
from services.claude import ClaudeProvider

PATHS = ("raw", "sdk", "post")
TEXT = "Summarise my morning: three meetings, one deep-work block and a call."


async def _cpu_per_call(call: Callable[[], Awaitable[object]], calls: int) -> float:
    for _ in range(200):  # warm-up: connections, caches
        await call()
    started = time.process_time()
    for _ in range(calls):
        await call()
    return (time.process_time() - started) / calls * 1e6


async def _measure(base_url: str, calls: int) -> dict[str, float]:
    import httpx2  # the SDK's own HTTP layer, installed with anthropic

    provider = ClaudeProvider(
        api_key=SecretStr(HEADERS["x-api-key"]), model=CLAUDE_MODEL, base_url=base_url, timeout_seconds=30
    )
    body = _claude_request(TEXT)
    async with aiohttp.ClientSession() as session:

        async def raw() -> object:
            async with session.post(f"{base_url}/v1/messages", json=body, headers=HEADERS) as response:
                return json.loads(await response.read())

        async def sdk() -> object:
            return await provider.generate(text=TEXT, system=None, max_tokens=body["max_tokens"])

        async def post() -> object:
            response = await provider._client.post("/v1/messages", body=body, cast_to=httpx2.Response)
            return json.loads(await response.aread())

        try:
            return {name: await _cpu_per_call(call, calls) for name, call in zip(PATHS, (raw, sdk, post), strict=True)}
        finally:
            await provider.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    port = _free_port()
    fake = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-m", "bench.fakes", "--port", str(port)])
    try:
        time.sleep(1.5)  # the fake binds its port
        for round_ in range(1, args.rounds + 1):
            results = uvloop.run(_measure(f"http://127.0.0.1:{port}", args.calls))
            print(f"round {round_}: " + ", ".join(f"{name} {cpu:.0f} us CPU/call" for name, cpu in results.items()))
    finally:
        fake.terminate()
        fake.wait()


if __name__ == "__main__":
    main()
