"""JSON over HTTP to the identity provider (urllib in a worker thread; no extra dependency).

Every failure becomes one ``IdentityError`` line naming the provider's host and what went wrong,
never a response body or a secret.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from bastion.errors import IdentityError
from bastion.secret import Secret

_MAX_BODY = 1024 * 1024  # an IdP answer larger than this is not one bastion wants to parse


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # endpoints come from discovery; a redirect is an answer we do not follow


_opener = urllib.request.build_opener(_NoRedirect())


def _where(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _request(url: str, data: bytes | None, headers: dict[str, str],
             timeout: float) -> tuple[int, dict[str, Any]]:
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise IdentityError(f"identity provider URL {url[:80]!r} is not http(s)")
    request = urllib.request.Request(  # noqa: S310 (scheme checked above)
        url, data=data, headers={"Accept": "application/json", **headers})
    try:
        with _opener.open(request, timeout=timeout) as resp:
            status, body = resp.status, resp.read(_MAX_BODY + 1)
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read(_MAX_BODY + 1)
    except (TimeoutError, urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ConnectionRefusedError):
            reason = "connection refused"
        elif isinstance(reason, TimeoutError):
            reason = "timed out"
        raise IdentityError(f"identity provider {_where(url)} is unreachable: {reason}") from None
    if len(body) > _MAX_BODY:
        raise IdentityError(f"identity provider {_where(url)} sent an oversized answer")
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise IdentityError(f"identity provider {_where(url)} answered HTTP {status} "
                            "without a JSON object")
    return status, parsed


async def get_json(url: str, timeout: float) -> dict[str, Any]:
    """GET a JSON object; anything but HTTP 200 is an IdentityError."""
    status, body = await asyncio.to_thread(_request, url, None, {}, timeout)
    if status != 200:
        raise IdentityError(f"identity provider {_where(url)} answered HTTP {status} for "
                            f"{urllib.parse.urlsplit(url).path}")
    return body


async def post_form(url: str, fields: dict[str, str], timeout: float, client_id: str,
                    client_secret: Secret[str] | None) -> tuple[int, dict[str, Any]]:
    """POST a form as the OAuth client (public: client_id in the body; else HTTP Basic)."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    form = dict(fields)
    if client_secret is None:
        form["client_id"] = client_id
    else:  # RFC 6749 2.3.1: both parts form-urlencoded before base64
        pair = (urllib.parse.quote_plus(client_id) + ":" +
                urllib.parse.quote_plus(client_secret.reveal()))
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    data = urllib.parse.urlencode(form).encode()
    return await asyncio.to_thread(_request, url, data, headers, timeout)
