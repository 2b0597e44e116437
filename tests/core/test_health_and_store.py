"""Health with the database up and down; migrations on empty and existing databases."""

from __future__ import annotations

import sqlalchemy as sa

from core.store import create_engine, current_revision, migrate


async def test_health_lists_integrations_without_secret_values(make_client):
    secrets = {"slack_bot_token": "xoxb-health-secret", "gemini_api_key": "gemini-health-secret"}
    async with make_client(**secrets, slack_default_channel="#general") as client:
        response = await client.get("/health")
    body = response.json()
    assert response.status_code == 200
    assert body["integrations"]["slack"]["configured"] is True
    assert body["integrations"]["gemini"]["configured"] is True
    assert body["integrations"]["toggl"] == {
        "configured": False,
        "kind": "skill",
        "missing_settings": ["TOGGL_API_TOKEN"],
        "advice": [],
    }
    assert body["integrations"]["email"]["missing_settings"] == ["SMTP_HOST", "SMTP_FROM"]
    for secret in secrets.values():
        assert secret not in response.text


async def test_health_and_the_webhooks_name_the_same_settings(make_client):
    """Found by a black-box review: /health said the WhatsApp webhook was not configured (no account SID, no
    PUBLIC_BASE_URL) while it served, and with nothing set each webhook's 503 named fewer variables."""
    async with make_client(twilio_auth_token="t" * 32, slack_signing_secret="s" * 32) as client:
        health = (await client.get("/health")).json()["integrations"]
        whatsapp = await client.post("/whatsapp-webhook", content=b"Body=help", headers=FORM)
        slack = await client.post("/slack/events", content=b"{}", headers={"Content-Type": "application/json"})
    assert health["whatsapp_webhook"]["missing_settings"] == ["TWILIO_ACCOUNT_SID"]
    assert health["whatsapp_webhook"]["advice"][0].startswith("Behind ngrok or another proxy, set PUBLIC_BASE_URL")
    assert whatsapp.status_code == 503 and whatsapp.json()["missing_settings"] == ["TWILIO_ACCOUNT_SID"]
    assert health["slack_events"]["missing_settings"] == ["SLACK_BOT_TOKEN"]
    assert slack.status_code == 503 and slack.json()["missing_settings"] == ["SLACK_BOT_TOKEN"]


async def test_the_webhooks_with_nothing_set_name_what_health_names(make_client):
    async with make_client() as client:
        health = (await client.get("/health")).json()["integrations"]
        whatsapp = await client.post("/whatsapp-webhook", content=b"Body=help", headers=FORM)
        slack = await client.post("/slack/events", content=b"{}", headers={"Content-Type": "application/json"})
    assert whatsapp.json()["missing_settings"] == health["whatsapp_webhook"]["missing_settings"]
    assert whatsapp.json()["missing_settings"] == ["TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"]
    assert slack.json()["missing_settings"] == health["slack_events"]["missing_settings"]
    assert slack.json()["missing_settings"] == ["SLACK_SIGNING_SECRET", "SLACK_BOT_TOKEN"]


async def test_health_gives_no_proxy_advice_once_the_public_url_is_set(make_client):
    async with make_client(
        public_base_url="https://abc.ngrok.app",
        app_api_key="k-public-url-0000",
        whatsapp_allowed_senders="+15551234567",
    ) as client:
        health = (await client.get("/health")).json()["integrations"]
    assert health["whatsapp_webhook"]["advice"] == []


FORM = {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": "x"}


async def test_head_health_answers_like_get_without_a_body_and_without_the_key(make_client):
    """Uptime monitors probe with HEAD; it was a 405 (found by a black-box review)."""
    async with make_client(app_api_key="k-health") as client:
        head = await client.head("/health")
        get = await client.get("/health")
        schema = (await client.get("/openapi.json", headers={"X-API-Key": "k-health"})).json()
    assert head.status_code == get.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == get.headers["content-length"]
    assert list(schema["paths"]["/health"]) == ["get"]


async def test_health_is_503_degraded_when_the_database_is_unreachable(client):
    resources = client.app.state.resources
    healthy_engine = resources.engine
    # A real, unreachable database: nothing listens on port 1.
    resources.engine = create_engine("postgresql+asyncpg://user:pw@127.0.0.1:1/none")
    try:
        response = await client.get("/health")
    finally:
        await resources.engine.dispose()
        resources.engine = healthy_engine
    assert response.status_code == 503
    assert response.json()["status"] == "degraded"
    assert response.json()["database"] == "error"


async def test_database_directory_and_file_are_created(tmp_path, make_client):
    url = f"sqlite+aiosqlite:///{tmp_path}/nested/dir/app.db"
    async with make_client(database_url=url) as client:
        assert (await client.get("/health")).json()["database"] == "ok"
    assert (tmp_path / "nested" / "dir" / "app.db").exists()


async def test_migrations_on_an_empty_database(tmp_path):
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/empty.db")
    try:
        assert await current_revision(engine) is None
        await migrate(engine)
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda sync: set(sa.inspect(sync).get_table_names()))
        assert {"runs", "actions", "idempotency_keys", "alembic_version"} <= tables
        head = await current_revision(engine)
        await migrate(engine)  # idempotent
        assert await current_revision(engine) == head
    finally:
        await engine.dispose()


