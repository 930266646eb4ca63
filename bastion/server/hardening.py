"""SSH algorithm choices: modern key exchange, AEAD/ETM ciphers and MACs, no SHA-1 anywhere.

asyncssh enables strict key exchange (the Terrapin counter-measure) by itself when both sides
offer it, as OpenSSH 9.6+ does. The lists below are filtered against what this asyncssh build
supports so an optional backend (liboqs, nettle) that is missing only narrows the choice.
"""

from __future__ import annotations

from typing import Any

from asyncssh.encryption import get_encryption_algs
from asyncssh.kex import get_kex_algs
from asyncssh.mac import get_mac_algs
from asyncssh.public_key import get_public_key_algs

from bastion.errors import ConfigError

KEX = ("mlkem768x25519-sha256", "sntrup761x25519-sha512@openssh.com", "curve25519-sha256",
       "curve25519-sha256@libssh.org", "ecdh-sha2-nistp521", "ecdh-sha2-nistp384",
       "ecdh-sha2-nistp256", "diffie-hellman-group16-sha512", "diffie-hellman-group18-sha512",
       "diffie-hellman-group14-sha256")
# Encrypt-then-MAC only: the MAC covers the ciphertext (AEAD ciphers need no MAC at all).
MACS = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com",
        "umac-128-etm@openssh.com")
SIGNATURES = ("ssh-ed25519", "sk-ssh-ed25519@openssh.com", "ecdsa-sha2-nistp256",
              "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "sk-ecdsa-sha2-nistp256@openssh.com",
              "rsa-sha2-512", "rsa-sha2-256")


def _supported(wanted: tuple[str, ...], available: list[bytes]) -> list[str]:
    have = {a.decode() for a in available}
    return [name for name in wanted if name in have]


def algorithm_options(ciphers: tuple[str, ...]) -> dict[str, Any]:
    """Keyword options for asyncssh.create_server restricting algorithms; ``ciphers`` is
    ``[server] ciphers`` (validated against ``SSH_CIPHERS`` at load)."""
    offered = _supported(ciphers, get_encryption_algs())
    if not offered:
        raise ConfigError(f"server.ciphers: this asyncssh supports none of {', '.join(ciphers)}")
    return {
        "kex_algs": _supported(KEX, get_kex_algs()),
        "encryption_algs": offered,
        "mac_algs": _supported(MACS, get_mac_algs()),
        "signature_algs": _supported(SIGNATURES, get_public_key_algs()),
        # No compression: it buys little on interactive traffic and mixes attacker-chosen
        # input with secrets before encryption (CRIME-style length leaks).
        "compression_algs": ["none"],
    }
