"""Sending the outbox (core.outbox) to serving targets: at least once, with exponential backoff.

One attempt: claim the row (a conditional UPDATE that also takes a lease, so
two workers never send one row at once and a worker killed mid-send loses it
when ``outbox_lease_s`` passes), commit, send outside any transaction, record
the result. Per target, rows go in outbox order (``seq``): a row is claimed
only when no earlier row of its target is pending, so a later event never
overtakes an earlier one that is failing, waiting for its retry or in flight;
an earlier row that ended ``failed`` (given up) no longer holds the line. A 2xx ends it ``delivered``; anything else schedules the next try
``outbox_backoff_s * 2**(attempts-1)`` later (at most ``outbox_max_backoff_s``)
until ``outbox_give_up_s`` after the event, when it ends ``failed``. A
receiver deduplicates on ``delivery_id``: a lost 2xx means a second send.

``webhook``: POST the payload; header ``X-Prospect-Signature: sha256=<hex
HMAC-SHA256 of the raw body with the target's secret>``.

``vllm``: bring the server to the versions routing can answer (the running
rollout's two arms, the champion, else latest) through vLLM's runtime LoRA
API: ``POST /v1/load_lora_adapter {"lora_name", "lora_path"}`` for each one
missing, ``POST /v1/unload_lora_adapter {"lora_name"}`` for each one no longer
needed. The lora path is ``<adapter_root>/<adapter>/v<version>`` on the vLLM
host. What the server was told is kept on the target, so any event (or a
retry) converges it on the current state, in whatever order they arrive.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import posixpath
from datetime import datetime, timedelta
from typing import Any

import httpx
import orjson
from sqlalchemy import Engine, exists, select, update
from sqlalchemy.orm import Session, aliased

from core import adapter_aliases, adapters, serving_compat
from core import metrics as telemetry
from core.attribution import served_name
from core.clock import db_now
from core.db import session_scope
from core.models import AdapterAlias, AdapterVersion, Delivery, Rollout, ServingTarget
from core.settings import Settings

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Prospect-Signature"
SWEEP_BATCH = 100
MAX_ERROR_CHARS = 500


class SendFailed(Exception):
    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class Refused(SendFailed):
    """Sending again cannot help (vLLM would refuse the adapter): the delivery ends ``failed`` at once."""


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def backoff_s(settings: Settings, attempts: int) -> float:
    return min(settings.outbox_max_backoff_s, settings.outbox_backoff_s * 2 ** max(0, attempts - 1))


def _first_in_line():
    """No earlier row of the same target is still pending (in backoff, or in flight): outbox order holds."""
    earlier = aliased(Delivery)
    return ~exists().where(earlier.target_id == Delivery.target_id, earlier.status == "pending",
                           earlier.seq < Delivery.seq)


def _claim(engine: Engine, delivery_id: str, now: datetime, lease_s: float) -> int | None:
    """The attempt number this worker now holds (its fence for ``_record``), or None."""
    with engine.begin() as conn:
        claimed = conn.execute(
            update(Delivery)
            .where(Delivery.id == delivery_id, Delivery.status == "pending", Delivery.next_attempt_at <= now,
                   (Delivery.lease_until.is_(None)) | (Delivery.lease_until <= now), _first_in_line())
            .values(attempts=Delivery.attempts + 1, lease_until=now + timedelta(seconds=lease_s))
        ).rowcount
        if claimed != 1:
            return None
        return conn.execute(select(Delivery.attempts).where(Delivery.id == delivery_id)).scalar_one()


# --- webhook ----------------------------------------------------------------------------------------------


def _fill_sha256(session: Session, settings: Settings, delivery: Delivery) -> None:
    """The download's sha256 is computed on first need and then kept, so retries send the same bytes."""
    p = delivery.payload
    if p.get("sha256") is not None or p.get("version") is None:
        return
    version = session.scalar(select(AdapterVersion).where(AdapterVersion.adapter_name == p["adapter"],
                                                          AdapterVersion.version == p["version"]))
    if version is not None:
        delivery.payload = {**p, "sha256": adapters.tarball_sha256(session, settings=settings, version=version)}


