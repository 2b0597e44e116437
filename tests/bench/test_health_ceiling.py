"""Measurement 2's ceiling: the bare aiohttp passthrough answers /health and can hold 200 slow calls at the fake at
once, and the in-flight driver can keep only LLM calls in flight (the one action a passthrough has)."""

from __future__ import annotations

import httpx
import respx

from bench import inflight
from bench.apps import aiohttp_app


async def test_the_aiohttp_passthrough_answers_health():
    transport = httpx.ASGITransport(app=aiohttp_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://passthrough") as client:
        response = await client.get("/health")

    assert (response.status_code, response.json()) == (200, {"status": "ok"})


async def test_the_passthroughs_upstream_connections_follow_the_setting(monkeypatch):
    monkeypatch.setenv("BENCH_UPSTREAM_CONNECTIONS", "300")
    async with aiohttp_app.router.lifespan_context(aiohttp_app):
        assert aiohttp_app.state.session.connector.limit == 300
    monkeypatch.delenv("BENCH_UPSTREAM_CONNECTIONS")
    async with aiohttp_app.router.lifespan_context(aiohttp_app):
        assert aiohttp_app.state.session.connector.limit == 100  # measurement 1, as the httpx passthrough


@respx.mock
async def test_llm_only_keeps_only_llm_calls_in_flight(capsys):
    routes = {path: respx.post(f"http://svc{path}").respond(200, json={}) for path, _ in inflight.ACTIONS}

    await inflight.main("http://svc", "key", inflight=3, seconds=0.2, llm_only=True)

    assert routes["/ai-process"].call_count > 0
    assert all(route.call_count == 0 for path, route in routes.items() if path != "/ai-process")
    assert routes["/ai-process"].calls.last.request.headers["X-API-Key"] == "key"


@respx.mock
async def test_without_llm_only_every_action_takes_its_turn(capsys):
    routes = {path: respx.post(f"http://svc{path}").respond(200, json={}) for path, _ in inflight.ACTIONS}

    await inflight.main("http://svc", "key", inflight=3, seconds=0.2)

    assert all(route.call_count > 0 for route in routes.values())
