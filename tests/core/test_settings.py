"""Settings: zero-config start, aliases, .env, and clear refusals that never echo secrets."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import ConfigurationError
from core.settings import Settings, env_name, load_settings

REPO = Path(__file__).resolve().parents[2]


def test_no_configuration_at_all_is_valid():
    settings = load_settings(_env_file=None)
    assert settings.app_env == "development"
    assert settings.database_url.startswith("sqlite+aiosqlite:///")
    assert settings.slack_bot_token is None and settings.toggl_api_token is None
    assert settings.router_word_threshold == 500
    assert settings.timezone == "UTC" and settings.dry_run is False


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SMTP_SECURITY", "foo"),
        ("API_PORT", "eighty"),
        ("SMTP_PORT", "25x"),
        ("SLACK_BASE_URL", "not a url"),
        ("TOGGL_BASE_URL", "ftp://api.track.toggl.com"),
        ("PUBLIC_BASE_URL", "abc.ngrok.app"),
        ("LOG_FORMAT", "xml"),
        ("TIMEZONE", "Mars/Olympus"),
        ("BRIEFING_CRON", "every morning"),
        ("WHATSAPP_ALLOWED_SENDERS", "+1555,notanumber"),
        ("TOGGL_WORKSPACE_ID", "my-workspace"),
        ("DATABASE_URL", "mysql://root:hunter2secret@db/app"),
    ],
)
def test_invalid_value_names_the_variable_and_hides_secrets(monkeypatch, variable, value):
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-super-secret-token")
    monkeypatch.setenv("SMTP_PASSWORD", "smtp-password-123")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings(_env_file=None)
    message = str(caught.value)
    assert variable in message
    assert message.count("\n") == 0
    for secret in ("xoxb-super-secret-token", "smtp-password-123", "hunter2secret", value):
        assert secret not in message


def test_aliases_are_accepted(monkeypatch):
    monkeypatch.setenv("GOOGLE_API_KEY", "g-key")
    monkeypatch.setenv("CLAUDE_API_KEY", "c-key")
    monkeypatch.setenv("TOGGL_API_KEY", "t-key")
    settings = load_settings(_env_file=None)
    assert settings.gemini_api_key.get_secret_value() == "g-key"
    assert settings.anthropic_api_key.get_secret_value() == "c-key"
    assert settings.toggl_api_token.get_secret_value() == "t-key"


def test_dotenv_is_read_and_empty_values_mean_unset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("SLACK_BOT_TOKEN=xoxb-from-dotenv\nTOGGL_API_TOKEN=\nAPI_PORT=9001\n")
    settings = Settings()
    assert settings.slack_bot_token.get_secret_value() == "xoxb-from-dotenv"
    assert settings.toggl_api_token is None
    assert settings.api_port == 9001


def test_every_secret_is_a_secretstr():
    secrets = [name for name in Settings.model_fields if name.endswith(("_token", "_secret", "_password", "_api_key"))]
    assert len(secrets) >= 9  # the filter found them all
    for name in secrets:
        assert "SecretStr" in str(Settings.model_fields[name].annotation), name
    settings = Settings(_env_file=None, slack_bot_token="xoxb-abc-def")
    assert "xoxb-abc-def" not in repr(settings) and "xoxb-abc-def" not in str(settings.model_dump())


def test_production_without_api_key_refuses_to_start(monkeypatch):
    monkeypatch.setenv("APP_ENV", "production")
    with pytest.raises(ConfigurationError, match="APP_API_KEY must be set") as refused:
        load_settings(_env_file=None)
    # A check across variables names them itself: no "configuration: " label in front.
    assert str(refused.value).startswith("Invalid configuration: APP_API_KEY must be set when APP_ENV=production")
    monkeypatch.setenv("APP_API_KEY", "a-long-random-key")
    assert load_settings(_env_file=None).app_env == "production"


def test_a_public_url_without_an_api_key_refuses_to_start(monkeypatch):
    """Found by a security review: the documented ngrok set-up (PUBLIC_BASE_URL, no APP_API_KEY, APP_ENV left at
    development) opened every action endpoint and /runs to whoever found the tunnel, with nothing said."""
    monkeypatch.setenv("PUBLIC_BASE_URL", "https://abc123.ngrok.app")
    with pytest.raises(ConfigurationError) as refused:
        load_settings(_env_file=None)
    assert str(refused.value).startswith(
        "Invalid configuration: APP_API_KEY must be set when PUBLIC_BASE_URL names another host:"
    )
    assert "secrets.token_urlsafe(32)" in str(refused.value)
    monkeypatch.setenv("APP_API_KEY", "a-long-random-key")
    assert load_settings(_env_file=None).public_base_url == "https://abc123.ngrok.app"
    # The README's way to sign a test message by hand stays open: this machine is not the internet.
    monkeypatch.delenv("APP_API_KEY")
    monkeypatch.setenv("PUBLIC_BASE_URL", "http://localhost:8000")
    assert load_settings(_env_file=None).app_api_key is None


@pytest.mark.parametrize(
    ("exposed", "value", "named"),
    [
        ("APP_ENV", "production", "APP_ENV=production"),
        ("PUBLIC_BASE_URL", "https://abc123.ngrok.app", "PUBLIC_BASE_URL names another host"),
    ],
)
def test_an_exposed_service_refuses_a_short_api_key(monkeypatch, exposed, value, named):
    """Found by a black-box review: APP_ENV=production started with APP_API_KEY=change-me (the README's
    example) or a one-letter key. The error names the length, not the key."""
    monkeypatch.setenv(exposed, value)
    # 15 characters, and 13 padded to 23 with blanks (compared as the key is: stripped).
    for weak in ("change-me", "k", "fifteen-chars-x", "thirteen-char" + " " * 10):
        monkeypatch.setenv("APP_API_KEY", weak)
        with pytest.raises(ConfigurationError) as refused:
            load_settings(_env_file=None)
        message = str(refused.value)
        assert f"APP_API_KEY is too short for {named}" in message and "at least 16" in message
        assert len(weak) == 1 or weak.strip() not in message
    monkeypatch.setenv("APP_API_KEY", "x" * 16)
    assert load_settings(_env_file=None).app_api_key.get_secret_value() == "x" * 16


def test_a_short_api_key_is_fine_on_this_machine(monkeypatch):
    # The README's local walk-through (KEY=change-me) keeps working in development without a public URL.
    monkeypatch.setenv("APP_API_KEY", "change-me")
    monkeypatch.setenv("PUBLIC_BASE_URL", "http://localhost:8000")
    assert load_settings(_env_file=None).app_api_key.get_secret_value() == "change-me"


def test_production_with_whatsapp_needs_an_allowlist(monkeypatch):
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("APP_API_KEY", "k" * 20)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "twilio-token")
    with pytest.raises(ConfigurationError, match="WHATSAPP_ALLOWED_SENDERS"):
        load_settings(_env_file=None)
    monkeypatch.setenv("WHATSAPP_ALLOWED_SENDERS", "+15551234567, whatsapp:+447700900123")
    assert load_settings(_env_file=None).whatsapp_allowed_senders == ["+15551234567", "+447700900123"]


def test_a_smtp_password_is_never_sent_in_clear_text_over_a_network(monkeypatch):
    monkeypatch.setenv("SMTP_HOST", "smtp.example.com")
    monkeypatch.setenv("SMTP_USER", "me@example.com")
    monkeypatch.setenv("SMTP_PASSWORD", "app-password-123")
    monkeypatch.setenv("SMTP_SECURITY", "none")
    with pytest.raises(
        ConfigurationError, match="SMTP_SECURITY=none would send SMTP_PASSWORD in clear text"
    ) as refused:
        load_settings(_env_file=None)
    assert "smtp.example.com" in str(refused.value) and "app-password-123" not in str(refused.value)
    for fixed in ({"SMTP_SECURITY": "starttls"}, {"SMTP_HOST": "127.0.0.1"}, {"SMTP_HOST": "localhost"}):
        for name, value in fixed.items():
            monkeypatch.setenv(name, value)
        assert load_settings(_env_file=None).smtp_user == "me@example.com"
        monkeypatch.setenv("SMTP_SECURITY", "none")
        monkeypatch.setenv("SMTP_HOST", "smtp.example.com")
    monkeypatch.delenv("SMTP_PASSWORD")  # a relay that needs no login
    assert load_settings(_env_file=None).smtp_security == "none"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SMTP_FROM", "not an address", "SMTP_FROM: must be an address such as bot@example.com"),
        ("SMTP_FROM", "Bot <bot@>", "SMTP_FROM: must be an address"),
        ("TWILIO_WHATSAPP_NUMBER", "abc", "TWILIO_WHATSAPP_NUMBER: must be an E.164 number"),
        ("TWILIO_WHATSAPP_NUMBER", "whatsapp:+0123456789", "TWILIO_WHATSAPP_NUMBER: must be an E.164 number"),
    ],
)
def test_a_sender_that_is_not_an_address_stops_start_up(monkeypatch, name, value, message):
    """Found by a black-box review: SMTP_FROM='not an address' started, and mail went out From: not an address."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=message):
        load_settings(_env_file=None)


