"""Request log lines, JSON format, and secrets that never reach logs or error bodies."""

from __future__ import annotations

import json

SECRETS = {
    "app_api_key": "app-key-0123456789",
    "slack_bot_token": "xoxb-log-secret-token",
    "slack_signing_secret": "slack-signing-secret-abc",
    "toggl_api_token": "toggl-log-secret-token",
    "smtp_password": "smtp-log-secret-password",
    "twilio_auth_token": "twilio-log-secret-token",
    "gemini_api_key": "gemini-log-secret-key",
    "anthropic_api_key": "anthropic-log-secret-key",
}


async def test_one_json_line_per_request(make_client, capsys):
    async with make_client(log_format="json") as client:
        await client.get("/health", headers={"X-Request-ID": "req-json-1"})
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "orchestrator.access"]
    assert len(access) == 1
    entry = access[0]
    assert entry["method"] == "GET" and entry["path"] == "/health" and entry["status"] == 200
    assert entry["request_id"] == "req-json-1" and entry["duration_ms"] >= 0


async def test_secrets_never_appear_in_logs_or_error_bodies(make_client, capsys):
    async with make_client(log_level="DEBUG", smtp_user="me@example.com", **SECRETS) as client:

        async def leak():
            # A bug that puts a secret into an exception message must still not leak it.
            raise RuntimeError(f"upstream said: bad token {SECRETS['slack_bot_token']}")

        client.app.add_api_route("/leak", leak)
        bodies = [
            (await client.get("/runs")).text,  # 401 without key
            (await client.get("/runs", headers={"X-API-Key": "wrong"})).text,
            (await client.get("/health")).text,
            (await client.get("/leak")).text,
            (await client.get("/runs", headers={"Authorization": f"Bearer {SECRETS['app_api_key']}"})).text,
        ]
    logged = capsys.readouterr().err
    assert "upstream said: bad token ***" in logged  # the scrubber ran on the traceback
    for secret in SECRETS.values():
        assert secret not in logged, secret
        for body in bodies:
            assert secret not in body, secret


def test_http_client_libraries_do_not_log_every_upstream_call_at_info():
    """httpx2 (inside the Anthropic SDK) logs each request at INFO; at the service's INFO level it must stay quiet."""
    import logging

    from core.log import configure_logging

    configure_logging(level="INFO", fmt="json", secrets=[])
    for name in ("httpx", "httpx2", "httpcore", "anthropic"):
        assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
    configure_logging(level="DEBUG", fmt="json", secrets=[])
    assert not logging.getLogger("httpx2").isEnabledFor(logging.INFO)  # still WARNING: DEBUG is for our own lines
    configure_logging(level="INFO", fmt="json", secrets=[])


async def test_base64_credentials_never_appear_in_logs_or_error_bodies(make_client, capsys):
    """A traceback quoting the Basic header the service sent (base64 of `token:api_token`) is scrubbed too."""
    import base64

    token = SECRETS["toggl_api_token"]
    basic = base64.b64encode(f"{token}:api_token".encode()).decode()
    async with make_client(toggl_api_token=token) as client:

        async def leak():
            raise RuntimeError(f"upstream echoed Authorization: Basic {basic}")

        client.app.add_api_route("/leak", leak)
        body = (await client.get("/leak")).text
    logged = capsys.readouterr().err
    assert "upstream echoed Authorization: Basic ***" in logged and "Basic ***=" not in logged
    for form in (basic, basic.rstrip("="), token):
        assert form not in logged and form not in body, form


async def test_a_path_cannot_forge_log_lines_in_text_format(make_client, capsys):
    """Found by a black-box review: `GET /x%0a<timestamp> CRITICAL ...` wrote a forged line into the log."""
    forged = "2026-11-25 23:59:59,000 CRITICAL orchestrator [-] forged by anonymous"
    async with make_client(log_format="text") as client:
        capsys.readouterr()
        response = await client.get("/x%0a" + forged.replace(" ", "%20") + "%00%e2%80%a8end")
    assert response.status_code == 404
    lines = capsys.readouterr().err.splitlines()
    [access] = [line for line in lines if "orchestrator.access" in line]
    assert "GET /x\\n2026-11-25 23:59:59,000 CRITICAL" in access and "\\x00\\u2028end 404" in access
    assert not [line for line in lines if line.startswith("2026-11-25 23:59:59,000 CRITICAL")]
