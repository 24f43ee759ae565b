"""Helpers for the worker suites: feedback that a tiny model can learn, real worker processes, polling.

Imported as ``tests.worker.jobkit`` (the repository root is on pytest's pythonpath).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.db import session_scope
from core.keys import create_key
from core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

# The same two answers for every prompt: an adapter that learns "up = the helpful one" on the
# training prompts gets a positive reward margin on held-out prompts too.
GOOD = "Sure! Here is a short answer to your question."
BAD = "I am sorry, I cannot help with that request."
TOPICS = ["the sea", "the moon", "France", "Paris", "a fox", "a dog", "two plus two", "three times three",
          "a haiku", "this text", "the feedback", "a question"]

# Fast, deterministic training on the tiny model (a random LoRA on a random base learns fast).
TINY_CONFIG = {"learning_rate": 0.02, "max_steps": 12, "batch_size": 4, "max_length": 64, "lora_r": 4,
               "lora_alpha": 8, "lora_dropout": 0.0, "warmup_ratio": 0.0, "beta": 0.5}


def feedback_events(n_prompts: int = 24, *, tag: str = "t") -> list[dict]:
    """Two judged responses per prompt: the helpful one up, the refusal down (some as chat messages)."""
    events = []
    for i in range(n_prompts):
        question = f"Tell me about {TOPICS[i % len(TOPICS)]}, please ({i})."
        prompt: dict[str, Any] = (
            {"messages": [{"role": "user", "content": question}]} if i % 3 == 0 else {"prompt": question}
        )
        events.append({"event_id": f"{tag}-{i}-up", **prompt, "response": GOOD, "label": "up"})
        events.append({"event_id": f"{tag}-{i}-down", **prompt, "response": BAD, "label": "down"})
    return events


def api_keys(engine) -> dict[str, dict]:
    keys = {}
    with session_scope(engine) as s:
        for scopes in ("ingest", "train,read", "admin"):
            _, plaintext = create_key(s, name=scopes, scopes=scopes)
            keys[scopes.split(",")[0]] = {"Authorization": f"Bearer {plaintext}"}
    return keys


def post_feedback(client, headers: dict, events: list[dict]) -> None:
    resp = client.post("/v1/feedback/batch", headers=headers, json={"events": events})
    assert resp.status_code == 200, resp.text
    assert resp.json()["created"] == len(events), resp.text


def worker_env(settings: Settings, **extra: Any) -> dict[str, str]:
    env = {
        **os.environ,
        "PROSPECT_DATA_DIR": str(settings.data_dir),
        "PROSPECT_DATABASE_URL": settings.sqlalchemy_url,
        "PROSPECT_BROKER_URL": settings.celery_broker_url,
        "PROSPECT_RESULT_BACKEND": settings.celery_result_backend,
        "PROSPECT_REGISTER_BUNDLED_MODEL": "true" if settings.register_bundled_model else "false",
        "PROSPECT_HEARTBEAT_INTERVAL_S": str(settings.heartbeat_interval_s),
        "PROSPECT_HEARTBEAT_TIMEOUT_S": str(settings.heartbeat_timeout_s),
        "PROSPECT_CHECKPOINT_EVERY_STEPS": str(settings.checkpoint_every_steps),
        "PROSPECT_JOB_MAX_ATTEMPTS": str(settings.job_max_attempts),
        "PROSPECT_LOG_LEVEL": "INFO",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    env.update({f"PROSPECT_{k.upper()}": str(v) for k, v in extra.items()})
    return env


class Worker:
    """A real ``celery -A worker.celery_app worker`` process (prefork pool), logging to a file."""

    def __init__(self, settings: Settings, name: str, *, concurrency: int = 1, queues: str = "training,default",
                 env: dict[str, Any] | None = None):
        self.log_path = settings.data_dir.parent / f"worker-{name}.log"
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", queues,
             "--concurrency", str(concurrency), "--loglevel", "INFO", "-n", f"{name}-{os.getpid()}@%h",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT, env=worker_env(settings, **(env or {})), stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once: no shutdown, no message restored."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGQUIT)  # cold shutdown: tests do not wait for tasks
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self._log.close()

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]


def wait_for(predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.25,
             on_timeout: Callable[[], str] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    detail = on_timeout() if on_timeout else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{detail}")


def closed_port() -> int:
    """A loopback port nothing listens on: a store's endpoint there refuses every connection (an outage)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TaskRetries:
    """``worker.tasks.run_job`` with its ``self.retry`` recorded and raised at once (no broker)."""

    def __init__(self, monkeypatch) -> None:
        from worker import tasks

        self.calls: list[dict] = []
        monkeypatch.setattr(tasks.run_job, "retry", self._retry)

    def _retry(self, **kwargs):
        from celery.exceptions import Retry

        self.calls.append(kwargs)
        return Retry("retry", when=kwargs.get("countdown"))

    def deliver(self, job_id: str) -> None:
        """One delivery of the task, which the task retries as a transient outage (Unavailable)."""
        import pytest
        from celery.exceptions import Retry

        from core.errors import Unavailable
        from worker import tasks

        before = len(self.calls)
        with pytest.raises(Retry):
            tasks.run_job(job_id)
        assert len(self.calls) == before + 1
        call = self.calls[-1]
        assert (call["countdown"], call["max_retries"]) == (tasks.TRANSIENT_BACKOFF_S, tasks.TRANSIENT_RETRIES)
        assert isinstance(call["exc"], Unavailable), call["exc"]
