"""A small Label Studio HTTP client (stdlib only): both token kinds, retries, preflight.

Legacy tokens go in `Authorization: Token <key>`. Personal access tokens (JWT refresh
tokens, the default for new organisations) are exchanged at `/api/token/refresh` for a
short-lived access token sent as `Authorization: Bearer <access>`. Tokens are never printed.
"""

from __future__ import annotations

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


def token_kind(token: str) -> str:
    """'personal' for a JWT (three dot-separated parts), else 'legacy'."""
    return "personal" if token.count(".") == 2 else "legacy"


@dataclass
class LabelStudio:
    """Connection to one Label Studio server."""

    url: str
    token: str
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
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(url, data=data, method=method)
            request.add_header("Content-Type", "application/json")
            if auth:
                request.add_header("Authorization", self._authorization())
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = response.read()
                    return payload if raw else (json.loads(payload) if payload else None)
            except urllib.error.HTTPError as exc:
                if exc.code in TRANSIENT and attempt < self.retries:
                    time.sleep(self.backoff * 2 ** attempt)
                    continue
                detail = exc.read()[:200].decode(errors="replace")
                raise SemcorrError(f"{self.url}: {method} {urllib.parse.urlparse(url).path} answered {exc.code}: "
                                   f"{detail}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                if attempt < self.retries:
                    time.sleep(self.backoff * 2 ** attempt)
                    continue
                reason = getattr(exc, "reason", exc)
                raise SemcorrError(f"{self.url}: Label Studio is not reachable ({reason}); start it with "
                                   "`semcorr review server` or check --url") from None
        raise AssertionError("unreachable")

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
        except SemcorrError as exc:
            kind = token_kind(self.token)
            hint = ("legacy tokens are disabled for new organisations: use a personal access token or start the "
                    "server with --enable-legacy-api-token") if kind == "legacy" else "create a new personal access token"
            problems.append(f"token ({kind}): refused ({str(exc).split(': ', 1)[-1][:80]}); {hint}")
            return problems
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
