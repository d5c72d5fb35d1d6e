"""A small Label Studio HTTP client (stdlib only): both token kinds, retries, preflight.

Legacy tokens go in `Authorization: Token <key>`. Personal access tokens (JWT refresh
tokens, the default for new organisations) are exchanged at `/api/token/refresh` for a
short-lived access token sent as `Authorization: Bearer <access>`. Tokens are never printed.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from semcorr.errors import SemcorrError

TRANSIENT = {429, 500, 502, 503, 504}


class HTTPStatusError(SemcorrError):
    """The server answered with an error status (`status`, and its `detail` message)."""

    def __init__(self, message: str, status: int, detail: str) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


def reply_detail(body: bytes) -> str:
    """The server's error message, whole but on one line: JSON `detail` (or the JSON), else the text."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        detail = parsed.get("detail", parsed.get("message", parsed.get("error")))
        text = json.dumps(parsed, ensure_ascii=False) if detail is None else str(detail)
    elif parsed is not None:
        text = json.dumps(parsed, ensure_ascii=False)
    elif text.lstrip().lower().startswith(("<!doctype", "<html")):
        text = "an HTML page"
    text = " ".join(text.split())
    return text if len(text) <= 500 else text[:500] + " [...]"


def token_kind(token: str) -> str:
    """'personal' for a JWT (three dot-separated parts), else 'legacy'."""
    return "personal" if token.count(".") == 2 else "legacy"


def _reason(exc: BaseException) -> str:
    """A short, token-free reason for a connection failure."""
    if isinstance(exc, http.client.IncompleteRead):
        return f"the answer was cut off after {len(exc.partial)} bytes"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    reason = getattr(exc, "reason", None) or exc
    return f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__


@dataclass
class LabelStudio:
    """Connection to one Label Studio server."""

    url: str
    token: str = field(repr=False)
    retries: int = 4
    backoff: float = 0.5
    timeout: float = 30.0
    _access: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, url: str | None = None, token: str | None = None) -> LabelStudio:
        """URL and token from arguments or LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY."""
        url = url or os.environ.get("LABEL_STUDIO_URL")
        token = token or os.environ.get("LABEL_STUDIO_API_KEY")
        if not url or not token:
            raise SemcorrError("Label Studio connection: give --url and --token, or set LABEL_STUDIO_URL and "
                               "LABEL_STUDIO_API_KEY (see `semcorr review server`)")
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise SemcorrError(f"--url {url!r}: not an http(s) URL; write it like http://127.0.0.1:8080")
        token = token.strip()
        if any(c.isspace() for c in token):
            raise SemcorrError("--token: the token contains white space; copy it again without spaces or line breaks")
        return cls(url=url.rstrip("/"), token=token)

    def _authorization(self) -> str:
        if token_kind(self.token) == "legacy":
            return f"Token {self.token}"
        if self._access is None:
            answer = self._send("POST", "/api/token/refresh", {"refresh": self.token}, auth=False)
            self._access = answer.get("access") if isinstance(answer, dict) else None
            if not self._access:
                raise SemcorrError(f"{self.url}: the personal access token was refused; create a new one")
        return f"Bearer {self._access}"

    def _send(self, method: str, path: str, body: Any = None, auth: bool = True, raw: bool = False) -> Any:
        url = path if path.startswith("http") else f"{self.url}{path}"
        where = f"{self.url}: {method} {urllib.parse.urlparse(url).path}"
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(url, data=data, method=method)
            request.add_header("Content-Type", "application/json")
            if auth:
                request.add_header("Authorization", self._authorization())
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = response.read()
            except urllib.error.HTTPError as exc:
                if exc.code in TRANSIENT and attempt < self.retries:
                    time.sleep(self.backoff * 2 ** attempt)
                    continue
                try:
                    detail = reply_detail(exc.read())
                except (OSError, http.client.HTTPException):
                    detail = "(the reply was cut off)"
                if self.token:
                    detail = detail.replace(self.token, "[token]")
                raise HTTPStatusError(f"{where} answered {exc.code}: {detail}", exc.code, detail) from None
            except (http.client.HTTPException, urllib.error.URLError, TimeoutError, OSError) as exc:
                # HTTPException: IncompleteRead, RemoteDisconnected, BadStatusLine (the server died mid-answer)
                if attempt < self.retries:
                    time.sleep(self.backoff * 2 ** attempt)
                    continue
                raise SemcorrError(f"{where}: Label Studio is not reachable or stopped answering "
                                   f"({_reason(exc)}); check that it runs (`semcorr review server`) and --url, then "
                                   "run the command again") from None
            if raw:
                return payload
            try:
                return json.loads(payload) if payload else None
            except ValueError:
                raise SemcorrError(f"{where}: the answer is not JSON ({reply_detail(payload)[:80]}); check that "
                                   "--url points at Label Studio") from None
        raise AssertionError("unreachable")

    def get_raw(self, path: str) -> bytes:
        """The body of a GET as bytes (e.g. an image the server serves)."""
        return self._send("GET", path, raw=True)

    def get(self, path: str) -> Any:
        return self._send("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self._send("POST", path, body)

    def patch(self, path: str, body: Any) -> Any:
        return self._send("PATCH", path, body)

    def preflight(self, image_url: str | None = None) -> list[str]:
        """Problems found, one line each (empty when all is well): server, token, image access."""
        problems = []
        try:
            self._send("GET", "/health", auth=False)
        except SemcorrError as exc:
            return [f"server: {exc}"]
        try:
            who = self.get("/api/current-user/whoami")
            if not isinstance(who, dict) or "id" not in who:
                problems.append("token: the server did not say who the token belongs to")
        except HTTPStatusError as exc:
            kind = token_kind(self.token)
            if exc.status not in (401, 403):
                return [f"token ({kind}): the server answered {exc.status} ({exc.detail})"]
            if "legacy" in exc.detail.lower() and "disabled" in exc.detail.lower():
                hint = ("legacy tokens are disabled for this organisation: use a personal access token (Account & "
                        "Settings) or enable legacy tokens in the organisation's settings")
            elif kind == "legacy":
                hint = ("the token is wrong: copy the Access Token from Account & Settings, or the `token` of "
                        "`semcorr review server`'s credentials file")
            else:
                hint = "the personal access token is wrong or revoked: create a new one in Account & Settings"
            problems.append(f"token ({kind}): refused ({exc.detail}); {hint}")
            return problems
        except SemcorrError as exc:
            return [f"token ({token_kind(self.token)}): {exc}"]
        if image_url is not None:
            try:
                self._send("GET", image_url, raw=True)
            except SemcorrError as exc:
                problems.append(f"image: the server cannot serve {image_url} ({str(exc)[-80:]}); enable local file "
                                "serving (LOCAL_FILES_SERVING_ENABLED=true, LOCAL_FILES_DOCUMENT_ROOT above the images)")
        return problems

    def all_tasks(self, project_id: int) -> list[dict]:
        """Every task of a project (paged)."""
        tasks, page = [], 1
        while True:
            answer = self.get(f"/api/tasks?project={project_id}&page={page}&page_size=500&fields=all")
            batch = answer.get("tasks", []) if isinstance(answer, dict) else answer
            tasks.extend(batch)
            total = answer.get("total") if isinstance(answer, dict) else None
            # Label Studio answers 404 for a page past the end, so stop on the total when it is given
            if len(batch) < 500 or (total is not None and len(tasks) >= total):
                return tasks
            page += 1
