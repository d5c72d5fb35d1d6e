"""Label Studio through its maintained client, `label-studio-sdk` 2.x: one-line errors, preflight.

The SDK does the work: both token kinds (a legacy key goes in `Authorization: Token`, a
personal access token, a JWT refresh token, is exchanged at `/api/token/refresh` for short-lived
access tokens, refreshed when they expire), retries with exponential backoff on connection
errors and 408/409/429/5xx answers, paging, import and export. This module adds only what
the SDK leaves to its callers, each said where it is done: SDK exceptions (`ApiError`, httpx
errors, multi-line and carrying response headers) become one token-free `SemcorrError` line;
`preflight` names each failed check; `all_tasks` stops paging at the total. Tokens are never
printed.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from semcorr.errors import SemcorrError


class HTTPStatusError(SemcorrError):
    """The server answered with an error status (`status`, and its `detail` message)."""

    def __init__(self, message: str, status: int, detail: str) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


def reply_detail(body: Any) -> str:
    """The server's error message, whole but on one line: JSON `detail` (or the JSON), else the text."""
    import json

    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    parsed = body
    if isinstance(body, str):
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
    if isinstance(parsed, dict):
        detail = parsed.get("detail", parsed.get("message", parsed.get("error")))
        text = json.dumps(parsed, ensure_ascii=False) if detail is None else str(detail)
    elif parsed is not None:
        text = json.dumps(parsed, ensure_ascii=False)
    else:
        text = str(body or "").strip()
        if text.lstrip().lower().startswith(("<!doctype", "<html")):
            text = "an HTML page"
    text = " ".join(text.split())
    return text if len(text) <= 500 else text[:500] + " [...]"


def token_kind(token: str) -> str:
    """'personal' for a JWT (three dot-separated parts), else 'legacy'."""
    return "personal" if token.count(".") == 2 else "legacy"


def _reason(exc: BaseException) -> str:
    """A short, token-free reason for a connection failure (httpx's own words, named plainly)."""
    text = str(exc)
    if "complete message body" in text:  # httpx: the server promised more bytes than it sent
        return f"the answer was cut off ({text})"
    if "without sending a response" in text:
        return "the server closed the connection without answering"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def to_plain(value: Any) -> Any:
    """An SDK answer (pydantic models, lists of them) as plain JSON data, as the server sent it."""
    from label_studio_sdk.core.jsonable_encoder import jsonable_encoder

    return jsonable_encoder(value)


