"""POST /ai-process: one prompt through the AIRouter, recorded in the ledger."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from core.deps import DryRunDep, LedgerDep, SettingsDep
from core.errors import ProblemError, problem_responses
from core.idempotency import IdempotencyDep
from core.ledger import Ledger, RunKind
from routers.deps import AIRouterDep
from services.ai_router import AIRouter, Generation, ProviderChoice

router = APIRouter(tags=["ai"])

T = TypeVar("T")


class AIProcessRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "text": "Summarise these meeting notes in three bullet points: ...",
                "system": "You are a concise assistant.",
                "max_tokens": 300,
                "provider": "auto",
            }
        },
    )

    text: str = Field(
        min_length=1,
        description="The prompt. Up to MAX_INPUT_CHARS characters (413 above). At or below "
        "ROUTER_WORD_THRESHOLD words it goes to Gemini, above it to Claude.",
    )
    system: str | None = Field(None, description="Optional system instruction.")
    max_tokens: StrictInt | None = Field(
        None, ge=1, le=65_536, description="Output token cap; LLM_MAX_TOKENS when absent."
    )
    provider: ProviderChoice = Field("auto", description="auto applies the word rule; a name forces that provider.")

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must contain more than whitespace")
        return value


class AIProcessResponse(Generation):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                **Generation.model_config["json_schema_extra"]["example"],  # type: ignore[index,dict-item]
                "run_id": "8c4f0e5a9d2b4e7f8a1c3d5e7f9b1a2c",
                "dry_run": False,
            }
        }
    )

    run_id: str = Field(description="The ledger run: GET /runs/{run_id}.")
    dry_run: bool = Field(
        False, description="A dry run: the provider and model chosen, nothing sent, `response` empty."
    )


class ClientClosedRequest(ProblemError):
    """The caller went away; the upstream call was cancelled. Nobody reads this answer, the ledger does."""

    status, slug, title = 499, "client-closed-request", "Client closed the request"


async def _disconnected(request: Request) -> None:
    """Return when the ASGI server reports `http.disconnect`.

    The body has been read by now, so the next `receive()` blocks until the
    client goes away (or the server finishes the response): one wait per
    request instead of a polling loop.
    """
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run `work`, cancelling it if the client disconnects first.

    Starlette does not cancel a handler when its client goes away, so a
    30-second LLM call would run (and bill) for nobody. The work runs as a
    task raced against the server's disconnect message.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        await asyncio.wait({task})
        raise ClientClosedRequest("The client disconnected; the LLM call was cancelled.")
    finally:
        watcher.cancel()
        if not task.done():  # we were cancelled ourselves (shutdown): take the upstream call down with us
            task.cancel()
            await asyncio.wait({task})


def prompt_summary(body: AIProcessRequest, *, store_prompts: bool) -> dict[str, Any]:
    """What the ledger keeps about the prompt: its text only when STORE_PROMPTS=true."""
    summary: dict[str, Any] = {
        "provider": body.provider,
        "max_output": body.max_tokens,  # "max_tokens" would be masked by the ledger's secret filter
        "text_chars": len(body.text),
        "text_words": len(body.text.split()),
        "text_sha256": hashlib.sha256(body.text.encode()).hexdigest(),
    }
    if body.system is not None:
        summary["system_chars"] = len(body.system)
        summary["system_sha256"] = hashlib.sha256(body.system.encode()).hexdigest()
    if store_prompts:
        summary["text"] = body.text
        if body.system is not None:
            summary["system"] = body.system
    return summary


async def process_prompt(
    request: Request,
    body: AIProcessRequest,
    *,
    ai: AIRouter,
    ledger: Ledger,
    store_prompts: bool,
    dry_run: bool = False,
) -> AIProcessResponse:
    """One run (kind `ai.process`) with one action named after the provider that answered."""
    # Generating text acts on no one's account, so the start need not be committed before the call:
    # the finish commits the whole run, and the hot path skips one database round trip.
    async with ledger.run(
        RunKind.AI_PROCESS,
        trigger="api",
        # dry_run recorded before the call, as `perform_action` does: a failed rehearsal is not a failed call.
        input_summary=prompt_summary(body, store_prompts=store_prompts) | ({"dry_run": True} if dry_run else {}),
        durable_start=False,
    ) as run:
        async with run.action("ai", "generate") as action:
            try:
                generation = await cancel_on_disconnect(
                    request,
                    ai.generate(
                        text=body.text,
                        system=body.system,
                        max_tokens=body.max_tokens,
                        provider=body.provider,
                        dry_run=dry_run,
                    ),
                )
            except ProblemError as exc:
                exc.extras.setdefault("run_id", run.id)  # the problem points at its record
                raise
            action.skill = generation.provider
            action.external_id = generation.model_used
            if dry_run:
                action.status = run.status = "dry_run"
        run.result = {
            "provider": generation.provider,
            "model": generation.model_used,
            # Not "input_tokens": the ledger masks every key that contains "token" as a secret.
            "usage": {"input": generation.usage.input_tokens, "output": generation.usage.output_tokens},
            "latency_ms": generation.latency_ms,
            "routing": generation.routing.model_dump(),
            "truncated": generation.truncated,
            "refused": generation.refused,
            "stop_reason": generation.stop_reason,
        }
    return AIProcessResponse(run_id=run.id, dry_run=dry_run, **dict(generation))


@router.post(
    "/ai-process",
    summary="Generate text with Gemini or Claude (routed by prompt length)",
    response_model=AIProcessResponse,
    # 409: the Idempotency-Key answers of core.idempotency (a duplicate still running past its wait, or a first
    # request that never finished); an LLM call can outlast the 30 s wait, so a client retry meets it.
    responses=problem_responses(401, 409, 413, 422, 429, 502, 503, 504),
)
async def ai_process(
    # Named examples: Swagger UI offers each in a list, and schemathesis sends each before its generated cases, so
    # the Claude route is exercised whatever the generator happens to draw (a short `auto` prompt goes to Gemini).
    body: Annotated[
        AIProcessRequest,
        Body(
            openapi_examples={
                "auto": {
                    "summary": "Routed by length (short: Gemini)",
                    "value": AIProcessRequest.model_config["json_schema_extra"]["example"],  # type: ignore[index]
                },
                "claude": {
                    "summary": "Claude, whatever the length",
                    "value": {"text": "Draft a polite reply declining Friday's meeting.", "provider": "claude"},
                },
            }
        ),
    ],
    request: Request,
    ai: AIRouterDep,
    ledger: LedgerDep,
    settings: SettingsDep,
    idem: IdempotencyDep,
    dry_run: DryRunDep,
) -> JSONResponse:
    """Route the prompt: at or below ROUTER_WORD_THRESHOLD words to Gemini, above it to Claude, with fallback
    to the other (then the local model) on outage, rate limit or timeout. `routing.reason` says what happened.

    Send `Idempotency-Key` to make a retry replay the first answer instead of paying for a second generation.
    `?dry_run=true` (or DRY_RUN=true) routes the prompt and sends nothing: a rehearsal costs no tokens.
    """

    def work() -> Awaitable[AIProcessResponse]:
        return process_prompt(
            request, body, ai=ai, ledger=ledger, store_prompts=settings.store_prompts, dry_run=dry_run
        )

    # A dry run and a real call are different requests for an Idempotency-Key (as on every action endpoint).
    return await idem.execute({"body": body.model_dump(mode="json"), "dry_run": True} if dry_run else body, work)
