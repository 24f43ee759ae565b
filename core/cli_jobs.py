"""`prospect jobs start|status|list|cancel|watch`: alignment jobs over the REST API.

The key comes from PROSPECT_API_KEY and the API's address from
PROSPECT_API_URL (or host/port). ``watch`` polls the job and its per-step
metrics and draws a progress bar with the latest loss and kl.
"""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from core.cli_output import JsonOption, print_rows
from core.cli_run import EXIT_FAILED, EXIT_INTERRUPTED
from core.client import ApiError, Client
from core.settings import get_settings

console = Console(stderr=True)
jobs_app = typer.Typer(help="Start, inspect, watch and cancel alignment jobs (REST).", no_args_is_help=True)
FINISHED = ("succeeded", "failed", "cancelled")
RETRY_FOR_S, RETRY_EVERY_S = 180.0, 5.0


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[red]error:[/red] {message}", soft_wrap=True)  # one line: copyable
    raise typer.Exit(code)


def _client() -> Client:
    try:
        return Client(get_settings())
    except ApiError as exc:
        _fail(exc.message)


def _call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except ApiError as exc:
        _fail(exc.message)


def _json_option(raw: str | None, what: str) -> dict:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        _fail(f"--{what} is not valid JSON: {exc}")
    if not isinstance(value, dict):
        _fail(f"--{what} must be a JSON object, e.g. '{{\"beta\": 0.2}}'")
    return value


def _summary(job: dict) -> str:
    p = job["progress"]
    status = f"{job['status']} ({job['phase']})" if job["status"] == "running" and job.get("phase") else job["status"]
    line = f"job {job['id']}  {job['adapter']}  {status}  step {p['step']}/{p['total']}  attempts {job['attempts']}"
    if job.get("adapter_version"):
        line += f"  -> {job['adapter_version']['adapter']} v{job['adapter_version']['version']}"
    if job.get("error"):
        line += f"\n  error: {job['error']}"
    if job.get("timings"):
        line += "\n  seconds: " + "  ".join(f"{k} {v:.1f}" for k, v in job["timings"].items())
    return line


@jobs_app.command("start")
def start(
    adapter: Annotated[str, typer.Argument(help="Adapter name; versions are published under it.")],
    base_model: Annotated[str, typer.Option("--base-model", "-b", help="A registered base model.")],
    snapshot: Annotated[str | None, typer.Option(help="Train on this snapshot id (default: a new one).")] = None,
    config: Annotated[str | None, typer.Option(help="KTO config overrides as JSON, e.g. '{\"beta\": 0.2}'.")] = None,
    options: Annotated[str | None, typer.Option(help="Pipeline options as JSON (heldout_fraction, gate_*).")] = None,
    force_publish: Annotated[bool, typer.Option(help="Publish even if the held-out gate refuses.")] = False,
    watch_it: Annotated[bool, typer.Option("--watch", help="Watch it until it ends (exit 1 unless it succeeded).")]
    = False,
) -> None:
    """Queue an alignment job; prints its id on stdout."""
    client = _client()
    body = {"adapter": adapter, "base_model": base_model, "snapshot_id": snapshot,
            "config": _json_option(config, "config"), "options": _json_option(options, "options"),
            "force_publish": force_publish}
    job = _post_job(client, body)
    console.print(f"queued job {job['id']} for adapter {adapter}")
    print(job["id"])
    if watch_it:
        _exit_for(_watch(client, job["id"], interval=1.0))


def _post_job(client: Client, body: dict) -> dict:
    """POST /v1/jobs; while the API answers 503 (e.g. the database is busy) wait and try again, up to
    RETRY_FOR_S. (A job for the bundled model while it is converted is queued at once: it waits.)"""
    deadline = time.monotonic() + RETRY_FOR_S
    while True:
        try:
            return client.post("/v1/jobs", json=body)
        except ApiError as exc:
            if exc.status != 503 or time.monotonic() > deadline:
                _fail(exc.message)
            console.print(f"waiting: {exc.message}")
            time.sleep(RETRY_EVERY_S)


