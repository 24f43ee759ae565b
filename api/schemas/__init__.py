"""Pydantic request/response models (separate from the SQLAlchemy tables in core/models.py)."""

import re
from datetime import datetime
from typing import Annotated

from pydantic import BeforeValidator

from core.base_models import NAME_RE

# Largest value of an INTEGER column on Postgres: a bigger one would be a database error, not a 422.
DB_INT_MAX = 2**31 - 1


def _iso_only(value):
    # Pydantic reads "0.5" as a Unix time; the schema (and the README) say ISO 8601, so only that passes.
    if isinstance(value, str) and not _ISO_DATE.match(value):
        raise ValueError("must be an ISO 8601 date or date-time, e.g. 2026-01-31 or 2026-01-31T12:00:00Z")
    return value


_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")
IsoDateTime = Annotated[datetime, BeforeValidator(_iso_only)]

# Names of adapters, base models and serving targets, as core.base_models.check_name enforces them: in the
# schema too, so a generated client never sends one the API refuses (api/errors words the 422).
NAME_PATTERN = NAME_RE.pattern
