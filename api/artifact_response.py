"""Answering a download from the artifact store: a file from the local disk, a stream from the
bucket through the API, or (``PROSPECT_DOWNLOAD_REDIRECT=presigned``) a 302 to a presigned URL of
the bucket, so large files bypass the API. The ETag is the content's sha256 in every case."""

from __future__ import annotations

from fastapi import Response
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse

from api.http_cache import quoted
from core.artifact_store import get_store
from core.errors import NotFound
from core.settings import Settings


def artifact_response(settings: Settings, key: str, *, sha256: str, filename: str, media_type: str | None = None,
                      missing: str, headers: dict[str, str] | None = None) -> Response:
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
        url = store.presigned_url(key, filename=filename, expires_s=settings.presigned_expires_s)
        return RedirectResponse(url, status_code=302, headers={**headers, "Cache-Control": "no-store"})
    return StreamingResponse(store.iter_chunks(key), media_type=media_type or "application/octet-stream", headers={
        **headers, "Content-Length": str(entry.size), "Content-Disposition": f'attachment; filename="{filename}"'})
