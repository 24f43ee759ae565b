"""A small REST client for the CLI: the key comes from Settings, the URL from core.instance."""

from __future__ import annotations

from typing import Any

import httpx

from core.instance import client_base_url
from core.settings import Settings, get_settings


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def _unreachable(url, exc: Exception) -> str:
    return (f"cannot reach the API at {url} ({exc}): is `prospect up` running? Run the CLI with the same "
            "PROSPECT_DATA_DIR, or set PROSPECT_API_URL to the URL it printed")


class Client:
    def __init__(self, settings: Settings | None = None, *, timeout_s: float = 30.0) -> None:
        settings = settings or get_settings()
        if not settings.api_key:
            raise ApiError(0, "set PROSPECT_API_KEY to an API key: the one `prospect up` printed on first start, "
                              "or a new one from `prospect keys create --name me --scopes admin`")
        self._http = httpx.Client(
            base_url=client_base_url(settings),
            headers={"Authorization": f"Bearer {settings.api_key}"},
            timeout=timeout_s,
        )

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(0, _unreachable(self._http.base_url, exc)) from exc
        if resp.status_code >= 400:
            try:
                message = resp.json().get("detail", resp.text)
            except ValueError:
                message = resp.text
            raise ApiError(resp.status_code, str(message))
        return resp

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs).json()

    def post(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        return self.request("POST", path, json=json, **kwargs).json()

    def put(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        return self.request("PUT", path, json=json, **kwargs).json()

    def stream_to(self, path: str, dest, **kwargs: Any) -> httpx.Response:
        """Stream a GET response body into the open binary file ``dest``."""
        try:
            with self._http.stream("GET", path, **kwargs) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise ApiError(resp.status_code, resp.text)
                for chunk in resp.iter_bytes():
                    dest.write(chunk)
                return resp
        except httpx.HTTPError as exc:
            raise ApiError(0, _unreachable(self._http.base_url, exc)) from exc
