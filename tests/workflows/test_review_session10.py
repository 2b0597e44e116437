"""Review session 10: the scheduler's claims on PostgreSQL, and cron times in a midnight daylight-saving gap."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from core.ledger import Ledger
from core.store import JobFire, create_engine, migrate, session_factory
from workflows import scheduler as scheduler_module
from workflows.inbound import BackgroundTasks
from workflows.scheduler import JobScheduler

#: An EC2 instance's own host name outside us-east-1 (Amazon Linux: `hostname` is the full resource name).
EC2_HOST = "ip-172-31-20-123.eu-central-1.compute.internal"


def default_scheduler(settings, sessions, monkeypatch) -> JobScheduler:
    monkeypatch.setattr(scheduler_module.socket, "gethostname", lambda: EC2_HOST)
    monkeypatch.setattr(scheduler_module.os, "getpid", lambda: 4_194_303)  # pid_max on 64-bit Linux
    ledger = Ledger(sessions)
    return JobScheduler(
        settings=settings, sessions=sessions, ledger=ledger, tasks=BackgroundTasks(ledger), deps=lambda: None
    )


async def test_the_default_worker_id_fits_the_claims_worker_column(make_settings, sessions, monkeypatch):
    """`job_fires.worker` is VARCHAR(64): PostgreSQL refuses a longer value (SQLite does not check), and every
    claim, of every stop and every briefing, then raised instead of firing (found by a review: host name, pid
    and object id made 67 characters on an EC2 instance in eu-central-1)."""
    scheduler = default_scheduler(make_settings(), sessions, monkeypatch)
    assert len(scheduler.worker_id) <= JobFire.__table__.c.worker.type.length
    assert scheduler.worker_id.endswith(":4194303:" + f"{id(scheduler):x}")  # the parts that tell workers apart


@pytest.mark.postgres
async def test_a_worker_on_a_long_host_name_claims_on_postgresql(postgres_url, make_settings, monkeypatch):
    engine = create_engine(postgres_url)
    try:
        await migrate(engine)
        sessions = session_factory(engine)
        scheduler = default_scheduler(make_settings(database_url=postgres_url), sessions, monkeypatch)
        fire_time = datetime(2026, 11, 25, 7, 0, tzinfo=UTC)
        assert await scheduler.claim("stop:1", fire_time) is True
        assert await scheduler.claim("stop:1", fire_time) is False
    finally:
        await engine.dispose()
