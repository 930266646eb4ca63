"""The keyboard-interactive dialogue of one connection: device login, then TOTP where required.

Free of asyncssh: the server turns a ``Challenge`` into an SSH info request (and its banner into
an auth banner) and feeds the answers back. Text the user sees in the info request is ASCII only,
because OpenSSH escapes anything else there; the QR code goes in the banner, which OpenSSH
prints as UTF-8.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from enum import Enum, auto

from bastion.errors import BastionError, IdentityError, TotpError
from bastion.identity.model import Identity
from bastion.identity.oidc import DeviceAuthorization
from bastion.identity.qr import qr_text
from bastion.identity.service import IdentityService, ProvenKey

MAX_TOTP_TRIES = 3  # per connection; the store also limits attempts per identity


@dataclass(frozen=True)
class Challenge:
    """One keyboard-interactive round: text to show and the prompts (text, echo) to ask."""

    name: str
    instructions: str
    prompts: tuple[tuple[str, bool], ...] = ()
    banner: str | None = None


class _Stage(Enum):
    START = auto()
    DEVICE = auto()  # waiting for the device login to finish
    TOTP = auto()  # asked for a code
    ENROLL = auto()  # showed a new secret, asked for its first code
    REFUSED = auto()  # showed why; the next answer fails
    DONE = auto()


def _printable(text: str, limit: int = 300) -> str:
    """Only printable ASCII from untrusted text (an IdP's URL, a user name) reaches a terminal."""
    return "".join(c for c in text if " " <= c <= "~")[:limit]


class LoginFlow:
    """One connection's keyboard-interactive login; ``identity`` is set once it succeeds."""

    def __init__(self, service: IdentityService, *, conn: str, client: str, request: str,
                 target: str | None, proven_keys: list[ProvenKey],
                 pending: Identity | None = None) -> None:
        self._svc = service
        self._conn = conn
        self._client = client
        self._request = _printable(request, 128) or "(none)"
        self._target = target
        self._keys = proven_keys
        self._pending = pending  # first factor already proven (local or bound key): TOTP only
        self._device: DeviceAuthorization | None = None
        self._primary: Identity | None = None
        self._tries = 0
        self.totp_passed = False  # a TOTP code was checked in this login
        self._stage = _Stage.START
        self.identity: Identity | None = None
        self.failure: str | None = None

    # -- the dialogue -------------------------------------------------------------------------
    async def begin(self) -> Challenge | bool:
        """The first challenge; False when keyboard-interactive has nothing to offer."""
        if self._pending is not None:
            return await asyncio.to_thread(self._second_factor, self._pending)
        if not self._svc.device_login_enabled:
            return False
        try:
            self._device = await self._svc.start_device_login()
        except IdentityError as exc:
            return self._refuse(f"device login is unavailable: {exc}")
        self._svc.audit.emit("login.device_code", conn=self._conn, client=self._client,
                             request=self._request, expires_in=self._device.expires_in)
        self._stage = _Stage.DEVICE
        return self._device_challenge(self._device)

    async def answer(self, responses: list[str]) -> Challenge | bool:
        """The next challenge, True when signed in, False when refused."""
        try:
            match self._stage:
                case _Stage.DEVICE:
                    assert self._device is not None
                    primary = await self._svc.finish_device_login(self._device)
                    self._primary = primary
                    self._svc.audit.emit("login.device_success", conn=self._conn,
                                         client=self._client, **primary.audit_fields())
                    return await asyncio.to_thread(self._second_factor, primary)
                case _Stage.TOTP | _Stage.ENROLL:
                    return await asyncio.to_thread(self._check_code,
                                                   responses[0] if responses else "")
                case _Stage.START | _Stage.REFUSED | _Stage.DONE:
                    return False
        except BastionError as exc:
            self.failure = str(exc)
            self._svc.audit.emit("login.device_failure" if self._stage is _Stage.DEVICE
                                 else "totp.fail", conn=self._conn, client=self._client,
                                 request=self._request, reason=str(exc))
            return self._refuse(str(exc))

    # -- steps --------------------------------------------------------------------------------
    # The steps below read and write the state database (TOTP, key bindings): answer() runs
    # them in a worker thread, so the event loop never waits on it (with PostgreSQL, a network
    # round trip, or up to [state] connect_timeout while the database is unreachable).
    def _second_factor(self, identity: Identity) -> Challenge | bool:
        if not self._svc.totp_required(identity, self._target):
            return self._succeed(identity)
        self._primary = identity
        if self._svc.totp.enrolled(identity.key):
            self._stage = _Stage.TOTP
            return Challenge("TOTP", "A one-time code is required for this login.",
                             (("TOTP code: ", False),))
        if self._svc.settings.totp_inband_enrollment and self._pending is None:
            label = identity.email or identity.name
            uri = self._svc.totp.enroll(identity.key, label).reveal()
            self._svc.audit.emit("totp.enrolled", conn=self._conn, client=self._client,
                                 issuer=identity.issuer, subject=identity.subject, inband=True)
            self._stage = _Stage.ENROLL
            return Challenge(
                "TOTP enrollment",
                "This login needs a one-time code. Add this account to your authenticator app\n"
                "(scan the QR code above or enter this URI), then type the code it shows:\n\n"
                f"  {uri}\n",
                (("TOTP code: ", False),), banner=qr_text(uri))
        self._svc.audit.emit("totp.fail", conn=self._conn, client=self._client,
                             issuer=identity.issuer, subject=identity.subject,
                             reason="not enrolled")
        return self._refuse("a TOTP code is required but none is enrolled for you; ask an "
                            "administrator to run: bastion totp enroll "
                            f"'{_printable(identity.key)}'")

    def _check_code(self, code: str) -> Challenge | bool:
        identity = self._primary
        assert identity is not None
        try:
            self._svc.totp.verify(identity.key, code)
        except TotpError as exc:
            self._tries += 1
            self._svc.audit.emit("totp.fail", conn=self._conn, client=self._client,
                                 issuer=identity.issuer, subject=identity.subject,
                                 reason=str(exc), tries=self._tries)
            if self._tries >= MAX_TOTP_TRIES or "too many" in str(exc):
                if self._stage is _Stage.ENROLL:  # never confirmed: let them enroll again
                    self._svc.totp.remove(identity.key)
                return self._refuse(str(exc))
            return Challenge("TOTP", f"bastion: {exc}.", (("TOTP code: ", False),))
        self._svc.audit.emit("totp.pass", conn=self._conn, client=self._client,
                             issuer=identity.issuer, subject=identity.subject)
        self.totp_passed = True
        return self._succeed(identity)

    def _succeed(self, identity: Identity) -> bool:
        if self._pending is None and self._keys:
            self._svc.bind(identity, self._keys, self._conn, self._client)
        self.identity = identity
        self._stage = _Stage.DONE
        return True

    def _refuse(self, reason: str) -> Challenge:
        """Show the reason as a last info request with no prompts; its answer then fails."""
        self.failure = reason
        self._stage = _Stage.REFUSED
        return Challenge("", f"bastion: {_printable(reason, 400)}")

    def _device_challenge(self, device: DeviceAuthorization) -> Challenge:
        minutes = max(1, round(device.expires_in / 60))
        until = time.strftime("%H:%M UTC", time.gmtime(time.time() + device.expires_in))
        host, _, port = self._client.rpartition(":")
        code = _printable(device.user_code, 40)
        if device.verification_uri_complete and self._svc.settings.show_complete_url:
            url = _printable(device.verification_uri_complete)
            how = (f"To sign in, open this URL on any device:\n\n  {url}\n\n"
                   f"and check that it shows this code:\n\n  {code}\n\n")
        else:
            url = _printable(device.verification_uri)
            how = (f"To sign in, open this URL on any device:\n\n  {url}\n\n"
                   f"and enter this code:\n\n  {code}\n\n")
        text = (how +
                f"The code expires in {minutes} minute{'s' if minutes != 1 else ''} "
                f"(at {until}).\n"
                f"Sign-in requested from {host} port {port} for {self._request}.\n"
                "Only sign in if you started this yourself, just now.\n"
                "Waiting for the sign-in to finish (Ctrl-C to cancel)...")
        return Challenge("bastion sign-in", text, (), banner="Scan to sign in:\n" + qr_text(url))
