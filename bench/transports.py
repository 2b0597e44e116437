"""Which HTTP transport should the LLM providers use? Measure it.

The same FastAPI passthrough (parse `{"text"}`, call the LLM, answer JSON) in
six variants, each forwarding to the same fake vendor server (bench/fakes.py)
on 127.0.0.1:

    httpx              shared httpx.AsyncClient, Anthropic-shaped POST by hand
    aiohttp            shared aiohttp.ClientSession, the same POST by hand
    anthropic-httpx    services.claude.ClaudeProvider on anthropic's httpx transport
    anthropic-aiohttp  services.claude.ClaudeProvider on DefaultAioHttpClient
    genai-httpx        services.gemini.GeminiProvider with HttpOptions(httpx_async_client=...)
    genai-aiohttp      services.gemini.GeminiProvider with HttpOptions(aiohttp_client=...)

The SDK variants run the service's own provider classes, so the numbers are
what the service gets. Each app is one uvicorn worker pinned to CPU 0; wrk
(1 thread, 16 connections) and the fake upstream share CPU 1.

    .venv/bin/python -m bench.transports                 # all variants, 10 s each
    .venv/bin/python -m bench.transports --duration 5 --only genai-httpx genai-aiohttp

Not run by pytest. Needs `wrk` and `taskset` on PATH and at least 2 CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from fastapi import FastAPI
from pydantic import BaseModel, SecretStr

VARIANTS = ("httpx", "aiohttp", "anthropic-httpx", "anthropic-aiohttp", "genai-httpx", "genai-aiohttp")
CLAUDE_MODEL = "claude-haiku-4-5"
GEMINI_MODEL = "gemini-3.8-flash"
HEADERS = {"x-api-key": "fake-anthropic-key", "anthropic-version": "2023-06-01"}
ROOT = Path(__file__).resolve().parent.parent

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{"text": "Summarise my morning: three meetings, one deep-work block and a call."}'
wrk.headers["Content-Type"] = "application/json"
function done(summary, latency, requests)
  io.write(string.format('{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "errors": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.timeout))
end
"""


class Prompt(BaseModel):
    text: str


Generate = Callable[[str], Awaitable[dict[str, Any]]]


def _claude_request(text: str) -> dict[str, Any]:
    return {"model": CLAUDE_MODEL, "max_tokens": 1024, "messages": [{"role": "user", "content": text}]}


async def _open_variant(variant: str, upstream: str, stack: AsyncExitStack) -> Generate:
    """The one call each variant makes per request, with its clients registered on `stack`."""
    if variant == "httpx":
        client = await stack.enter_async_context(
            httpx.AsyncClient(base_url=upstream, timeout=30, limits=httpx.Limits(max_connections=100))
        )

        async def via_httpx(text: str) -> dict[str, Any]:
            reply = (await client.post("/v1/messages", json=_claude_request(text), headers=HEADERS)).json()
            return {"text": reply["content"][0]["text"], "model": reply["model"]}

        return via_httpx

    if variant == "aiohttp":
        session = await stack.enter_async_context(aiohttp.ClientSession(base_url=upstream))

        async def via_aiohttp(text: str) -> dict[str, Any]:
            async with session.post("/v1/messages", json=_claude_request(text), headers=HEADERS) as response:
                reply = await response.json()
            return {"text": reply["content"][0]["text"], "model": reply["model"]}

        return via_aiohttp

    from services.claude import ClaudeProvider
    from services.gemini import GeminiProvider

    if variant.startswith("anthropic-"):
        claude = ClaudeProvider(
            api_key=SecretStr("fake-anthropic-key"),
            model=CLAUDE_MODEL,
            base_url=upstream,
            timeout_seconds=30,
            aiohttp_transport=variant == "anthropic-aiohttp",
        )
        stack.push_async_callback(claude.aclose)
        provider: Any = claude
    else:
        session = None
        http = None
        if variant == "genai-aiohttp":
            session = await stack.enter_async_context(aiohttp.ClientSession())
        else:
            http = await stack.enter_async_context(httpx.AsyncClient(limits=httpx.Limits(max_connections=100)))
        gemini = GeminiProvider(
            api_key=SecretStr("fake-gemini-key"),
            model=GEMINI_MODEL,
            base_url=upstream,
            timeout_seconds=30,
            session=session,
            http=http,
        )
        stack.push_async_callback(gemini.aclose)
        provider = gemini

    async def via_provider(text: str) -> dict[str, Any]:
        completion = await provider.generate(text=text, system=None, max_tokens=1024)
        return {"text": completion.text, "model": completion.model}

    return via_provider


