"""Tests for mutants of the ninth session's workflow changes that survived the existing suite.

Each test names the mutant it kills; the commit that adds this file lists every mutant tried.
"""

from __future__ import annotations

from core.ledger import Ledger
from tests.routers.test_whatsapp_status import PUBLIC, post_status, send_one, status_form
from tests.workflows.test_chat_database_failures import _assert_nothing_recorded_answer, database  # noqa: F401
from tests.workflows.world import runs_of


async def test_a_status_callback_whose_run_could_not_start_names_the_databases_own_error(w, make_client, database):  # noqa: F811
    """Kills naming the ledger's wrapper instead of its cause (workflows/deliveries.py): the 503 said the database
    did not answer "(StoreUnavailable)", the service's own error class, where every other such answer names what
    the database raised."""
    async with make_client(send_api_key=True, **w.settings(public_base_url=PUBLIC)) as client:
        sid, _ = await send_one(client)
        database.after(Ledger, "find_run_by_external_id")
        response = await post_status(client, status_form(sid, "failed", code="63015"))
        database.down = False
        assert await runs_of(client, "whatsapp.delivery") == []
    _assert_nothing_recorded_answer(response)
    assert response.json()["detail"].startswith("The service's database did not answer (OperationalError)")
