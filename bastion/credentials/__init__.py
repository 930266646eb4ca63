"""Credentials bastion uses toward targets: the encrypted vault (and the host keys it serves)."""

from bastion.credentials.vault import (
    Credential,
    Vault,
    generate_vault_key,
    load_vault_key,
    password_credential,
    private_key_credential,
    write_vault_key,
)

__all__ = [
    "Credential",
    "Vault",
    "generate_vault_key",
    "load_vault_key",
    "password_credential",
    "private_key_credential",
    "write_vault_key",
]
