"""Alembic environment.

At start-up the app passes its own connection in `config.attributes["connection"]`.
From the command line (`alembic upgrade head`), the URL comes from DATABASE_URL.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text

from core.store import Base

target_metadata = Base.metadata


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite needs batch ALTERs
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Several workers may start together; only one migrates at a time.
            connection.execute(text("SELECT pg_advisory_xact_lock(727274)"))
        elif connection.dialect.name == "sqlite":
            # The same on SQLite: take its write lock before reading the revision. Without it, `uvicorn main:app
            # --workers 2` on a new database had both workers create `runs`, and one stopped start-up with
            # "table runs already exists" (found by a black-box review). The driver's busy timeout waits.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return

    from core.settings import load_settings
    from core.store import create_engine

    async def _main() -> None:
        engine = create_engine(load_settings().database_url)
        async with engine.begin() as conn:
            await conn.run_sync(_run)
        await engine.dispose()

    asyncio.run(_main())


if context.is_offline_mode():
    raise SystemExit("Offline migrations are not supported; run against a database.")
run_migrations_online()
