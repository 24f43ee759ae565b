"""Coalesces the concurrent ``POST /v1/feedback`` requests of one API process into group commits.

A request hands its validated event to the process's GroupCommitter and waits. While
``writers`` groups are being written (each in a thread), newly arrived events queue; when a
write ends, its writer takes everything queued (up to ``max_events``) as its next group. So a
lone request is written at once, as before, and under load one transaction serves many
requests instead of one each. At most ``max_queued`` events wait: beyond, a request is refused
with 503 and Retry-After before anything is written, so a flood while the database is slow
cannot grow memory without bound. Each
request is answered from its own outcome, only after the group's commit returned
(``core.feedback_group``): a 2xx is never sent for an event that is not committed.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from core import metrics
from core.errors import Unavailable
from core.feedback import IngestResult, PreparedEvent
from core.feedback_group import Outcome, ingest_group


class GroupCommitter:
    """One per event loop (``for_loop``): its futures belong to that loop."""

    def __init__(self, engine: Engine, *, max_events: int, writers: int = 1, max_queued: int = 5000) -> None:
        self.engine = engine
        self.max_events = max_events
        self.max_queued = max_queued
        self.writers = writers
        self.loop = asyncio.get_running_loop()
        self._queue: list[tuple[PreparedEvent, asyncio.Future[Outcome]]] = []
        self._running = 0
        self._tasks: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks
        self.groups = 0  # groups written (for tests and metrics)

    async def ingest(self, prepared: PreparedEvent) -> IngestResult:
        """The event's outcome once its group is committed; raises what kept it from being stored."""
        if len(self._queue) >= self.max_queued:
            raise Unavailable(f"{len(self._queue)} events already wait for the database; nothing was written, "
                              "retry later", retry_after=1)
        future: asyncio.Future[Outcome] = self.loop.create_future()
        self._queue.append((prepared, future))
        if self._running < self.writers:
            self._running += 1
            task = self.loop.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        outcome = await future
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def _drain(self) -> None:
        try:
            while self._queue:
                group = self._queue[: self.max_events]
                del self._queue[: self.max_events]
                try:
                    outcomes: list[Outcome] = await run_in_threadpool(
                        ingest_group, self.engine, [p for p, _ in group])
                except asyncio.CancelledError:
                    # The loop is going away: these requests get no answer at all, never a guess.
                    for _, future in group:
                        future.cancel()
                    raise
                except Exception as exc:  # noqa: BLE001 - a bug, not a database outcome: every request sees it
                    outcomes = [exc] * len(group)
                self.groups += 1
                metrics.ingest_group(len(group))
                for (_, future), outcome in zip(group, outcomes, strict=True):
                    if not future.done():  # its request may have been cancelled (client gone)
                        future.set_result(outcome)
        finally:
            self._running -= 1


def for_loop(state, engine: Engine, *, max_events: int, writers: int, max_queued: int) -> GroupCommitter:
    """The committer of the running loop, kept on ``app.state`` (a new loop, as in tests, gets a new one)."""
    committer: GroupCommitter | None = getattr(state, "group_committer", None)
    if committer is None or committer.loop is not asyncio.get_running_loop():
        committer = state.group_committer = GroupCommitter(engine, max_events=max_events, writers=writers,
                                                               max_queued=max_queued)
    return committer
