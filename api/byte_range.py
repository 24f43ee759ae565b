"""Single byte ranges of a download (RFC 9110 §14), decided here for every store so a file on disk and an
object in a bucket answer alike: ``Range: bytes=a-b``, ``bytes=a-`` or ``bytes=-n`` on a GET gives 206
with Content-Range; a range that starts past the end (or an empty suffix) gives 416.

Several ranges, another unit or a malformed value are ignored (the whole body, 200), as the RFC allows;
so is a Range with an If-Range that is not the current strong ETag (the client's copy is stale)."""

from __future__ import annotations

import re

from fastapi import Request
from fastapi.responses import JSONResponse

from api.errors import error_body

SINGLE = re.compile(r"bytes\s*=\s*(\d*)\s*-\s*(\d*)", re.IGNORECASE)


class Unsatisfiable(Exception):
    pass


def requested_range(request: Request, *, etag: str, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) byte a GET asks for, or None for the whole body; Unsatisfiable for a
    range wholly past the end."""
    header = request.headers.get("range")
    if request.method != "GET" or header is None:
        return None  # HEAD included: the RFC defines ranges for GET only
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range.strip() != etag:
        return None
    match = SINGLE.fullmatch(header.strip())
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":  # the last n bytes
        if int(last) == 0 or size == 0:
            raise Unsatisfiable
        return max(size - int(last), 0), size - 1
    if last != "" and int(last) < int(first):
        return None  # invalid, hence ignored
    if int(first) >= size:
        raise Unsatisfiable
    return int(first), size - 1 if last == "" else min(int(last), size - 1)


def unsatisfiable(size: int) -> JSONResponse:
    return JSONResponse(error_body(f"the range starts past the end of the {size} bytes"), status_code=416,
                        headers={"Content-Range": f"bytes */{size}"})
