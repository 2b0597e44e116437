"""The LLM SDKs are imported only for providers that are configured (they are most of the idle memory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import Settings

REPO = Path(__file__).resolve().parents[2]

# Start the real app (lifespan included), then report which SDKs ended up imported.
_PROBE = """
import asyncio, json, sys
from main import create_app

async def main():
    app = create_app()
    async with app.router.lifespan_context(app):
        pass
    print(json.dumps({name: name in sys.modules for name in ("anthropic", "google.genai")}))

asyncio.run(main())
"""


def _imported_sdks(tmp_path: Path, **env_overrides: str) -> dict[str, bool]:
    env = {key: value for key, value in os.environ.items() if key.lower() not in Settings.model_fields}
    env |= {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/lazy.db", "PYTHONPATH": str(REPO), **env_overrides}
    result = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, {"anthropic": False, "google.genai": False}),
        ({"ANTHROPIC_API_KEY": "sk-ant-lazy-test"}, {"anthropic": True, "google.genai": False}),
        ({"GEMINI_API_KEY": "gemini-lazy-test"}, {"anthropic": False, "google.genai": True}),
    ],
)
def test_an_sdk_is_imported_only_when_its_provider_is_configured(tmp_path, env, expected):
    assert _imported_sdks(tmp_path, **env) == expected
