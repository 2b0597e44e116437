"""GET /runs?kind=: an unknown kind is a 422 listing the kinds, like a bad `status` or `trigger`, and the kinds
are one list (core.ledger.RunKind) that every place recording a run names its kind from.

Before, `?kind=slack.notfy` was a 200 with an empty page: a typo read as "no such runs".
"""

from __future__ import annotations

import ast
from pathlib import Path

import core.ledger  # read as core.ledger.X where used: without the fix a test fails on what it checks, not at import

ROOT = Path(__file__).resolve().parents[2]
#: Where runs are recorded, with main.py: the service's own code (tests and bench/ record freely named runs).
APP_PACKAGES = ("core", "routers", "workflows", "skills", "services")
PROBLEM = "application/problem+json"


async def test_an_unknown_kind_is_a_422_listing_every_kind(client):
    response = await client.get("/runs", params={"kind": "slack.notfy"})

    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["type"] == "/problems/invalid-input"
    assert body["title"] == "Invalid input"
    assert body["detail"] == "The request is invalid: check query.kind."
    assert body["instance"] == "/runs"
    [error] = body["errors"]
    assert error["field"] == "query.kind"
    assert error["type"] == "enum"
    listed = [f"'{kind.value}'" for kind in core.ledger.RunKind]
    assert error["message"] == f"Input should be {', '.join(listed[:-1])} or {listed[-1]}"
    assert "'slack.notify'" in error["message"] and "'schedule.prune'" in error["message"]
    assert "slack.notfy" not in response.text  # the rejected value is never echoed


async def test_an_unknown_kind_is_answered_like_an_unknown_status_or_trigger(client):
    answers = [
        await client.get("/runs", params=params)
        for params in ({"kind": "Slack.Notify"}, {"status": "done"}, {"trigger": "cron"})
    ]

    assert [answer.status_code for answer in answers] == [422, 422, 422]
    bodies = [answer.json() for answer in answers]
    assert {body["type"] for body in bodies} == {"/problems/invalid-input"}
    assert [sorted(body) for body in bodies] == [sorted(bodies[1])] * 3
    assert [sorted(body["errors"][0]) for body in bodies] == [["field", "message", "type"]] * 3
    assert [body["errors"][0]["field"] for body in bodies] == ["query.kind", "query.status", "query.trigger"]
    assert all(body["errors"][0]["message"].startswith("Input should be '") for body in bodies)


async def test_a_kind_still_filters_and_a_retired_kind_still_finds_older_runs(client):
    ledger = client.app.state.resources.ledger
    async with ledger.run("slack.notify", trigger="api") as notified:
        pass
    async with ledger.run("email.send", trigger="api"):
        pass
    # As an older release wrote it: a kind this release no longer records.
    pruned = await ledger.start_run("schedule.prune", trigger="schedule")
    await ledger.finish_run(pruned, status="failed", error="cancelled at shutdown")

    slack = await client.get("/runs", params={"kind": "slack.notify"})
    retired = await client.get("/runs", params={"kind": "schedule.prune"})
    unused = await client.get("/runs", params={"kind": "whatsapp.send"})

    assert slack.status_code == retired.status_code == unused.status_code == 200
    assert [(item["id"], item["kind"]) for item in slack.json()["items"]] == [(notified.id, "slack.notify")]
    assert slack.json()["total"] == 1
    assert [(item["id"], item["kind"]) for item in retired.json()["items"]] == [(pruned, "schedule.prune")]
    assert unused.json() == {"items": [], "total": 0, "limit": 50, "offset": 0, "next_offset": None}
    assert (await client.get("/runs")).json()["total"] == 3


async def test_openapi_lists_the_kinds_for_the_kind_parameter(client):
    schema = (await client.get("/openapi.json")).json()
    [parameter] = [p for p in schema["paths"]["/runs"]["get"]["parameters"] if p["name"] == "kind"]
    refs = [option["$ref"] for option in parameter["schema"]["anyOf"] if "$ref" in option]
    assert len(refs) == 1, parameter["schema"]  # an enum schema, not a free string
    enum = schema["components"]["schemas"][refs[0].rsplit("/", 1)[1]]["enum"]
    assert enum == [kind.value for kind in core.ledger.RunKind]
    assert parameter["required"] is False


