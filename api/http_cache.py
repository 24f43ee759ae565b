"""Strong ETags from content hashes, and If-None-Match -> 304."""

from __future__ import annotations

from fastapi import Request, Response


def quoted(sha256: str) -> str:
    return f'"{sha256}"'


def not_modified(request: Request, sha256: str) -> Response | None:
    """A 304 when If-None-Match names this ETag (or is ``*``); None otherwise."""
    header = request.headers.get("if-none-match")
    if header is None:
        return None
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    if "*" in tags or quoted(sha256) in tags:
        return Response(status_code=304, headers={"ETag": quoted(sha256)})
    return None
