"""How a delivery's errors read: :class:`JobFailed` (the job cannot succeed) and :func:`store_phase` (the
artifact store's errors sorted into an outage, which puts the job back in the queue, and a failure)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from core.artifact_store import s3_cause, s3_errors, store_unavailable
from core.errors import Unavailable


class JobFailed(Exception):
    """The job cannot succeed; ``message`` (and ``figures``) go to the job record."""

    def __init__(self, message: str, figures: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.figures = figures


@contextmanager
def store_phase(doing: str) -> Iterator[None]:
    """The artifact store's errors while ``doing``: an outage (the store down, timing out, answering 5xx or
    throttling) raises Unavailable, so the job waits in the queue for the store (``run_job``); anything else (a
    wrong bucket, a missing key, refused credentials) fails the job, saying what it was doing."""
    try:
        yield
    except s3_errors() as exc:
        cause = s3_cause(exc)
        if store_unavailable(cause, denied=False):
            raise Unavailable(f"the artifact store cannot serve {doing} now ({type(cause).__name__}: {cause})") from exc
        raise JobFailed(f"the artifact store refused {doing}: {cause}; check PROSPECT_ARTIFACT_URL, the bucket "
                        "and the worker's credentials") from exc
