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
    def rule_names(self) -> tuple[str, ...]:
        """What a rule's ``users`` list may name this identity by.

        Local users and identity-provider accounts are different namespaces: a config user by
        its name; an IdP account by ``ISSUER|SUBJECT`` or its e-mail (which ``identity_from_
        claims`` keeps only when the IdP says it is verified), never by a display name anyone
        can give themselves at the IdP.
        """
        if self.issuer == LOCAL_ISSUER:
            return (self.name,)
        return (self.key,) + ((self.email,) if self.email else ())

    @property
    def key(self) -> str:
        """A stable string form of (issuer, subject) for maps, state rows and session caps."""
        return f"{self.issuer}|{self.subject}"

    def audit_fields(self) -> dict[str, object]:
        """The identity as it appears in audit events and manifests."""
        return {"issuer": self.issuer, "subject": self.subject, "name": self.name,
                "email": self.email, "groups": list(self.groups), "method": self.method}
