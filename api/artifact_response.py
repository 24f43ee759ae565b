"""Answering a download from the artifact store: a file from the local disk, a stream from the
bucket through the API, or (``PROSPECT_DOWNLOAD_REDIRECT=presigned``) a 302 to a presigned URL of
the bucket, so large files bypass the API. The ETag is the content's sha256 in every case.

Both stores answer with the same headers, and a single byte range the same way (``api.byte_range``):
206 with only those bytes read (a seek on disk, a ranged GetObject on a bucket), or 416.

A HEAD gets the GET's status and headers without a body, and nothing of the body is read: a local
file is only stat'ed, an object only HEAD'ed, and a redirect points at a URL signed for HEAD."""

from __future__ import annotations

from email.utils import formatdate
from mimetypes import guess_type

from fastapi import Request, Response
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from api.byte_range import Unsatisfiable, requested_range, unsatisfiable
from api.http_cache import quoted
from core.artifact_store import get_store
from core.errors import NotFound
from core.settings import Settings


class _WholeFile(FileResponse):
    """The whole file (sent by the server's fast path): the Range was decided by ``requested_range``, by the
    bucket's rules, not by Starlette's own (which answers several ranges, and a malformed one with 400)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k != b"range"]}
        await super().__call__(scope, receive, send)


def headers_only(request: Request, response: Response) -> Response:
    """For a HEAD, a streamed response's status and headers without its body (its iterator is never started,
    so nothing is opened); any other response as it is (a FileResponse answers a HEAD itself)."""
    if request.method != "HEAD" or not isinstance(response, StreamingResponse):
        return response
    head = Response(status_code=response.status_code)
    head.raw_headers = list(response.raw_headers)  # the GET's, not an empty body's Content-Length: 0
    return head


def artifact_response(settings: Settings, request: Request, key: str, *, sha256: str, filename: str,
                      media_type: str | None = None, missing: str, headers: dict[str, str] | None = None) -> Response:
    store = get_store(settings)
    entry = store.stat(key)
    if entry is None:
        raise NotFound(missing)
    headers = {"ETag": quoted(sha256), **(headers or {})}
    if store.local_root is None and settings.download_redirect == "presigned":
        url = store.presigned_url(key, filename=filename, expires_s=settings.presigned_expires_s,
                                  head=request.method == "HEAD")
        return RedirectResponse(url, status_code=302, headers={**headers, "Cache-Control": "no-store"})
    media_type = media_type or guess_type(filename)[0] or "application/octet-stream"
    headers.update({"Accept-Ranges": "bytes", "Last-Modified": formatdate(entry.mtime, usegmt=True),
                    "Content-Disposition": f'attachment; filename="{filename}"'})
    try:
        wanted = requested_range(request, etag=headers["ETag"], size=entry.size)
    except Unsatisfiable:
        return unsatisfiable(entry.size)
    if wanted is not None:
        first, last = wanted
        return StreamingResponse(store.iter_range(key, start=first, end=last), status_code=206,
                                 media_type=media_type, headers={
                                     **headers, "Content-Length": str(last - first + 1),
                                     "Content-Range": f"bytes {first}-{last}/{entry.size}"})
    if store.local_root is not None:
        return _WholeFile(store.local_root / key, media_type=media_type, headers=headers)
    return headers_only(request, StreamingResponse(store.iter_chunks(key), media_type=media_type,
                                                   headers={**headers, "Content-Length": str(entry.size)}))