def app_factory() -> FastAPI:
    """`uvicorn --factory bench.transports:app_factory` with BENCH_VARIANT and BENCH_UPSTREAM set."""
    variant = os.environ["BENCH_VARIANT"]
    upstream = os.environ["BENCH_UPSTREAM"]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            app.state.generate = await _open_variant(variant, upstream, stack)
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/pass")
    async def passthrough(prompt: Prompt) -> dict[str, Any]:
        return await app.state.generate(prompt.text)

    return app


# --- The harness ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def _check_once(port: int) -> None:
    """One request before measuring, so a broken variant fails loudly instead of benchmarking errors."""
    with httpx.Client() as client:
        response = client.post(f"http://127.0.0.1:{port}/pass", json={"text": "check"}, timeout=10)
    response.raise_for_status()


def _run_wrk(port: int, script: Path, *, duration: int, connections: int, cpu: str) -> dict[str, Any]:
    command = [
        "taskset",
        "-c",
        cpu,
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}/pass",
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    result = json.loads(next(line for line in output.splitlines() if line.startswith("{")))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def _machine() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus": str(os.cpu_count()),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "packages": ", ".join(
            f"{name} {version(name)}"
            for name in ("fastapi", "uvicorn", "httpx", "aiohttp", "anthropic", "google-genai", "uvloop")
        ),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per variant")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per variant")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1, help="measure every variant this many times")
    parser.add_argument("--only", nargs="*", choices=VARIANTS, default=list(VARIANTS))
    args = parser.parse_args(argv)

    python = sys.executable
    upstream_port = _free_port()
    upstream = subprocess.Popen(
        ["taskset", "-c", "1", python, "-m", "bench.fakes", "--port", str(upstream_port)], cwd=ROOT
    )
    results: dict[str, list[dict[str, Any]]] = {variant: [] for variant in args.only}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "transports.lua"
        script.write_text(WRK_SCRIPT)
        try:
            _wait_for_port(upstream_port)
            for _ in range(args.rounds):
                for variant in args.only:
                    results[variant].append(_measure(variant, upstream_port, script, args, python))
        finally:
            upstream.terminate()
            upstream.wait(timeout=10)
    _report(results, args)


def _measure(variant: str, upstream_port: int, script: Path, args: argparse.Namespace, python: str) -> dict[str, Any]:
    port = _free_port()
    env = {**os.environ, "BENCH_VARIANT": variant, "BENCH_UPSTREAM": f"http://127.0.0.1:{upstream_port}"}
    # One worker on one core; uvicorn[standard] brings uvloop and httptools, as in production.
    server = subprocess.Popen(
        [
            "taskset",
            "-c",
            "0",
            python,
            "-m",
            "uvicorn",
            "--factory",
            "bench.transports:app_factory",
            "--port",
            str(port),
            "--workers",
            "1",
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
    )
    try:
        _wait_for_port(port)
        _check_once(port)
        if args.warmup:
            _run_wrk(port, script, duration=args.warmup, connections=args.connections, cpu="1")
        result = _run_wrk(port, script, duration=args.duration, connections=args.connections, cpu="1")
        print(f"{variant:18} {result['rps']:8.0f} req/s  p50 {result['p50_us'] / 1000:6.1f} ms", file=sys.stderr)
        return result
    finally:
        server.terminate()
        server.wait(timeout=10)


def _report(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    machine = _machine()
    print(f"\nMachine: {machine['cpu']}, {machine['cpus']} CPUs, {machine['os']}, Python {machine['python']}")
    print(f"Packages: {machine['packages']}")
    print(
        f"One uvicorn worker pinned to CPU 0; wrk -t1 -c{args.connections} -d{args.duration}s and the fake "
        f"upstream on CPU 1; best of {args.rounds} round(s).\n"
    )
    print("| Passthrough | Requests per second (best) | p50 latency (best run) | Every round, req/s | Errors |")
    print("|---|---:|---:|---|---:|")
    for variant, runs in results.items():
        best = max(runs, key=lambda run: run["rps"])
        rounds = " / ".join(f"{run['rps']:,.0f}" for run in runs)
        errors = sum(run["errors"] for run in runs)
        print(f"| {variant} | {best['rps']:,.0f} | {best['p50_us'] / 1000:.1f} ms | {rounds} | {errors} |")


if __name__ == "__main__":
    main()
