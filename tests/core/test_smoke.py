async def test_health_with_no_configuration(client):
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"] == "ok"
    assert set(body["integrations"]) == {"gemini", "claude", "slack", "toggl", "email", "whatsapp"}
    assert not any(item["configured"] for item in body["integrations"].values())