def _send_webhook(http: httpx.Client, target: ServingTarget, payload: dict[str, Any]) -> int:
    body = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature(target.secret, body),
               "X-Prospect-Event": payload["event"], "X-Prospect-Delivery": payload["delivery_id"]}
    return _post(http, target.url, content=body, headers=headers)


def _post(http: httpx.Client, url: str, **kwargs: Any) -> int:
    try:
        resp = http.post(url, **kwargs)
    except httpx.HTTPError as exc:
        raise SendFailed(f"{type(exc).__name__}: {exc}") from exc
    if not 200 <= resp.status_code < 300:
        raise SendFailed(f"HTTP {resp.status_code}: {resp.text[:MAX_ERROR_CHARS]}", resp.status_code)
    return resp.status_code


# --- vllm -------------------------------------------------------------------------------------------------


def needed_versions(session: Session, *, adapter_name: str) -> set[int]:
    """What routing can answer now: the running rollout's arms, and champion (else latest)."""
    needed: set[int] = set()
    rollout = session.scalar(select(Rollout).where(Rollout.adapter_name == adapter_name,
                                                   Rollout.status == "running"))
    if rollout is not None:
        needed |= {rollout.candidate_version, rollout.baseline_version}
    for alias in ("champion", adapter_aliases.LATEST):
        row = session.get(AdapterAlias, (adapter_name, alias))
        if row is not None:
            needed.add(row.version)
            break
    return needed


def _vllm_call(http: httpx.Client, url: str, body: dict, *, done_if: tuple[str, ...]) -> int:
    """One runtime-LoRA call; a 4xx saying the work is already done (loaded, or not there) counts as done."""
    try:
        return _post(http, url, json=body)
    except SendFailed as exc:
        said = str(exc).lower()
        if exc.status_code is not None and 400 <= exc.status_code < 500 and any(p in said for p in done_if):
            return exc.status_code
        raise


def _unloadable(session: Session, settings: Settings, target: ServingTarget, versions: set[int]) -> dict[int, str]:
    """The versions vLLM would refuse, with why (the publish-time verdict; older versions checked now)."""
    refused, adapter_name = {}, target.adapter_name
    for row in session.scalars(select(AdapterVersion).where(AdapterVersion.adapter_name == adapter_name,
                                                            AdapterVersion.version.in_(versions))):
        verdict = serving_compat.vllm_verdict(row.manifest) or serving_compat.check_folder(
            adapters.version_dir(settings, row), architecture=(row.manifest.get("base_model") or {}).get(
                "architecture"), base_model_name_or_path=None)
        reasons = serving_compat.reasons_for(verdict, max_lora_rank=target.max_lora_rank)
        if reasons:
            refused[row.version] = serving_compat.refuse_reason(adapter_name, row.version, reasons)
    return refused


def _sync_vllm(engine: Engine, settings: Settings, http: httpx.Client, target_id: str) -> int:
    """Load what is needed and missing, unload what is loaded and not needed; keeps progress on the target.

    A needed version vLLM cannot load is not sent (nor is anything unloaded): the others are loaded, then the
    attempt ends refused."""
    status = 200
    with session_scope(engine) as s:
        target = s.get(ServingTarget, target_id)
        needed = needed_versions(s, adapter_name=target.adapter_name)
        loaded = set(target.loaded or [])
        name, url, root = target.adapter_name, target.url, target.adapter_root
        refused = _unloadable(s, settings, target, needed - loaded)
    for version in sorted(needed - loaded - set(refused)):
        path = posixpath.join(root, name, f"v{version}")
        status = _vllm_call(http, f"{url}/v1/load_lora_adapter",
                            {"lora_name": served_name(name, version), "lora_path": path}, done_if=("already been loaded",))
        loaded.add(version)
        _save_loaded(engine, target_id, loaded)
    # With a needed version refused, what is loaded stays: routing may still answer those names.
    for version in sorted(loaded - needed) if not refused else ():
        status = _vllm_call(http, f"{url}/v1/unload_lora_adapter", {"lora_name": served_name(name, version)},
                            done_if=("cannot be found", "not found"))
        loaded.discard(version)
        _save_loaded(engine, target_id, loaded)
    if refused:
        raise Refused("; ".join(refused[v] for v in sorted(refused)))
    return status