@pytest.mark.parametrize("content", [None, "not a certificate\n"], ids=["missing", "not-pem"])
def test_a_ca_file_that_cannot_be_read_stops_start_up(monkeypatch, tmp_path, content):
    """SMTP_CA_FILE is read only when TLS starts: a missing file let a dry run of /send-email answer 200 while the
    real send was a 503 "the SMTP server could not be reached: check SMTP_HOST and SMTP_PORT", naming neither the
    file nor the cause. The service can tell without connecting, so it says so at start-up, as for SMTP_FROM
    (found by a dry-run review)."""
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv("SMTP_CA_FILE", str(path))
    with pytest.raises(ConfigurationError, match="SMTP_CA_FILE: must be a readable file of PEM CA certificates"):
        load_settings(_env_file=None)


def test_a_readable_ca_file_is_kept(monkeypatch, tmp_path):
    from tests.fakes.smtp import make_certificate

    cert = make_certificate(tmp_path)
    monkeypatch.setenv("SMTP_CA_FILE", str(cert.cert_path))
    assert load_settings(_env_file=None).smtp_ca_file == str(cert.cert_path)


@pytest.mark.parametrize(
    ("name", "value", "stored"),
    [
        ("SMTP_FROM", "Orchestrator <bot@example.com>", "Orchestrator <bot@example.com>"),
        ("SMTP_FROM", " bot@example.com ", "bot@example.com"),
        # A relay's own names (found by a code review: refused as special-use domains at first).
        ("SMTP_FROM", "bot@localhost", "bot@localhost"),
        ("SMTP_FROM", "Bot <bot@mailhog>", "Bot <bot@mailhog>"),
        ("SMTP_FROM", "bot@corp.local", "bot@corp.local"),
        ("TWILIO_WHATSAPP_NUMBER", "", "whatsapp:+14155238886"),  # left blank in .env: the sandbox default
        ("TWILIO_WHATSAPP_NUMBER", "+14155238886", "whatsapp:+14155238886"),
        ("TWILIO_WHATSAPP_NUMBER", "whatsapp:+447700900123", "whatsapp:+447700900123"),
    ],
)
def test_a_sender_address_or_number_is_kept_normalised(monkeypatch, name, value, stored):
    monkeypatch.setenv(name, value)
    assert getattr(load_settings(_env_file=None), name.lower()) == stored


