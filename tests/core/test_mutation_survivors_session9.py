"""Tests for mutants of the ninth session's core changes that survived the existing suite.

Each test names the mutant it kills. The mutants were applied by hand to the code added since 66448b4; the
commit that adds this file lists them all.
"""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest

from core.run_kinds import RunKind
from core.secrets import REDACTED
from core.settings import ANSWER_SECRET_MIN_CHARS

#: Shorter than ANSWER_SECRET_MIN_CHARS: taken from a query only when its parameter is named as a credential.
SHORT = "tok-0091"
assert len(SHORT) < ANSWER_SECRET_MIN_CHARS


def _basic(pair: str) -> str:
    return base64.b64encode(pair.encode()).decode()


# --- What is taken from a URL (core/secrets.py) -----------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "key",
        "api_key",
        "token",
        "access_token",
        "secret",
        "pass",
        "password",
        "sslpassword",
        "passwd",
        "pwd",
        "sig",
        "signature",
        "auth",
        "code",
        "credential",
        "credentials",
    ],
)
def test_a_short_value_of_each_credential_named_parameter_is_scrubbed(make_settings, name):
    """Kills dropping any name from `_CREDENTIAL_PARAMETER` (`?sig=` of a SAS went unscrubbed): a value shorter than
    a key is taken only because of its parameter's name."""
    settings = make_settings(gemini_base_url=f"https://proxy.test/v1?{name}={SHORT}&v=2")
    assert settings.secret_scrubber.scrub(f"GET /v1?{name}={SHORT}&v=2") == f"GET /v1?{name}={REDACTED}&v=2"


def test_a_credential_parameter_whose_name_is_percent_encoded_is_still_a_credential(make_settings):
    """Kills reading the parameter's name as written: `ke%79` is `key` to the server that gets it."""
    settings = make_settings(gemini_base_url=f"https://proxy.test/v1?ke%79={SHORT}")
    assert settings.secret_scrubber.scrub(f"the gateway refused {SHORT}") == f"the gateway refused {REDACTED}"


def test_a_password_is_scrubbed_as_its_setting_spells_it_when_that_is_not_the_canonical_encoding(make_settings):
    """Kills keeping only the decoded form (`_as_written_and_decoded`): `%2a` (lower case) is what the setting holds
    and what a message quoting the URL repeats, and no re-encoding of the decoded `*` gives it back."""
    url = "https://relay:p%2ass-0092@proxy.test/v1"
    settings = make_settings(gemini_base_url=url)
    assert (
        settings.secret_scrubber.scrub(f"cannot reach {url}") == f"cannot reach https://relay:{REDACTED}@proxy.test/v1"
    )


@pytest.mark.parametrize(
    ("url", "sent"),
    [
        # A password under 4 characters is no secret of its own: only the pair is.
        ("http://hook:pw@localhost:8000", "hook:pw"),
        # 4 characters, behind a 5-byte `hook:`: no base64 form of the password alone lies inside the pair's.
        ("http://hook:pw-1@localhost:8000", "hook:pw-1"),
        # Sent percent-decoded, as httpx and aiohttp send it.
        ("http://hook:p%40s1@localhost:8000", "hook:p@s1"),
    ],
    ids=["under-4", "misaligned", "percent-encoded"],
)
def test_the_basic_credentials_a_client_builds_from_a_base_urls_user_part_are_scrubbed(make_settings, url, sent):
    """Kills dropping `url_basic_credentials` from the scrubber, or building the pair without percent-decoding it:
    the Basic header a proxy quotes back holds the pair's base64, which no secret of its own matched."""
    settings = make_settings(public_base_url=url)
    quoted = f"401: Authorization: Basic {_basic(sent)} may not POST /whatsapp-status"
    assert (
        settings.secret_scrubber.scrub(quoted) == f"401: Authorization: Basic {REDACTED} may not POST /whatsapp-status"
    )


# --- Cutoffs (core/settings.py) ---------------------------------------------------------------------------------


def test_a_whatsapp_message_run_is_never_taken_for_dead_under_ten_minutes_however_short_the_timeouts(make_settings):
    """Kills dropping the floor from `abandoned_after_by_kind`: with HTTP_TIMEOUT_SECONDS=0.5 ten parts take at most
    260 s, and twice that (520 s) would give up a live message sooner than any other run."""
    settings = make_settings(http_timeout_seconds=0.5)
    assert 2 * settings.longest_whatsapp_message_seconds < 600
    for kind in (RunKind.WHATSAPP_SEND, RunKind.WHATSAPP_REPLY):
        assert settings.abandoned_after_for(kind) == timedelta(minutes=10)


# --- OpenAPI (core/openapi.py) ----------------------------------------------------------------------------------


async def test_no_answer_in_the_schema_documents_an_empty_set_of_headers(client):
    """Kills keeping an empty `headers` on an answer that gets neither idempotency header (a 401 of a keyed
    operation): `"headers": {}` says nothing, and generators emit an empty header type for it."""
    schema = (await client.get("/openapi.json")).json()
    empty = [
        f"{method.upper()} {path} {code}"
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        for code, response in operation["responses"].items()
        if response.get("headers", None) == {}
    ]
    assert empty == []
    unauthorized = schema["paths"]["/start-timer"]["post"]["responses"]["401"]
    assert "headers" not in unauthorized
