"""The answer headers of an `Idempotency-Key`, in the OpenAPI schema.

`Idempotent-Replayed: true` (a replay) and `Idempotent-Replayable: false` (an answer kept for replay, a success or
a failure, that could not be stored for its key) were sent but documented nowhere, so Swagger UI and generated
clients did not know them. Every operation that takes the key now lists both (core/openapi.py) on each answer a
replay can be.
"""

from __future__ import annotations

from typing import Any

#: Every POST action takes the key (README, Safety properties: Idempotency).
KEYED = {
    ("post", "/ai-process"),
    ("post", "/morning-briefing"),
    ("post", "/send-email"),
    ("post", "/slack-notify"),
    ("post", "/start-timer"),
    ("post", "/stop-timer"),
    ("post", "/whatsapp-send"),
}
#: Refused before the route runs (the key, the Host, the body's arrival or its encoding): never a stored answer.
NEVER_REPLAYED = {"401", "403", "408", "415"}


def _keyed_operations(schema: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): operation
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if any(p["in"] == "header" and p["name"] == "Idempotency-Key" for p in operation.get("parameters", []))
    }


async def test_every_operation_taking_an_idempotency_key_documents_both_answer_headers(client):
    schema = (await client.get("/openapi.json")).json()
    keyed = _keyed_operations(schema)
    assert set(keyed) == KEYED

    for (method, path), operation in keyed.items():
        where = f"{method.upper()} {path}"
        responses = operation["responses"]
        assert {"200", "401", "502"} <= set(responses), where
        for code, response in responses.items():
            headers = response.get("headers", {})
            if code in NEVER_REPLAYED:
                assert "Idempotent-Replayed" not in headers and "Idempotent-Replayable" not in headers, (
                    f"{where} {code}"
                )
            else:
                replayed = headers.get("Idempotent-Replayed")
                assert replayed is not None, f"{where} {code} does not document Idempotent-Replayed"
                assert replayed["schema"] == {"type": "string", "enum": ["true"]}, f"{where} {code}"
                assert "stored answer" in replayed["description"]
                # Any answer kept for replay can be one the database failed to store, a failure's too
                # (test_idempotency_late_save_failures.py): it was documented on the successes only.
                replayable = headers.get("Idempotent-Replayable")
                assert replayable is not None, f"{where} {code} does not document Idempotent-Replayable"
                assert replayable["schema"] == {"type": "string", "enum": ["false"]}, f"{where} {code}"
                assert "failed to store" in replayable["description"]
                assert "a failure" in replayable["description"], f"{where} {code}"


async def test_operations_without_the_key_document_neither_header(client):
    schema = (await client.get("/openapi.json")).json()
    keyed = _keyed_operations(schema)
    others = [
        (method, path, operation)
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if (method, path) not in keyed
    ]
    assert len(others) >= 10
    for method, path, operation in others:
        for code, response in operation["responses"].items():
            headers = response.get("headers", {})
            assert "Idempotent-Replayed" not in headers and "Idempotent-Replayable" not in headers, (
                f"{method.upper()} {path} {code}"
            )