@jobs_app.command("status")
def status(job_id: Annotated[str, typer.Argument(help="The job id.")],
           as_json: Annotated[bool, typer.Option("--json", help="The whole record as JSON.")] = False) -> None:
    """One job: status, progress, weights, metrics, the version or the error."""
    job = _call(_client().get, f"/v1/jobs/{job_id}")
    if as_json:
        print(json.dumps(job, indent=2, sort_keys=True))
        return
    print(_summary(job))
    if job.get("class_weights"):
        w = job["class_weights"]
        print(f"  class weights: desirable {w['desirable']:.3f}, undesirable {w['undesirable']:.3f} ({w['reason']})")
    if job.get("metrics"):
        m = job["metrics"]
        print(f"  latest: loss {m.get('loss')}, kl estimate {_kl(m)} (clamped at 0 in the loss: {m.get('kl')}), "
              f"margin {m.get('reward_margin')}")


@jobs_app.command("list")
def list_(
    status_: Annotated[str | None, typer.Option("--status", help="queued|running|succeeded|failed|cancelled")] = None,
    adapter: Annotated[str | None, typer.Option(help="Only this adapter.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """Jobs, newest first."""
    params = {k: v for k, v in {"status": status_, "adapter": adapter, "limit": limit}.items() if v is not None}
    rows = _call(_client().get, "/v1/jobs", params=params)["jobs"]
    print_rows(rows, {
        "id": lambda j: j["id"], "adapter": lambda j: j["adapter"], "status": lambda j: j["status"],
        "step": lambda j: f"{j['progress']['step']}/{j['progress']['total']}", "attempts": lambda j: j["attempts"],
        "version": lambda j: f"v{j['adapter_version']['version']}" if j.get("adapter_version") else "",
        "created": lambda j: j["created_at"][:19],
    }, as_json=as_json)


@jobs_app.command("publish")
def publish(job_id: Annotated[str, typer.Argument(help="A job the held-out gate refused.")],
            reason: Annotated[str, typer.Option(help="Why it should go out anyway (recorded in the manifest).")]) -> None:
    """Publish the kept adapter of a job the gate refused; prints the version."""
    job = _call(_client().post, f"/v1/jobs/{job_id}/publish", json={"reason": reason})
    ref = job["adapter_version"]
    console.print(f"published {ref['adapter']} v{ref['version']} over the refused gate")
    print(ref["version"])


@jobs_app.command("cancel")
def cancel(job_id: Annotated[str, typer.Argument(help="The job id.")]) -> None:
    """Cancel: a queued job at once, a running one within one training step."""
    job = _call(_client().post, f"/v1/jobs/{job_id}/cancel")
    state = job["status"] if job["status"] != "running" else "running; it stops within one training step"
    console.print(f"job {job_id}: {state}")


def _watch(client: Client, job_id: str, *, interval: float) -> dict:
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]}  kl {task.fields[kl]}"), TimeElapsedColumn())
    console.print("kl: the unclamped estimate of the KL term; the loss uses it clamped at 0")
    try:
        with Progress(*columns, console=console) as bar:
            task = bar.add_task("queued", total=None, loss="-", kl="-")
            while True:
                job = _call(client.get, f"/v1/jobs/{job_id}")
                p, m = job["progress"], job.get("metrics") or {}
                shown = job["phase"] if job["status"] == "running" and job.get("phase") else job["status"]
                bar.update(task, description=shown, completed=p["step"], total=p["total"] or None,
                           loss=_fmt(m.get("loss")), kl=_fmt(_kl(m)))
                if job["status"] in FINISHED:
                    break
                time.sleep(interval)
    except KeyboardInterrupt:
        console.print(f"interrupted; the job goes on (`prospect jobs watch {job_id}`, `prospect jobs cancel {job_id}`)")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    print(_summary(job))
    return job


def _exit_for(job: dict) -> None:
    """Exit code of a command that waited for a job: 0 succeeded, 1 failed or cancelled."""
    if job["status"] != "succeeded":
        raise typer.Exit(EXIT_FAILED)


def _kl(metrics: dict):
    """The unclamped KL estimate (near the reference it is often just below 0, which the clamped z0,
    ``kl``, shows as 0.0000 on every step); older jobs only have ``kl``."""
    return metrics.get("kl_estimate", metrics.get("kl"))


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


@jobs_app.command("watch")
def watch(job_id: Annotated[str, typer.Argument(help="The job id.")],
          interval: Annotated[float, typer.Option(help="Seconds between polls.")] = 1.0) -> None:
    """A progress bar with the latest loss and kl until the job ends; exit code 1 unless it succeeded."""
    _exit_for(_watch(_client(), job_id, interval=interval))
