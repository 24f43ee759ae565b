"""Answering a download from the artifact store: a file from the local disk, a stream from the
bucket through the API, or (``PROSPECT_DOWNLOAD_REDIRECT=presigned``) a 302 to a presigned URL of
the bucket, so large files bypass the API. The ETag is the content's sha256 in every case.

A HEAD gets the GET's status and headers without a body, and nothing of the body is read: a local
file is only stat'ed, an object only HEAD'ed, and a redirect points at a URL signed for HEAD."""

from __future__ import annotations

from fastapi import Request, Response
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse

from api.http_cache import quoted
from core.artifact_store import get_store
from core.errors import NotFound
from core.settings import Settings


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
    headers = {"ETag": quoted(sha256), **(headers or {})}
    if store.local_root is not None:
        path = store.local_root / key
        if not path.is_file():
            raise NotFound(missing)
        return FileResponse(path, media_type=media_type, filename=filename, headers=headers)
    entry = store.stat(key)
    if entry is None:
        raise NotFound(missing)
    if settings.download_redirect == "presigned":
        url = store.presigned_url(key, filename=filename, expires_s=settings.presigned_expires_s,
                                  head=request.method == "HEAD")
        return RedirectResponse(url, status_code=302, headers={**headers, "Cache-Control": "no-store"})
    return headers_only(request, StreamingResponse(
        store.iter_chunks(key), media_type=media_type or "application/octet-stream", headers={
            **headers, "Content-Length": str(entry.size), "Content-Disposition": f'attachment; filename="{filename}"'}))
