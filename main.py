"""Application factory: `uvicorn main:app`, or `python main.py` to use API_HOST and API_PORT."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi_offline import FastAPIOffline

from core import __version__
from core.auth import require_api_key
from core.errors import ConfigurationError, add_exception_handlers, problem_responses
from core.gc_tuning import frozen_startup_heap
from core.log import configure_logging
from core.middleware import RequestContextMiddleware
from core.openapi import install_problem_schema
from core.ratelimit import RateLimitDep
from core.registry import Registry
from core.resources import open_resources
from core.settings import Settings, load_settings
from routers import ai as ai_api
from routers import briefing as briefing_api
from routers import email as email_api
from routers import (
    health,
    problems,
    runs,
    slack_events,
    slack_notify,
    whatsapp_send,
    whatsapp_status,
    whatsapp_webhook,
)
from routers import schedule as schedule_api
from routers import skills as skills_api
from routers import timers as timers_api
from services import PROVIDERS, open_ai_router
from skills import SKILLS, open_skills
from workflows.briefing import WorkflowDeps
from workflows.inbound import open_background_tasks
from workflows.scheduler import open_scheduler

logger = logging.getLogger("orchestrator")

DESCRIPTION = """
Turns natural-language tasks into actions on your own productivity tools:
Slack, Toggl Track, email and WhatsApp, with text generation routed between
Gemini and Claude.