def test_env_example_lists_every_setting_with_a_comment():
    lines = (REPO / ".env.example").read_text().splitlines()
    documented = {}
    for index, line in enumerate(lines):
        if line and not line.startswith("#") and "=" in line:
            documented[line.split("=", 1)[0]] = lines[index - 1]
    for field in Settings.model_fields:
        name = env_name(field)
        assert name in documented, f"{name} missing from .env.example"
        assert documented[name].startswith("# "), f"{name} has no one-line comment above it"
    # And the example itself is a valid configuration.
    values = dict(line.split("=", 1) for line in lines if line and not line.startswith("#") and "=" in line)
    Settings(_env_file=None, **{key.lower(): value for key, value in values.items() if value})


def _start(env_overrides: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key.lower() not in Settings.model_fields}
    env.update(env_overrides)
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-c", "import main"], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_invalid_configuration_stops_startup_with_one_clear_line(tmp_path):
    result = _start({"SMTP_SECURITY": "foo", "SMTP_PASSWORD": "pw-never-shown"}, tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "SMTP_SECURITY" in result.stderr
    assert "pw-never-shown" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_integrations_do_not_stop_startup(tmp_path):
    result = _start({"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db"}, tmp_path)
    assert result.returncode == 0, result.stderr


def test_readme_configuration_table_matches_env_example():
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "settings_table.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_an_unreachable_database_stops_startup_naming_database_url_without_the_password(tmp_path):
    """Found by a black-box run: a 174-line driver traceback, and no line naming DATABASE_URL."""
    env = {key: value for key, value in os.environ.items() if key.lower() not in Settings.model_fields}
    env.update(PYTHONPATH=str(REPO), DATABASE_URL="postgresql+asyncpg://orchestrator:pw-never-shown@127.0.0.1:9/db")
    result = subprocess.run(
        [sys.executable, "-m", "uvicorn", "main:app", "--port", "0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    output = result.stderr + result.stdout
    expected = "Cannot reach the database at postgresql+asyncpg://orchestrator:***@127.0.0.1:9/db (ConnectionRefused"
    cannot_start = [line for line in output.splitlines() if "cannot start:" in line]
    assert len(cannot_start) == 1 and expected in cannot_start[0] and "Check DATABASE_URL" in cannot_start[0]
    assert "pw-never-shown" not in output
    # The driver's own traceback is not chained in: the output ends with our sentence, not asyncpg internals.
    assert "asyncpg/connect_utils.py" not in output


def test_a_setting_described_over_several_comment_lines_gets_all_of_them():
    """Found by two reviews: the README's rows kept only the last line ("through DATABASE_URL), or auto ...")."""
    spec = importlib.util.spec_from_file_location("settings_table", REPO / "scripts" / "settings_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    example = "# --- Core ---\n# Intro that belongs to nothing\n\n# First half,\n# second half\nNAME=1\nOTHER=\n"
    assert module.render(example).splitlines()[2:] == [
        "| **Core** | | |",
        "| `NAME` | `1` | First half, second half |",
        "| `OTHER` |  |  |",
    ]


def test_an_allowed_sender_without_its_plus_is_refused_at_start_up(monkeypatch):
    """It would never match a sender (Twilio sends E.164 with "+"), so every message would be refused without a
    word (pinned by a mutation review)."""
    monkeypatch.setenv("WHATSAPP_ALLOWED_SENDERS", "15551234567")
    with pytest.raises(ConfigurationError, match="WHATSAPP_ALLOWED_SENDERS"):
        load_settings(_env_file=None)


# --- The database URL's password -----------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://orch:PGPASS-SEKRIT-0011@127.0.0.1:9/orch",
        "postgresql+asyncpg://orch@127.0.0.1:9/orch?password=PGPASS-SEKRIT-0011",
        "postgresql+asyncpg://orch@127.0.0.1:9/orch?ssl=disable&password=PGPASS-SEKRIT-0011",
    ],
    ids=["user-part", "query", "query-among-others"],
)
async def test_the_database_password_is_hidden_wherever_the_url_puts_it(url):
    """A password given as `?password=` (asyncpg accepts it) was printed whole at start-up when the database could
    not be reached (found by a security review)."""
    from core.store import DatabaseUnreachable, create_engine, ensure_reachable

    engine = create_engine(url)
    try:
        with pytest.raises(DatabaseUnreachable) as caught:
            await ensure_reachable(engine, within_seconds=5)
    finally:
        await engine.dispose()
    assert "PGPASS-SEKRIT-0011" not in str(caught.value)
    assert "127.0.0.1:9/orch" in str(caught.value) and "***" in str(caught.value)


def test_short_secrets_are_scrubbed_from_logs_and_errors_but_not_from_answers():
    """Answers people read (an LLM's, a Toggl description) and the briefing's Slack post are scrubbed of secrets of
    ANSWER_SECRET_MIN_CHARS or more only: an SMTP password "password" turned "the password" into "the ***" in
    every answer (found by a review). The database password is hidden where the URL is printed, not scrubbed from
    text: `user:pass@` garbled "pass" everywhere."""
    from core.settings import ANSWER_SECRET_MIN_CHARS

    settings = Settings(
        _env_file=None,
        smtp_password="password",
        slack_bot_token="xoxb-long-enough-token-0001",
        database_url="postgresql+asyncpg://user:pass@db/app",
    )
    assert len("password") < ANSWER_SECRET_MIN_CHARS <= len("xoxb-long-enough-token-0001")
    text = "pass the password and xoxb-long-enough-token-0001"
    assert settings.secret_scrubber.scrub(text) == "pass the *** and ***"
    assert settings.answer_scrubber.scrub(text) == "pass the password and ***"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://orch:PG@SS-SEKRIT-0012@127.0.0.1/orch",  # the rest was read as the host
        "postgresql+asyncpg://orch:PG@S/S-SEKRIT-0012@127.0.0.1/orch",  # ... as the path
        "postgresql+asyncpg://orch:PG@S?S-SEKRIT-0012@127.0.0.1/orch",  # ... as the query
        "postgresql+asyncpg://orch:PG@S:S-SEKRIT-0012@127.0.0.1/orch",  # a "port" the parser quoted back
    ],
)
def test_an_at_sign_in_the_database_password_is_refused_without_echoing_it(url):
    """Unencoded, `@` ends the password early, and the rest was printed in errors (found by two reviews)."""
    with pytest.raises(ConfigurationError) as caught:
        load_settings(_env_file=None, database_url=url)
    message = str(caught.value)
    assert "DATABASE_URL" in message and "%40" in message
    assert "SEKRIT" not in message


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://user:p%40ss@db/app",
        "postgresql+asyncpg://user:pass@/app?host=/var/run/postgresql",
        "postgresql+asyncpg://user:pass@[::1]:5432/app",
        "sqlite+aiosqlite:///./data/team@home.db",
    ],
)
def test_urls_with_one_at_sign_or_an_encoded_one_are_accepted(url):
    assert load_settings(_env_file=None, database_url=url).database_url == url


def test_a_secrets_surrounding_line_breaks_are_dropped_and_nothing_else():
    """A key read from a file or a Kubernetes secret ends in a newline; sent in a header it failed as a 500. A
    password's own leading or trailing space stays: it is part of the password."""
    settings = Settings(_env_file=None, local_llm_api_key="local-key-0001\n", smtp_password=" pass word \r\n")
    assert settings.local_llm_api_key.get_secret_value() == "local-key-0001"
    assert settings.smtp_password.get_secret_value() == " pass word "


def test_a_secret_of_only_line_breaks_is_refused_not_taken_as_unset():
    """Taken as unset, APP_API_KEY="\\n" would have opened a service that was locked."""
    with pytest.raises(ConfigurationError) as caught:
        load_settings(_env_file=None, app_api_key="\n")
    assert "APP_API_KEY" in str(caught.value) and "line breaks" in str(caught.value)