async def test_upgrade_keeps_existing_data(tmp_path, make_client):
    url = f"sqlite+aiosqlite:///{tmp_path}/old.db"
    engine = create_engine(url)
    try:
        await migrate(engine, "0001")
        async with engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "INSERT INTO runs (id, kind, trigger, status, created_at, input_summary) "
                    "VALUES ('old-run', 'slack.notify', 'api', 'ok', '2026-01-01 08:00:00', '{}')"
                )
            )
            # Migration 0005 copies the actions table on SQLite (batch mode): its rows must survive.
            await conn.execute(
                sa.text(
                    "INSERT INTO actions (run_id, skill, operation, status, external_id, attempts, duration_ms, "
                    "created_at) VALUES ('old-run', 'slack', 'post_message', 'ok', '1767254400.000100', 1, 12, "
                    "'2026-01-01 08:00:00')"
                )
            )
    finally:
        await engine.dispose()

    async with make_client(database_url=url) as client:  # start-up migrates to head
        response = await client.get("/runs/old-run")
        assert response.status_code == 200
        assert response.json()["kind"] == "slack.notify"
        assert response.json()["created_at"].startswith("2026-01-01T08:00:00")
        [action] = response.json()["actions"]
        assert (action["skill"], action["external_id"], action["duration_ms"]) == ("slack", "1767254400.000100", 12)
        assert await current_revision(client.app.state.resources.engine) != "0001"


async def test_migrations_match_the_models(tmp_path):
    """Alembic's autogenerate finds nothing to add: every model, column and index has its migration."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from core.store import Base

    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/compare.db")
    try:
        await migrate(engine)
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"compare_type": True}), Base.metadata
                )
            )
    finally:
        await engine.dispose()
    assert diff == []


async def test_idempotency_keys_stored_before_the_one_scope_are_still_replayed(tmp_path, make_client):
    """Found by a review: keys became one scope ("*") with no migration, so a key stored per endpoint before the
    upgrade and retried after it ran its action a second time."""
    url = f"sqlite+aiosqlite:///{tmp_path}/old.db"
    slack = {"database_url": url, "slack_bot_token": "xoxb-1", "slack_default_channel": "#general"}

    def send(client, key):
        return client.post("/slack-notify?dry_run=true", json={"message": "hi"}, headers={"Idempotency-Key": key})

    async with make_client(**slack) as client:
        first = await send(client, "before-upgrade")
        assert first.status_code == 200
    # As the release before 0006 stored it: scoped per endpoint, plus an older row of the same key on another
    # endpoint (one key on two endpoints was allowed then).
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text("UPDATE idempotency_keys SET scope = 'POST /slack-notify'"))
            await conn.execute(
                sa.text(
                    "INSERT INTO idempotency_keys (scope, key, request_hash, state, response_status, response_body, "
                    "response_headers, created_at) SELECT 'POST /send-email', key, 'other', state, 500, "
                    "response_body, response_headers, '2000-01-01 00:00:00' FROM idempotency_keys"
                )
            )
            await conn.execute(sa.text("UPDATE alembic_version SET version_num = '0005'"))
            await conn.execute(sa.text("DROP TABLE rate_limit_hits"))  # added by 0007, after the release at 0005
            await conn.execute(sa.text("ALTER TABLE runs DROP COLUMN idempotency_key"))  # added by 0008
    finally:
        await engine.dispose()

    async with make_client(**slack) as client:  # start-up migrates to head
        replayed = await send(client, "before-upgrade")
        async with client.app.state.resources.sessions() as session:
            rows = (await session.execute(sa.text("SELECT scope, request_hash FROM idempotency_keys"))).all()
    assert replayed.status_code == 200 and replayed.headers["idempotent-replayed"] == "true"
    assert replayed.json()["run_id"] == first.json()["run_id"]  # the stored answer, not a second run
    assert [scope for scope, _ in rows] == ["*"] and rows[0][1] != "other"  # the newest row of the key is kept
