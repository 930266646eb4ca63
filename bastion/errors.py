"""Every error bastion reports, with the one line a user or operator sees.

One base class; each subclass says which exit status the CLI returns. A refusal during an SSH
session is shown to the user as ``bastion: <message>`` on stderr and ends the channel with
``EXIT_REFUSED``; nothing here carries a traceback to the user.
"""

from __future__ import annotations

EXIT_REFUSED = 1  # exit status a refused SSH session ends with
EXIT_INTERNAL = 70  # EX_SOFTWARE: bastion itself failed


class BastionError(Exception):
    """Base of all bastion errors; ``str(err)`` is the single line shown to people."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(BastionError):
    """A configuration file is missing, unparsable or has a wrong value."""

    exit_code = 2


class UsageError(BastionError):
    """A command line or argument is wrong."""

    exit_code = 2


class VaultError(BastionError):
    """The credential vault cannot be opened, decrypted or written."""


class WrongVaultKey(VaultError):
    """The vault is sealed under another key than the one given (e.g. after a rotation)."""


class RecordingError(BastionError):
    """A recording cannot be opened or written; the session must not run."""


class WorkerStartFailed(BastionError):
    """What stopped a worker of ``bastion serve`` from starting, as that worker said it (its
    one line and exit status, e.g. 2 for a config problem)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class SpoolBusy(RecordingError):
    """Another bastion process holds the spool's lock."""


class AccessDenied(BastionError):
    """Policy refuses what the user asked for; the message says what was refused."""


class TargetNameError(AccessDenied):
    """The SSH user name does not name a target/login this bastion knows."""


class SessionLimit(AccessDenied):
    """A per-user or global session cap is reached."""


class AuthenticationError(BastionError):
    """An identity could not be established."""


class AuditUnavailable(BastionError):
    """The audit log cannot be written, so nothing that must be audited may happen."""


class UpstreamError(BastionError):
    """The onward connection to a target failed."""


class CertificateRefused(UpstreamError):
    """A target refused the bastion's certificate; its serial and key id are kept for audit."""

    def __init__(self, message: str, certificate: dict[str, object]) -> None:
        super().__init__(message)
        self.certificate = certificate


class HostKeyMismatch(UpstreamError):
    """The target presented a host key other than the pinned one."""


class CertificateAuthorityError(BastionError):
    """The user CA key cannot be loaded or written, or a certificate cannot be issued."""


class IdentityError(AuthenticationError):
    """The identity provider or a token could not be used (device flow, ID token)."""


class TotpError(AuthenticationError):
    """A TOTP code was wrong, reused or rate-limited."""


class StateError(BastionError):
    """The state database cannot be opened or is inconsistent."""


class ManifestError(BastionError):
    """A manifest cannot be written, parsed or signed."""


class VerificationFailed(BastionError):
    """Evidence did not verify; the message names what failed."""


class StorageError(BastionError):
    """The object store refused or answered wrongly."""


class ReplayError(BastionError):
    """A recording cannot be replayed."""


class ApprovalError(BastionError):
    """An approval request cannot be decided: unknown, already decided, or not yours to decide."""


class ProxyHeaderError(BastionError):
    """A PROXY protocol header is missing, malformed, or came from an untrusted address."""
