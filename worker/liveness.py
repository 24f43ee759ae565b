"""A running delivery's liveness: its heartbeat thread, and the checks that stop training (cancel, lost
claim, wall-clock limit, database unreachable)."""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import Self

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from core import jobs
from core.db import session_scope
from core.models import utcnow

log = logging.getLogger(__name__)


class Liveness:
    """Heartbeat thread + stop checks for one running delivery.

    The thread proves the worker is alive even during long phases without
    steps (loading, reference log-probs, evaluation). ``should_stop`` is asked
    before every training step: it says stop when a cancel was requested, the
    job was taken from this delivery (reaped), the job's wall-clock limit has
    passed, or the database cannot be reached (then the task retries and the
    next attempt resumes from the checkpoint, rather than training blind).
    """

    def __init__(self, engine: Engine, *, job_id: str, token: str, interval_s: float, deadline: datetime) -> None:
        self.engine, self.job_id, self.token, self.interval_s = engine, job_id, token, interval_s
        self.deadline = deadline
        self.lost: str | None = None
        self.unreachable: OperationalError | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id[:8]}", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_heartbeat()

    def stop_heartbeat(self) -> None:
        """Before the publish: from its commit on the job is no longer ours to beat for."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                with session_scope(self.engine) as s:
                    jobs.heartbeat(s, job_id=self.job_id, token=self.token)
            except jobs.LostClaim as exc:
                self.lost = exc.message
                log.warning("job %s: %s; stopping", self.job_id, exc.message)
                return
            except OperationalError as exc:  # the database blinked: try again next beat
                log.warning("job %s: heartbeat failed: %s", self.job_id, exc.orig)

    @property
    def timed_out(self) -> bool:
        return utcnow() > self.deadline

    def should_stop(self) -> bool:
        if self.lost or self.timed_out:
            return True
        try:
            with session_scope(self.engine) as s:
                return jobs.is_cancel_requested(s, job_id=self.job_id)
        except OperationalError as exc:
            log.warning("job %s: cannot read the cancel flag (%s); stopping this delivery", self.job_id, exc.orig)
            self.unreachable = exc
            return True