def _kind_arguments() -> list[tuple[str, ast.expr | None, ast.FunctionDef | ast.AsyncFunctionDef | None]]:
    """Each call that records a run, as (where, the kind it passes, the function it is in): `<...>ledger.run`,
    and a call of any function of the service that takes `kind: RunKind` (`start_run`, `spawn`, `perform_action`,
    `send_chat_reply`...), its kind given as `kind=` or in that parameter's place.

    Only a fixed list of names was read, so a helper taking the kind positionally (`send_chat_reply(ledger,
    RunKind.SLACK_REPLY, ...)`) was not seen, and its kind read as recorded nowhere (found by a review)."""
    paths = [ROOT / "main.py", *(path for package in APP_PACKAGES for path in sorted((ROOT / package).rglob("*.py")))]
    trees = {path: ast.parse(path.read_text(), str(path)) for path in paths}
    # `run` is left to the receiver check below: too common a name (`contextvars.Context().run(...)`).
    recorders = {
        name: index for tree in trees.values() for name, index in _takes_run_kind(tree).items() if name != "run"
    }
    found = []

    class Calls(ast.NodeVisitor):
        def __init__(self, path: Path) -> None:
            self.path, self.function = path, None

        def visit_FunctionDef(self, node):
            outer, self.function = self.function, node
            self.generic_visit(node)
            self.function = outer

        visit_AsyncFunctionDef = visit_FunctionDef

        def visit_Call(self, node: ast.Call) -> None:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            receiver = ast.unparse(func.value) if isinstance(func, ast.Attribute) else ""
            if name == "run" and receiver.endswith("ledger"):
                index: int | None = 0
            else:
                index = recorders.get(name, -1)
            if index != -1:
                keyword = next((kw.value for kw in node.keywords if kw.arg == "kind"), None)
                positional = node.args[index] if index is not None and len(node.args) > index else None
                where = f"{self.path.relative_to(ROOT)}:{node.lineno}"
                found.append((where, keyword or positional, self.function))
            self.generic_visit(node)

    for path, tree in trees.items():
        Calls(path).visit(tree)
    return found


def _takes_run_kind(tree: ast.Module) -> dict[str, int | None]:
    """The functions (and methods) of `tree` with a `kind: RunKind` parameter, by name: the place of that
    parameter among the positional arguments of a call (`self` and `cls` not counted), None if keyword-only."""
    takes: dict[str, int | None] = {}
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        positional = [*node.args.posonlyargs, *node.args.args]
        if positional and positional[0].arg in ("self", "cls"):
            positional = positional[1:]
        for index, arg in enumerate(positional):
            if arg.arg == "kind" and arg.annotation is not None and ast.unparse(arg.annotation) == "RunKind":
                takes[node.name] = index
        for arg in node.args.kwonlyargs:
            if arg.arg == "kind" and arg.annotation is not None and ast.unparse(arg.annotation) == "RunKind":
                takes[node.name] = None
    return takes


def test_every_run_the_service_records_names_its_kind_from_run_kind():
    """The list cannot drift: a kind recorded anywhere is a RunKind member (so GET /runs?kind= accepts it), and
    every current member is recorded somewhere (a kind no longer recorded moves to RETIRED_RUN_KINDS)."""
    from core.ledger import RETIRED_RUN_KINDS, RunKind

    used, wrong = set(), []
    for where, kind, function in _kind_arguments():
        if (
            isinstance(kind, ast.Attribute)
            and ast.unparse(kind.value) == "RunKind"
            and kind.attr in RunKind.__members__
        ):
            used.add(RunKind[kind.attr])
        elif isinstance(kind, ast.Name) and function is not None and _declares_run_kind(function, kind.id):
            pass  # handed on from the caller, whose own call is checked here too
        else:
            wrong.append(f"{where}: {ast.unparse(kind) if kind is not None else 'no kind'}")

    assert wrong == [], "record runs with a RunKind member (add one in core/ledger.py for a new kind)"
    assert used == set(RunKind) - RETIRED_RUN_KINDS


def _declares_run_kind(function: ast.FunctionDef | ast.AsyncFunctionDef, name: str) -> bool:
    arguments = [*function.args.posonlyargs, *function.args.args, *function.args.kwonlyargs]
    return any(
        arg.arg == name and arg.annotation is not None and ast.unparse(arg.annotation) == "RunKind" for arg in arguments
    )
