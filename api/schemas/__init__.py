"""Pydantic request/response models (separate from the SQLAlchemy tables in core/models.py)."""

from core.base_models import NAME_RE
from core.isotime import IsoDateTime  # noqa: F401 - re-exported for the routers

# Largest value of an INTEGER column on Postgres: a bigger one would be a database error, not a 422.
DB_INT_MAX = 2**31 - 1

# Names of adapters, base models and serving targets, as core.base_models.check_name enforces them: in the
# schema too, so a generated client never sends one the API refuses (api/errors words the 422).
NAME_PATTERN = NAME_RE.pattern
# Text the database can store: Postgres refuses NUL (\u0000) in text columns.
NO_NUL = r"^[^\x00]*$"
# Text that must say something: not blank, no NUL.
TEXT_PATTERN = r"^[^\x00]*[^\s\x00][^\x00]*$"

# A feedback event's client idempotency key (core.feedback.EVENT_ID_RE).
EVENT_ID_PATTERN = r"^[A-Za-z0-9._~:@+=-]{1,200}$"

# How api/errors words a pattern mismatch (pydantic would print the regex).
PATTERN_RULES = {
    NO_NUL: "must not contain NUL (\\u0000) characters",
    TEXT_PATTERN: "must not be empty or blank, nor contain NUL (\\u0000) characters",
    EVENT_ID_PATTERN: "must be 1 to 200 characters out of A-Z a-z 0-9 . _ ~ : @ + = -",
}
