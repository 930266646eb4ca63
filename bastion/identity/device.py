"""Polling the token endpoint until a device login ends (RFC 8628 3.4-3.5)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from bastion.errors import IdentityError
from bastion.identity.oidc import DeviceAuthorization, OidcProvider
from bastion.secret import Secret

SLOW_DOWN_STEP = 5.0  # RFC 8628 3.5: slow_down adds 5 seconds to the interval, for good
_MAX_NETWORK_FAILURES = 3  # consecutive unreachable polls before giving up


async def wait_for_id_token(provider: OidcProvider, device: DeviceAuthorization, *,
                            timeout: float,
                            sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                            clock: Callable[[], float] = time.monotonic,
                            on_slow_down: Callable[[float], None] | None = None) -> Secret[str]:
    """Poll at the provider's interval until it issues an ID token; raise with the reason if not."""
    deadline = clock() + min(device.expires_in, timeout)
    interval = device.interval
    failures = 0
    while True:
        if clock() + interval >= deadline:
            raise IdentityError("the sign-in code expired before the sign-in was finished; "
                                "connect again for a new code")
        await sleep(interval)
        try:
            answer = await provider.poll_token(device)
        except IdentityError:
            failures += 1
            if failures >= _MAX_NETWORK_FAILURES:
                raise
            interval *= 2  # back off while the provider is unreachable
            continue
        failures = 0
        match answer.error:
            case None:
                assert answer.id_token is not None
                return answer.id_token
            case "authorization_pending":
                continue
            case "slow_down":
                interval += SLOW_DOWN_STEP
                if on_slow_down is not None:
                    on_slow_down(interval)
            case "access_denied":
                raise IdentityError("the sign-in was denied at the identity provider")
            case "expired_token":
                raise IdentityError("the sign-in code expired before the sign-in was finished; "
                                    "connect again for a new code")
            case other:
                detail = f": {answer.description}" if answer.description else ""
                raise IdentityError(f"identity provider ended the device login with {other}"
                                    f"{detail[:160]}")
