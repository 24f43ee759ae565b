"""`prospect rollouts start|status|stop` and `prospect adapters feedback NAME` (REST, key in PROSPECT_API_KEY)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from core import cli_resources
from core.cli_output import JsonOption, table_console
from core.cli_resources import _fail, _print_json, adapters_app
from core.client import ApiError

rollouts_app = typer.Typer(help="Canary rollouts decided by live feedback (REST).", no_args_is_help=True)


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def _interval(iv: list[float] | None) -> str:
    return "" if not iv else f"[{_pct(iv[0])}, {_pct(iv[1])}]"


@adapters_app.command("feedback")
def adapters_feedback(
    name: Annotated[str, typer.Argument(help="Adapter name.")],
    since: Annotated[str | None, typer.Option(help="ISO time, inclusive.")] = None,
    until: Annotated[str | None, typer.Option(help="ISO time, exclusive.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Live thumbs per version (and for the base model) with 95% Wilson intervals."""
    params = {k: v for k, v in {"since": since, "until": until}.items() if v is not None}
    try:
        body = cli_resources._client().get(f"/v1/adapters/{name}/feedback", params=params)
    except ApiError as exc:
        _fail(exc.message)
    if as_json:
        _print_json(body)
        return
    table = Table("version", "up", "down", "total", "rate", "95% interval", title=f"{name}: live feedback")
    for v in body["versions"]:
        label = f"v{v['version']}" + ("" if v["known"] else " (unknown)")
        table.add_row(label, str(v["up"]), str(v["down"]), str(v["total"]), _pct(v["rate"]), _interval(v["interval"]))
    if body["base"] is not None:
        b = body["base"]
        table.add_row(f"base ({b['model']})", str(b["up"]), str(b["down"]), str(b["total"]), _pct(b["rate"]),
                      _interval(b["interval"]))
    table_console(120).print(table)


@rollouts_app.command("start")
def rollouts_start(
    name: Annotated[str, typer.Argument(help="Adapter name.")],
    candidate: Annotated[int, typer.Argument(help="The version to try.")],
    baseline: Annotated[str, typer.Option(help="Alias or version to compare against.")] = "champion",
    traffic: Annotated[float, typer.Option(help="Share of units on the candidate.")] = 0.1,
    min_votes: Annotated[int, typer.Option(help="Votes each arm needs before a decision.")] = 200,
    probability: Annotated[float, typer.Option(help="Posterior probability a decision needs.")] = 0.95,
    max_days: Annotated[float, typer.Option(help="Days without a decision before it expires.")] = 14.0,
) -> None:
    """Start a rollout; prints it as JSON."""
    body = {"candidate": candidate, "baseline": baseline, "traffic": traffic, "min_votes": min_votes,
            "probability": probability, "max_days": max_days}
    try:
        _print_json(cli_resources._client().post(f"/v1/adapters/{name}/rollouts", json=body))
    except ApiError as exc:
        _fail(exc.message)


@rollouts_app.command("status")
def rollouts_status(
    name: Annotated[str, typer.Argument(help="Adapter name.")],
    rollout_id: Annotated[str | None, typer.Argument(help="One rollout (as JSON, with its history).")] = None,
    as_json: JsonOption = False,
) -> None:
    """The adapter's rollouts as a table, newest first; or one rollout as JSON."""
    client = cli_resources._client()
    try:
        if rollout_id is not None:
            _print_json(client.get(f"/v1/adapters/{name}/rollouts/{rollout_id}"))
            return
        rows = client.get(f"/v1/adapters/{name}/rollouts")
    except ApiError as exc:
        _fail(exc.message)
    if as_json:
        _print_json(rows)
        return
    table = Table("id", "status", "candidate", "baseline", "traffic", "candidate up/down", "baseline up/down",
                  "P(better)", "reason", title=f"{name}: rollouts")
    for r in rows:
        c, b = r["candidate"], r["baseline_arm"]
        table.add_row(r["id"], r["status"], f"v{r['candidate_version']}", f"v{r['baseline_version']}",
                      _pct(r["traffic"]), f"{c['up']}/{c['down']}", f"{b['up']}/{b['down']}",
                      f"{r['p_candidate_better']:.3f}", r["reason"] or "")
    table_console(200).print(table)


@rollouts_app.command("stop")
def rollouts_stop(
    name: Annotated[str, typer.Argument(help="Adapter name.")],
    rollout_id: Annotated[str, typer.Argument(help="The rollout's id.")],
) -> None:
    """End a running rollout without a decision (no alias moves)."""
    try:
        _print_json(cli_resources._client().post(f"/v1/adapters/{name}/rollouts/{rollout_id}/stop"))
    except ApiError as exc:
        _fail(exc.message)
