"""Identity: who is connecting (config users, OIDC device login, key bindings, TOTP)."""

from bastion.identity.model import LOCAL_ISSUER, Identity

__all__ = ["LOCAL_ISSUER", "Identity"]
