"""Adapter aliases: resolving a version or alias, reading aliases and their history, moving them.

``latest`` follows publishing (``core.adapter_publish``) and cannot be moved by hand. Any other
alias (``champion``, ``staging`` ...) is moved with :func:`move_alias`, a
compare-and-swap: with ``expected_version`` the move happens only when the
alias points there now (a missing alias never matches: 409); without it the
move is unconditional and creates the alias if needed. Every move is kept in
the alias history; moving to the version it already points to is a no-op.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import outbox, serving_compat
from core.base_models import check_name
from core.errors import Conflict, InvalidInput, NotFound
from core.models import AdapterAlias, AdapterVersion, AliasHistory, utcnow

LATEST = "latest"


def resolve_version(session: Session, *, adapter_name: str, version_or_alias: str | int) -> AdapterVersion:
    """An integer (or all-digit string) is a version number; anything else is an alias."""
    ref = str(version_or_alias)
    if ref.isascii() and ref.isdecimal():  # isdigit() accepts "²", which int() refuses
        if len(ref) > 9:
            raise NotFound(f"adapter {adapter_name!r} has no version {ref}")
        version = int(ref)
    else:
        alias = session.get(AdapterAlias, (adapter_name, ref))
        if alias is None:
            raise NotFound(f"adapter {adapter_name!r} has no alias {ref!r}")
        version = alias.version
    row = session.scalar(select(AdapterVersion).where(AdapterVersion.adapter_name == adapter_name,
                                                      AdapterVersion.version == version))
    if row is None:
        raise NotFound(f"adapter {adapter_name!r} has no version {version}")
    return row


def aliases_of(session: Session, *, adapter_name: str) -> dict[str, int]:
    return {a.alias: a.version for a in session.scalars(
        select(AdapterAlias).where(AdapterAlias.adapter_name == adapter_name).order_by(AdapterAlias.alias))}


def alias_history(session: Session, *, adapter_name: str, alias: str) -> list[AliasHistory]:
    rows = list(session.scalars(select(AliasHistory).where(AliasHistory.adapter_name == adapter_name,
                                                           AliasHistory.alias == alias).order_by(AliasHistory.id)))
    if not rows:
        raise NotFound(f"adapter {adapter_name!r} has no alias {alias!r}")
    return rows


def _set_alias(session: Session, *, adapter_name: str, alias: str, version: int, moved_by: str | None,
               expected_version: int | None = None) -> AdapterAlias:
    current = session.scalar(select(AdapterAlias).where(AdapterAlias.adapter_name == adapter_name,
                                                        AdapterAlias.alias == alias).with_for_update())
    if expected_version is not None and (current is None or current.version != expected_version):
        now = "does not exist yet" if current is None else f"points to version {current.version}"
        raise Conflict(
            f"alias {alias!r} of adapter {adapter_name!r} {now}, not to the expected version {expected_version}; "
            "read it again and retry, or omit expected_version to move it unconditionally"
        )
    if current is not None and current.version == version:
        return current
    try:
        with session.begin_nested():
            if current is None:
                current = AdapterAlias(adapter_name=adapter_name, alias=alias, version=version, updated_at=utcnow())
                session.add(current)
                from_version = None
            else:
                from_version, current.version, current.updated_at = current.version, version, utcnow()
            session.add(AliasHistory(adapter_name=adapter_name, alias=alias, from_version=from_version,
                                     to_version=version, moved_by=moved_by))
    except IntegrityError as exc:  # two unconditional creates of one alias at once (Postgres)
        raise Conflict(f"alias {alias!r} of adapter {adapter_name!r} was created concurrently; retry") from exc
    outbox.emit(session, event="alias.moved", adapter_name=adapter_name, version=version, alias=alias,
                previous_version=from_version)
    return current


def move_alias(
    session: Session,
    *,
    adapter_name: str,
    alias: str,
    version: int,
    expected_version: int | None = None,
    moved_by: str | None,
) -> AdapterAlias:
    """Point ``alias`` at ``version`` (compare-and-swap with ``expected_version``); flushes, caller commits."""
    if alias[:1].isdigit():
        raise InvalidInput(f"invalid alias {alias!r}: it must start with a letter (a number names a version)")
    check_name(alias, what="alias")
    if alias == LATEST:
        raise InvalidInput("'latest' always points to the newest version and moves only when one is published; "
                           "pin a version with another alias, e.g. 'champion'")
    row = resolve_version(session, adapter_name=adapter_name, version_or_alias=int(version))
    serving_compat.require_servable(session, row)
    return _set_alias(session, adapter_name=adapter_name, alias=alias, version=version, moved_by=moved_by,
                      expected_version=expected_version)