@dataclass
class LabelStudio:
    """Connection to one Label Studio server: `sdk` is the `label_studio_sdk.LabelStudio` client.

    `retries`: the SDK's `max_retries` (its backoff: 1 s doubling, jittered, at most 60 s).
    """

    url: str
    token: str = field(repr=False)
    retries: int = 4
    timeout: float = 30.0
    _sdk: Any = field(default=None, init=False, repr=False)

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

    @property
    def sdk(self):
        """The SDK client, made on first use (it may check the token: an expired JWT is refused at once)."""
        if self._sdk is None:
            from label_studio_sdk import LabelStudio as Client

            self._sdk = self.call("connect", lambda: Client(base_url=self.url, api_key=self.token,
                                                            max_retries=self.retries, timeout=self.timeout))
        return self._sdk

    def call(self, what: str, action: Callable[..., Any], *args, **kwargs) -> Any:
        """Run one SDK call; its failures become one token-free line naming the server and `what`.

        Why a wrapper: the SDK raises `ApiError` (whose text holds the response headers and body over
        several lines) and bare httpx errors; the CLI prints one line per failure.
        """
        import httpx
        from label_studio_sdk.core.api_error import ApiError

        where = f"{self.url}: {what}"
        try:
            return action(*args, **kwargs)
        except ApiError as exc:
            status = exc.status_code or 0
            detail = self._redact(reply_detail(exc.body))
            if 200 <= status < 300:  # the SDK could not parse a 2xx answer: not Label Studio's JSON
                raise SemcorrError(f"{where}: the answer is not JSON ({detail[:80]}); check that --url points at "
                                   "Label Studio") from None
            raise HTTPStatusError(f"{where} answered {status}: {detail}", status, detail) from None
        except (httpx.HTTPError, OSError) as exc:
            raise SemcorrError(f"{where}: Label Studio is not reachable or stopped answering "
                               f"({self._redact(_reason(exc))}); check that it runs (`semcorr review server`) and "
                               "--url, then run the command again") from None
        except ValueError as exc:  # the SDK parses an answer it did not check (e.g. a token refresh's)
            raise SemcorrError(f"{where}: the answer is not JSON ({self._redact(str(exc))[:80]}); check that --url "
                               "points at Label Studio") from None

    def _redact(self, text: str) -> str:
        return text.replace(self.token, "[token]") if self.token else text

    def request(self, method: str, path: str, body: Any = None, raw: bool = False) -> Any:
        """One request through the SDK's HTTP client (its auth and retries) for what it has no typed method for.

        Why: local-file URLs (`/data/local-files/?d=...`, the image probe) are not API endpoints,
        and scripts and tests post raw JSON; an error status is raised, as the typed methods do.
        """
        from label_studio_sdk.core.api_error import ApiError

        def send():
            reply = self.sdk._client_wrapper.httpx_client.request(path.lstrip("/"), method=method, json=body)
            if reply.status_code >= 400:
                raise ApiError(status_code=reply.status_code, body=reply.text)
            if raw:
                return reply.content
            if not reply.content:
                return None
            try:
                return reply.json()
            except ValueError:
                raise ApiError(status_code=reply.status_code, body=reply.text) from None

        return self.call(f"{method} {urllib.parse.urlparse(path).path}", send)

    def get_raw(self, path: str) -> bytes:
        """The body of a GET as bytes (e.g. an image the server serves)."""
        return self.request("GET", path, raw=True)

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, body)

    def health(self) -> None:
        """Raise unless the server answers `/health`.

        Why not the SDK: it has no call for `/health`, and its client sends the token (refreshing a
        personal one first), so a refused token would read as a server down. Connection errors are
        retried with backoff by httpx's transport.
        """
        import httpx

        def probe():
            transport = httpx.HTTPTransport(retries=self.retries)
            with httpx.Client(transport=transport, timeout=self.timeout) as client:
                client.get(f"{self.url}/health").raise_for_status()

        self.call("GET /health", probe)

    def preflight(self, image_url: str | None = None) -> list[str]:
        """Problems found, one line each (empty when all is well): server, token, image access."""
        try:
            self.health()
        except SemcorrError as exc:
            return [f"server: {exc}"]
        kind = token_kind(self.token)
        try:
            who = to_plain(self.call("GET /api/current-user/whoami", lambda: self.sdk.users.whoami()))
            if not isinstance(who, dict) or "id" not in who:
                return [f"token ({kind}): the server did not say who the token belongs to"]
        except HTTPStatusError as exc:
            if exc.status not in (401, 403):
                return [f"token ({kind}): the server answered {exc.status} ({exc.detail})"]
            return [f"token ({kind}): refused ({exc.detail}); {token_hint(kind, exc.detail)}"]
        except SemcorrError as exc:
            return [f"token ({kind}): {exc}"]
        if image_url is not None:
            try:
                self.get_raw(image_url)
            except SemcorrError as exc:
                return [(f"image: the server cannot serve {image_url} ({str(exc)[-80:]}); enable local file serving "
                         "(LOCAL_FILES_SERVING_ENABLED=true, LOCAL_FILES_DOCUMENT_ROOT above the images)")]
        return []

    def all_tasks(self, project_id: int) -> list[dict]:
        """Every task of a project, with annotations and predictions, as plain dicts.

        The SDK pages; it learns the end from Label Studio's 404 past the last page, and swallows
        every 404 while paging. Reading pages and stopping at the answer's `total` asks for no page
        past the end, and a 404 on the first page (a project gone) is an error, not "no tasks".
        """
        pager = self.call(f"GET /api/tasks?project={project_id}",
                          lambda: self.sdk.tasks.list(project=project_id, page_size=500, fields="all"))
        tasks: list[dict] = []
        while True:
            tasks.extend(to_plain(pager.items or []))
            total = getattr(pager.response, "total", None)
            if not pager.items or not pager.has_next or (total is not None and len(tasks) >= total):
                return tasks
            pager = self.call(f"GET /api/tasks?project={project_id}", pager.get_next)


def token_hint(kind: str, detail: str) -> str:
    """What to do about a refused token of this kind."""
    if "legacy" in detail.lower() and "disabled" in detail.lower():
        return ("legacy tokens are disabled for this organisation: use a personal access token (Account & Settings) "
                "or enable legacy tokens in the organisation's settings")
    if kind == "legacy":
        return ("the token is wrong: copy the Access Token from Account & Settings, or the `token` of `semcorr "
                "review server`'s credentials file")
    return "the personal access token is wrong or revoked: create a new one in Account & Settings"
