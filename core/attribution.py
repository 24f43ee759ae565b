"""Which adapter version served a response: the ``adapter``/``adapter_version`` of a feedback event.

A client gives both, or neither; with neither, a ``model`` of the form Prospect
gives served adapters (``<adapter>-v<version>``, see :func:`served_name`) is
parsed into them. Names and versions this database does not know are stored
as given: a serving replica may know more than this database, and the
per-version stats say which are unknown.
"""

from __future__ import annotations

import re
from typing import Any

from core.errors import InvalidInput

NAME_MAX_CHARS = 200
# Greedy name: "chat-v2-v3" is adapter "chat-v2", version 3.
SERVED_NAME_RE = re.compile(r"^(?P<adapter>.+)-v(?P<version>[1-9][0-9]{0,8})$")


def served_name(adapter: str, version: int) -> str:
    """The name a serving stack knows a version by (vLLM's ``lora_name``, the chat request's ``model``)."""
    return f"{adapter}-v{version}"


def parse_served_name(model: str | None) -> tuple[str, int] | None:
    """``"support-bot-v3"`` -> ``("support-bot", 3)``; anything else -> None."""
    if not isinstance(model, str):
        return None
    m = SERVED_NAME_RE.match(model)
    return (m["adapter"], int(m["version"])) if m else None


def _bad(field: str, reason: str) -> InvalidInput:
    return InvalidInput(f"{field}: {reason}", details=[{"field": field, "message": reason}])


def resolve(*, adapter: Any, adapter_version: Any, model: str | None) -> tuple[str | None, int | None]:
    """The (adapter, version) to store for one event; raises InvalidInput naming the field."""
    if adapter is None and adapter_version is None:
        return parse_served_name(model) or (None, None)
    if adapter is None or adapter_version is None:
        missing = "adapter" if adapter is None else "adapter_version"
        raise _bad(missing, "give adapter and adapter_version together (or neither, and model as '<adapter>-v<n>')")
    if not isinstance(adapter, str) or not adapter.strip() or len(adapter) > NAME_MAX_CHARS or "\x00" in adapter:
        raise _bad("adapter", f"must be an adapter name of 1 to {NAME_MAX_CHARS} characters")
    if isinstance(adapter_version, bool) or not isinstance(adapter_version, int) or not 1 <= adapter_version < 2**31:
        raise _bad("adapter_version", "must be a positive integer (the version number, not an alias)")
    return adapter, adapter_version


def hash_fields(adapter: str | None, adapter_version: int | None) -> dict[str, Any]:
    """What the client's attribution adds to an event's content hash: nothing when it gave none, so
    the hashes of events stored before attribution existed do not change."""
    if adapter is None and adapter_version is None:
        return {}
    return {"adapter": adapter, "adapter_version": adapter_version}
