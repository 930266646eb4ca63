"""Who a connection belongs to, established once by authentication."""

from __future__ import annotations

from dataclasses import dataclass

LOCAL_ISSUER = "local"  # issuer of users declared in the config file


@dataclass(frozen=True)
class Identity:
    """A person or service account: (issuer, subject) is the identity, the rest attributes.

    Never identify anyone by e-mail: it is an attribute the IdP may change or reuse.
    """

    issuer: str
    subject: str
    name: str
    groups: tuple[str, ...] = ()
    email: str | None = None
    method: str = "publickey"  # how this connection proved it: publickey, oidc-device, binding

    @property
    def key(self) -> str:
        """A stable string form of (issuer, subject) for maps, state rows and session caps."""
        return f"{self.issuer}|{self.subject}"

    def audit_fields(self) -> dict[str, object]:
        """The identity as it appears in audit events and manifests."""
        return {"issuer": self.issuer, "subject": self.subject, "name": self.name,
                "email": self.email, "groups": list(self.groups), "method": self.method}
