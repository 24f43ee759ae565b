"""Times given by clients: ISO 8601 only. Pydantic would also read a number (or "0.5") as a Unix time;
the schema and the README say ISO 8601, so only that passes."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from pydantic import BeforeValidator

_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")
ISO_RULE = "must be an ISO 8601 date or date-time, e.g. 2026-01-31 or 2026-01-31T12:00:00Z"


def iso_only(value):
    if isinstance(value, datetime) or value is None:
        return value
    if not isinstance(value, str) or not _ISO_DATE.match(value):
        raise ValueError(ISO_RULE)
    return value


IsoDateTime = Annotated[datetime, BeforeValidator(iso_only)]
