"""The approval webhook: one JSON POST per new request, retried, in a worker thread.

The payload (stable): ``{"event": "approval.requested", "id", "user", "target", "login",
"command" (masked), "rule", "created", "expires" (RFC 3339 UTC), "node", "session"}``. A webhook
that keeps failing is logged and audited; the request still waits for an approver.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

log = logging.getLogger("bastion.approvals")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a webhook that redirects is misconfigured; do not follow it elsewhere


_opener = urllib.request.build_opener(_NoRedirect())


class WebhookNotifier:
    """POSTs JSON to ``url``: up to ``attempts`` tries, backing off 0.5 s, 1 s, 2 s..."""

    def __init__(self, url: str, timeout: float = 5.0, attempts: int = 3,
                 backoff: float = 0.5) -> None:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ValueError("webhook URL must be http(s)")
        self.url = url
        self._timeout = timeout
        self._attempts = attempts
        self._backoff = backoff

    async def send(self, payload: dict[str, Any]) -> bool:
        """Deliver ``payload``; True once the webhook answered 2xx, False after every try failed."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        for attempt in range(self._attempts):
            if attempt:
                await asyncio.sleep(self._backoff * 2 ** (attempt - 1))
            try:
                status = await asyncio.to_thread(self._post, body)
            except (OSError, urllib.error.URLError, ValueError) as exc:
                log.warning("approval webhook %s: %s", _where(self.url), _reason(exc))
                continue
            if 200 <= status < 300:
                return True
            log.warning("approval webhook %s answered HTTP %d", _where(self.url), status)
        return False

    def _post(self, body: bytes) -> int:
        request = urllib.request.Request(  # noqa: S310 (scheme checked in __init__)
            self.url, data=body, method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "bastion-approvals"})
        try:
            with _opener.open(request, timeout=self._timeout) as response:
                response.read(4096)
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)


def _where(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _reason(exc: Exception) -> str:
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)[:200]
    return str(exc)[:200]
