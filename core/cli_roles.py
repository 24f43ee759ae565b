"""`prospect worker` and `prospect beat`: one role of the stack each, for hosts of their own.

Same settings as `prospect up` (the PROSPECT_* environment: database, broker, data folder, log level);
neither migrates the database (`prospect migrate`, or the API host's `prospect up`, does). Each command
replaces itself with the Celery process (exec), so a SIGTERM from a supervisor (systemd, Kubernetes,
docker stop) reaches Celery directly: the worker finishes its running tasks' current step and stops
(a training job is acknowledged late and resumes elsewhere from its checkpoint), beat stops at once.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from core.cli_run import CliError
from core.settings import Settings, get_settings

QUEUES = ("training", "default")


def parse_queues(value: str) -> list[str]:
    names = [q.strip() for q in value.split(",") if q.strip()]
    unknown = sorted(set(names) - set(QUEUES))
    if not names or unknown:
        raise CliError(f"--queues takes a comma-separated list of {', '.join(QUEUES)}; got {value!r}"
                       + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    return list(dict.fromkeys(names))


def worker_command(settings: Settings, *, queues: list[str], concurrency: int) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", ",".join(queues),
            "--concurrency", str(concurrency), "--loglevel", settings.log_level, "-n", "prospect@%h"]


def beat_command(settings: Settings) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", "beat", "--loglevel", settings.log_level,
            "-s", str(settings.data_path / "celerybeat-schedule")]


def _become(cmd: list[str]) -> None:
    import core.metrics  # noqa: F401 - sets PROMETHEUS_MULTIPROC_DIR, which Celery's processes inherit

    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)  # the Celery process takes this pid: signals reach it unchanged


def worker(
    queues: Annotated[str, typer.Option(help="Comma-separated queues to consume: training, default.")]
    = "training,default",
    concurrency: Annotated[int, typer.Option(min=1, help="Tasks run at once (pool processes).")] = 2,
) -> None:
    """Run one Celery worker (no API, no beat) until SIGTERM or Ctrl-C."""
    settings = get_settings()
    settings.ensure_dirs()
    _become(worker_command(settings, queues=parse_queues(queues), concurrency=concurrency))


def beat() -> None:
    """Run Celery beat (the periodic tasks: policies, reaper, rollouts, outbox, retention) until SIGTERM.

    Run exactly one beat per deployment: two would queue every periodic task twice."""
    settings = get_settings()
    settings.ensure_dirs()
    _become(beat_command(settings))
