async def test_health_with_no_configuration(client):
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"] == "ok"
    assert set(body["integrations"]) == {"gemini", "claude", "local", "slack", "toggl", "email", "whatsapp"}
    assert not any(item["configured"] for item in body["integrations"].values())


async def test_fake_upstream_records_requests():
    import httpx

    from tests.fakes.server import FakeUpstream, Reply

    async with FakeUpstream() as fake:
        fake.route("POST", "/echo", lambda req: Reply(json={"got": req.json}))
        fake.queue("POST", "/echo", Reply(429, json={"error": "slow down"}, headers={"Retry-After": "1"}))
        async with httpx.AsyncClient(base_url=fake.url) as http:
            first = await http.post("/echo", json={"a": 1})
            second = await http.post("/echo", json={"a": 2})
    assert (first.status_code, first.headers["retry-after"]) == (429, "1")
    assert second.json() == {"got": {"a": 2}}
    assert [r.json for r in fake.calls("POST", "/echo")] == [{"a": 1}, {"a": 2}]
