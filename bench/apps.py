"""Reference apps for the benchmark, each forwarding to the same fake LLM as the service.

- `httpx_app`: bare FastAPI passthrough with one shared httpx.AsyncClient (what the service uses).
- `aiohttp_app`: bare FastAPI passthrough with one shared aiohttp.ClientSession (the ceiling for a Python hop).
- `hello_app`: bare FastAPI hello world (the ceiling for any endpoint, for the webhook comparison).

`aiohttp_app` also answers `GET /health` with a constant, so measurement 2 can ask the same question of the
ceiling that it asks of the service: how much does a health probe wait while 200 slow LLM calls are in flight?

    BENCH_UPSTREAM=http://127.0.0.1:9000 uvicorn bench.apps:httpx_app --port 9101

They do the least a passthrough must: parse the JSON body, send the provider
request, read the provider JSON, answer JSON. No auth, no ledger, no retries.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import httpx
from fastapi import FastAPI, Request
from pydantic import BaseModel

UPSTREAM = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:9000")
MODEL = "claude-haiku-4-5"
HEADERS = {"x-api-key": "fake-anthropic-key", "anthropic-version": "2023-06-01"}


class Prompt(BaseModel):
    text: str


def _provider_request(prompt: Prompt) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 1024, "messages": [{"role": "user", "content": prompt.text}]}


def _answer(reply: dict[str, Any]) -> dict[str, Any]:
    return {"text": reply["content"][0]["text"], "model": reply["model"]}


@asynccontextmanager
async def _httpx_lifespan(app: FastAPI) -> AsyncIterator[None]:
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=50)
    async with httpx.AsyncClient(base_url=UPSTREAM, limits=limits, timeout=30) as client:
        app.state.client = client
        yield


httpx_app = FastAPI(lifespan=_httpx_lifespan)


@httpx_app.post("/ai-process")
async def httpx_passthrough(prompt: Prompt, request: Request) -> dict[str, Any]:
    client: httpx.AsyncClient = request.app.state.client
    response = await client.post("/v1/messages", json=_provider_request(prompt), headers=HEADERS)
    response.raise_for_status()
    return _answer(response.json())


@asynccontextmanager
async def _aiohttp_lifespan(app: FastAPI) -> AsyncIterator[None]:
    # 100 for measurement 1 (as httpx_app); measurement 2 raises it so 200 slow calls are all at the fake at once.
    connector = aiohttp.TCPConnector(limit=int(os.environ.get("BENCH_UPSTREAM_CONNECTIONS", "100")))
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(base_url=UPSTREAM, connector=connector, timeout=timeout) as session:
        app.state.session = session
        yield


aiohttp_app = FastAPI(lifespan=_aiohttp_lifespan)


@aiohttp_app.post("/ai-process")
async def aiohttp_passthrough(prompt: Prompt, request: Request) -> dict[str, Any]:
    session: aiohttp.ClientSession = request.app.state.session
    async with session.post("/v1/messages", json=_provider_request(prompt), headers=HEADERS) as response:
        response.raise_for_status()
        return _answer(await response.json())


@aiohttp_app.get("/health")
async def aiohttp_health() -> dict[str, str]:
    return {"status": "ok"}


hello_app = FastAPI()


@hello_app.post("/hello")
@hello_app.get("/hello")
async def hello() -> dict[str, str]:
    return {"hello": "world"}