def _save_loaded(engine: Engine, target_id: str, loaded: set[int]) -> None:
    with session_scope(engine) as s:
        s.get(ServingTarget, target_id).loaded = sorted(loaded)


# --- one attempt, and the sweep ---------------------------------------------------------------------------


def deliver(engine: Engine, *, settings: Settings, delivery_id: str, now: datetime | None = None,
            http: httpx.Client | None = None) -> str | None:
    """One attempt at one delivery, if it is due and nobody else holds it; returns its status after, or None."""
    now = now or db_now(engine)  # leases on the database's clock (core.clock)
    attempt = _claim(engine, delivery_id, now, settings.outbox_lease_s)
    if attempt is None:
        return None
    with session_scope(engine) as s:
        d = s.get(Delivery, delivery_id)
        target = s.get(ServingTarget, d.target_id)
        if target.kind == "webhook":
            _fill_sha256(s, settings, d)
        payload, kind, deleted = d.payload, target.kind, target.deleted_at is not None
    error, code, final = None, None, deleted
    if deleted:
        error = "the target was deleted"
    else:
        own = http is None
        http = http or httpx.Client(timeout=settings.outbox_timeout_s)
        try:
            code = (_send_webhook(http, target, payload) if kind == "webhook"
                    else _sync_vllm(engine, settings, http, target.id))
        except SendFailed as exc:
            error, code, final = str(exc)[:MAX_ERROR_CHARS], exc.status_code, isinstance(exc, Refused)
        finally:
            if own:
                http.close()
    status = _record(engine, settings=settings, delivery_id=delivery_id, attempt=attempt, now=now, error=error,
                     code=code, final=final)
    telemetry.delivery_attempt(kind, "retry" if status == "pending" else status)
    return status


def _record(engine: Engine, *, settings: Settings, delivery_id: str, attempt: int, now: datetime,
            error: str | None, code: int | None, final: bool) -> str:
    """The attempt's result, unless its lease passed and another worker claimed the row since (then that
    worker's attempt decides: clearing its lease would let a third send it meanwhile, out of order)."""
    with session_scope(engine) as s:
        d = s.get(Delivery, delivery_id, with_for_update=True)
        if d.attempts != attempt or d.status != "pending":
            log.warning("delivery %s: attempt %d ended after its lease (now attempt %d, %s); its result (%s) "
                        "is not recorded", d.id, attempt, d.attempts, d.status, error or "sent")
            return d.status
        d.lease_until, d.last_status_code, d.last_error = None, code, error
        if error is None:
            d.status, d.delivered_at = "delivered", now
        elif final or now >= d.created_at + timedelta(seconds=settings.outbox_give_up_s):
            d.status = "failed"
            log.warning("delivery %s (%s) given up after %d attempt(s): %s", d.id, d.event, d.attempts, error)
        else:
            d.next_attempt_at = now + timedelta(seconds=backoff_s(settings, d.attempts))
            log.info("delivery %s (%s) attempt %d failed (%s); next at %s", d.id, d.event, d.attempts, error,
                     d.next_attempt_at.isoformat(timespec="seconds"))
        return d.status


def deliver_due(engine: Engine, *, settings: Settings, now: datetime | None = None,
                http: httpx.Client | None = None) -> dict[str, str | None]:
    """One attempt at each due delivery first in its target's line (in order, at most SWEEP_BATCH); returns
    {id: status}. A row delivered here lets the next one of its target go in the same sweep."""
    now = now or db_now(engine)
    with session_scope(engine) as s:
        ids = list(s.scalars(select(Delivery.id).where(Delivery.status == "pending", Delivery.next_attempt_at <= now)
                             .order_by(Delivery.target_id, Delivery.seq).limit(SWEEP_BATCH)))
    return {i: deliver(engine, settings=settings, delivery_id=i, now=now, http=http) for i in ids}
