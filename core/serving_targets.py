"""Serving targets: the stacks told when an adapter's versions, aliases or rollouts change.

``webhook``: a POST of each event as JSON, signed with the target's secret.
``vllm``: a vLLM server with ``--enable-lora`` and runtime LoRA updates on;
Prospect keeps it holding exactly the versions routing can answer (see
core.delivery). Deleting a target is a soft delete: its deliveries stay
listable and pending ones are not sent any more.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.base_models import check_name
from core.errors import Conflict, InvalidInput, NotFound
from core.models import Delivery, ServingTarget, utcnow
from core.serving_compat import VLLM_DEFAULT_MAX_LORA_RANK, VLLM_MAX_LORA_RANKS

KINDS = ("webhook", "vllm")
MAX_LISTED_DELIVERIES = 1000


def _bad(field: str, reason: str) -> InvalidInput:
    return InvalidInput(f"{field}: {reason}", details=[{"field": field, "message": reason}])


def create_target(session: Session, *, name: str, kind: str, url: str, adapter_name: str,
                  secret: str | None = None, adapter_root: str | None = None,
                  max_lora_rank: int | None = None) -> ServingTarget:
    """Register a target; without ``secret`` one is generated (returned once by the API). Flushes."""
    for field, value in (("url", url), ("secret", secret), ("adapter_root", adapter_root)):
        if value is not None and "\x00" in value:
            raise _bad(field, "must not contain NUL (\\u0000) characters")
    check_name(name, what="serving target")
    check_name(adapter_name, what="adapter")
    if kind not in KINDS:
        raise _bad("kind", f"must be one of {', '.join(KINDS)}")
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. a bracketed host that is no IPv6 address: "http://[0]"
        raise _bad("url", "must be an absolute http:// or https:// URL") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _bad("url", "must be an absolute http:// or https:// URL")
    if kind == "vllm" and not adapter_root:
        raise _bad("adapter_root", "a vllm target needs the folder on the vLLM host that holds <adapter>/v<version>")
    if kind != "vllm" and max_lora_rank is not None:
        raise _bad("max_lora_rank", "only a vllm target has one")
    if kind == "vllm":
        max_lora_rank = VLLM_DEFAULT_MAX_LORA_RANK if max_lora_rank is None else max_lora_rank
        if max_lora_rank not in VLLM_MAX_LORA_RANKS:
            raise _bad("max_lora_rank", f"must be one of vLLM's --max-lora-rank values: "
                                        f"{', '.join(map(str, VLLM_MAX_LORA_RANKS))}")
    if secret is not None and len(secret) < 16:
        raise _bad("secret", "must be at least 16 characters (or omit it to get a generated one)")
    target = ServingTarget(name=name, kind=kind, url=url.rstrip("/"), adapter_name=adapter_name,
                           secret=secret or secrets.token_urlsafe(32), adapter_root=adapter_root, loaded=[],
                           max_lora_rank=max_lora_rank)
    try:
        with session.begin_nested():
            session.add(target)
    except IntegrityError as exc:
        raise Conflict(f"a serving target named {name!r} exists; delete it first or pick another name") from exc
    return target


def get_target(session: Session, *, target_id: str) -> ServingTarget:
    target = session.get(ServingTarget, target_id)
    if target is None or target.deleted_at is not None:
        raise NotFound(f"no serving target with id {target_id!r}")
    return target


def list_targets(session: Session) -> list[ServingTarget]:
    return list(session.scalars(select(ServingTarget).where(ServingTarget.deleted_at.is_(None))
                                .order_by(ServingTarget.created_at, ServingTarget.id)))


def delete_target(session: Session, *, target_id: str) -> ServingTarget:
    target = get_target(session, target_id=target_id)
    target.deleted_at = utcnow()
    session.flush()
    return target


def list_deliveries(session: Session, *, target_id: str, status: str | None = None,
                    limit: int = 100) -> list[Delivery]:
    """Newest first. A deleted target is gone from the API with its deliveries (404, as for the target:
    a client must not read a deleted resource's parts); the rows stay in the database."""
    get_target(session, target_id=target_id)
    stmt = select(Delivery).where(Delivery.target_id == target_id)
    if status is not None:
        stmt = stmt.where(Delivery.status == status)
    limit = max(1, min(limit, MAX_LISTED_DELIVERIES))
    return list(session.scalars(stmt.order_by(Delivery.created_at.desc(), Delivery.id).limit(limit)))


def target_out(target: ServingTarget, *, with_secret: bool = False) -> dict[str, Any]:
    out = {"id": target.id, "name": target.name, "kind": target.kind, "url": target.url,
           "adapter": target.adapter_name, "adapter_root": target.adapter_root, "max_lora_rank": target.max_lora_rank,
           "loaded": target.loaded,
           "created_at": target.created_at}
    if with_secret:
        out["secret"] = target.secret
    return out
