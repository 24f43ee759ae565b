"""Domain errors. api/errors.py maps each class to one HTTP status, in one place."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Base class: ``message`` is safe to show to the client."""

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFound(DomainError):
    pass


class Conflict(DomainError):
    pass


class InvalidInput(DomainError):
    pass


class PayloadTooLarge(DomainError):
    pass


class IncompleteRequest(DomainError):
    """The client went away before sending the whole request: a 400 nobody reads, not a server error."""


class Unauthorized(DomainError):
    pass


class Forbidden(DomainError):
    pass


class RateLimited(DomainError):
    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(DomainError):
    """A dependency (database, broker) is down; the client should retry."""

    def __init__(self, message: str, *, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after