Every endpoint except `/health`, the docs, `/problems` and the three signed webhooks needs the
API key (`X-API-Key` or `Authorization: Bearer`) when `APP_API_KEY` is set.
Errors are RFC 9457 problem details (`application/problem+json`).
"""

TAGS = [
    {"name": "health", "description": "Liveness, database and integration status."},
    {"name": "ledger", "description": "Every run and every action it performed."},
    {"name": "ai", "description": "Text generation routed between Gemini, Claude and an optional local model."},
    {"name": "skills", "description": "Which action skills exist and which settings each still needs."},
    {"name": "slack", "description": "Post messages to Slack channels and threads."},
    {"name": "whatsapp", "description": "Send WhatsApp messages through Twilio."},
    {"name": "timers", "description": "Start, stop and read Toggl Track timers."},
    {"name": "email", "description": "Send email over SMTP."},
    {"name": "briefing", "description": "The morning briefing: AI plan and deep-work timer, then a Slack summary."},
    {"name": "schedule", "description": "BRIEFING_CRON and the planned timer stops."},
    {"name": "inbound", "description": "Signed webhooks: WhatsApp (Twilio) and Slack Events. No API key."},
    {"name": "problems", "description": "What each error `type` means and how to fix it. No API key."},
]


#: The inbound webhooks, reported in /health like the skills and providers: each needs settings of its own.
INBOUND = (slack_events.INTEGRATION, whatsapp_webhook.INTEGRATION)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    registry = Registry([*PROVIDERS, *SKILLS, *INBOUND])

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(level=settings.log_level, fmt=settings.log_format, secrets=settings.secret_scrubber)
        async with AsyncExitStack() as stack:
            try:
                resources = await open_resources(settings, registry, stack)
            except ConfigurationError as exc:
                # Said once, plainly, before uvicorn prints the start-up traceback (whose last line repeats it).
                logger.error("cannot start: %s", exc)
                raise
            app.state.resources = resources
            app.state.skills = await open_skills(resources, stack)
            app.state.ai_router = await open_ai_router(resources, stack)
            for item in registry:
                if not item.configured(settings):
                    logger.info("%s not configured (set %s)", item.name, ", ".join(item.missing(settings)))
            # Inbound work that outlives its webhook request, and the scheduler (closed first, LIFO).
            app.state.background_tasks = await open_background_tasks(
                resources.ledger, stack, grace_seconds=settings.shutdown_grace_seconds
            )
            app.state.scheduler = await open_scheduler(
                settings=settings,
                sessions=resources.sessions,
                ledger=resources.ledger,
                tasks=app.state.background_tasks,
                deps=lambda: WorkflowDeps.from_app(app),
                stack=stack,
            )
            # Last, once everything long-lived exists: full GC passes then skip it (core/gc_tuning.py).
            stack.enter_context(frozen_startup_heap())
            if settings.unguarded_on_network:
                # Not refused (a container publishes 0.0.0.0 by habit, and a trusted LAN exists), but said loudly.
                logger.warning(
                    "API_HOST=%s without APP_API_KEY: every action endpoint and /runs is open to anyone who can "
                    "reach this machine. Set APP_API_KEY, or API_HOST=127.0.0.1.",
                    settings.api_host,
                )
            logger.info("started version=%s environment=%s", __version__, settings.app_env)
            yield
        logger.info("stopped")

    # FastAPIOffline is FastAPI with /docs and /redoc pointing at Swagger UI and ReDoc files shipped in the
    # package (served under /static-offline-docs) instead of cdn.jsdelivr.net: the page works without internet.
    app = FastAPIOffline(
        title="AI Productivity Orchestrator",
        version=__version__,
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        # No 307 from /x/ to /x: Starlette builds its Location from the request, so behind a TLS proxy or ngrok
        # it said http://, and a client following it (curl -L) re-sent the API key in clear text (found by a
        # black-box review). A trailing slash is a 404 that names the endpoint instead (core/errors.py).
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.registry = registry
    add_exception_handlers(app)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_body_bytes,
        body_timeout_seconds=settings.request_body_timeout_seconds,
    )
    install_problem_schema(app)

    protected = [Depends(require_api_key)]
    app.include_router(health.router)
    # The documentation of every error, including the 401: readable without the key.
    app.include_router(problems.router)
    app.include_router(runs.router, dependencies=protected)
    app.include_router(skills_api.router, dependencies=protected)
    app.include_router(slack_notify.router, dependencies=protected)
    # Each WhatsApp message costs money: rate-limited per client (after the API-key check).
    app.include_router(whatsapp_send.router, dependencies=[*protected, RateLimitDep])
    app.include_router(timers_api.router, dependencies=protected)
    # Each email lands in a real inbox (and relays meter sends): rate-limited per client too.
    app.include_router(email_api.router, dependencies=[*protected, RateLimitDep])
    # Each generation spends LLM tokens: rate-limited per client (after the API-key check).
    # `responses=` here documents what the shared layers answer on these routes: 400 for an
    # undecodable body, 413 from the body limit, 429 from the rate limit (found by schemathesis).
    app.include_router(ai_api.router, dependencies=[*protected, RateLimitDep], responses=problem_responses(400))
    # The briefing spends LLM tokens too.
    app.include_router(
        briefing_api.router, dependencies=[*protected, RateLimitDep], responses=problem_responses(400, 413, 429)
    )
    app.include_router(schedule_api.router, dependencies=protected)
    # Webhooks carry their own signatures (Twilio, Slack) instead of the API key.
    app.include_router(whatsapp_webhook.router)
    app.include_router(whatsapp_status.router)
    app.include_router(slack_events.router)
    # What needs no API key; everything else does. Read when a body cannot be parsed, which FastAPI reports
    # before the key dependency runs (core.auth.refusal_before_body).
    public = (health.router, problems.router, whatsapp_webhook.router, whatsapp_status.router, slack_events.router)
    app.state.public_paths = frozenset(route.path for router in public for route in router.routes)
    return app


def _app_or_exit() -> FastAPI:
    try:
        return create_app()
    except ConfigurationError as exc:
        # One clear line and a non-zero exit, no traceback: the message names the variable.
        sys.exit(f"error: {exc}")


app = _app_or_exit()


if __name__ == "__main__":
    import uvicorn

    settings = app.state.settings
    uvicorn.run("main:app", host=settings.api_host, port=settings.api_port, log_config=None, proxy_headers=False)
