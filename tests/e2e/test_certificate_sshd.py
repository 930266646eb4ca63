"""Certificates from the bastion's CA against a real OpenSSH sshd with TrustedUserCAKeys:
what sshd accepts and what it refuses (another login, expired, another address, no pty)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest
from harness.wait import wait_until

from bastion.config.model import (
    AccessRule,
    Config,
    PathsConfig,
    ServerConfig,
    Target,
    TargetAuth,
    VaultConfig,
)
from bastion.credentials.ca import CertificateAuthority, IssuedCertificate, UserCertificate
from bastion.demo.sshd import SshdTarget
from bastion.errors import UpstreamError
from bastion.identity.model import Identity
from bastion.policy.access import Authorization, TargetRequest, authorize
from bastion.relay.upstream import CertificateRequest, dial

pytestmark = pytest.mark.e2e

CA = CertificateAuthority(asyncssh.generate_private_key("ssh-ed25519"), validity=300,
                          clock_skew=60)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdTarget]:
    """An sshd that trusts only the CA: no authorized key at all."""
    target = SshdTarget("cert01", tmp_path_factory.mktemp("cert-sshd"),
                        user_ca_keys=(CA.public_line(),))
    with target:
        yield target


def _login(sshd: SshdTarget, minted: UserCertificate, *, login: str | None = None,
           local_address: str = "127.0.0.1", command: str = "echo in-as-$(id -un)",
           pty: bool = False) -> str:
    """Log in with the certificate (asyncssh client) and run ``command``; its stdout."""
    async def run() -> str:
        host_key = asyncssh.import_public_key(sshd.host_key_line)
        async with asyncssh.connect(
                sshd.host, sshd.port, username=login or sshd.login,
                local_addr=(local_address, 0), known_hosts=([host_key], [], []),
                client_keys=[(minted.private_key, minted.certificate)], agent_path=None,
                config=None, preferred_auth="publickey") as conn:
            result = await conn.run(command, term_type="xterm" if pty else None,
                                    check=False, timeout=30)
            return str(result.stdout)
    return asyncio.run(run())


def _log_has(sshd: SshdTarget, text: str) -> None:
    wait_until(lambda: text in sshd.log_path.read_text(encoding="utf-8", errors="replace"),
               15, f"{text!r} in the sshd log")


def test_certificate_for_the_login_from_this_address_is_accepted(sshd: SshdTarget) -> None:
    minted = CA.issue(sshd.login, "ann@local session ok-1", ["127.0.0.1"], permit_pty=False)
    assert _login(sshd, minted) == f"in-as-{sshd.login}\n"
    _log_has(sshd, f'Accepted certificate ID "ann@local session ok-1" '
                   f"(serial {minted.issued.serial})")


def test_certificate_for_login_a_cannot_log_in_as_b(sshd: SshdTarget) -> None:
    minted = CA.issue("alice", "ann@local session as-b", ["127.0.0.1"], permit_pty=False)
    with pytest.raises(asyncssh.PermissionDenied):
        _login(sshd, minted)  # logs in as sshd.login (root or the test user), not alice
    _log_has(sshd, "name is not a listed principal")


def test_expired_certificate_is_refused(sshd: SshdTarget) -> None:
    minted = CA.issue(sshd.login, "ann@local session old", ["127.0.0.1"], permit_pty=False,
                      now=time.time() - 3600)
    assert minted.issued.valid_before < time.time()
    with pytest.raises(asyncssh.PermissionDenied):
        _login(sshd, minted)
    _log_has(sshd, "Certificate invalid: expired")


def test_certificate_from_another_address_is_refused(sshd: SshdTarget) -> None:
    # Made for 127.0.0.2, used from 127.0.0.1: refused; and the reverse.
    elsewhere = CA.issue(sshd.login, "ann@local session addr-1", ["127.0.0.2"], False)
    with pytest.raises(asyncssh.PermissionDenied):
        _login(sshd, elsewhere, local_address="127.0.0.1")
    _log_has(sshd, "not from a permitted source address (127.0.0.1)")
    here = CA.issue(sshd.login, "ann@local session addr-2", ["127.0.0.1"], False)
    with pytest.raises(asyncssh.PermissionDenied):
        _login(sshd, here, local_address="127.0.0.2")
    _log_has(sshd, "not from a permitted source address (127.0.0.2)")
    # The first one from its own address works.
    assert _login(sshd, elsewhere, local_address="127.0.0.2") == f"in-as-{sshd.login}\n"


def test_certificate_from_another_ca_is_refused(sshd: SshdTarget) -> None:
    other = CertificateAuthority(asyncssh.generate_private_key("ssh-ed25519"))
    minted = other.issue(sshd.login, "mallory@local session x", ["127.0.0.1"], False)
    with pytest.raises(asyncssh.PermissionDenied):
        _login(sshd, minted)


# -- the bastion's dialer with a certificate --------------------------------------------------

ANN = Identity(issuer="local", subject="ann", name="ann", groups=("ops",))


def _authorization(sshd: SshdTarget, source_addresses: tuple[str, ...] = ()) -> Authorization:
    target = Target(name="cert01", host=sshd.host, port=sshd.port,
                    host_keys=(sshd.host_key_line,), default_login=sshd.login,
                    auth=TargetAuth.CERTIFICATE, source_addresses=source_addresses)
    config = Config(source=Path("bastion.toml"), server=ServerConfig(),
                    paths=PathsConfig(state_dir=Path("s"), spool_dir=Path("r"), audit_log=None),
                    vault=VaultConfig(path=Path("v"), key_file=Path("k")), targets=(target,),
                    access=(AccessRule(groups=("ops",), targets=("*",), logins=("*",)),))
    return authorize(config, ANN, TargetRequest("cert01", None, "cert01"))


def _dial_and_run(sshd: SshdTarget, permit_pty: bool, command: str,
                  pty: bool) -> tuple[IssuedCertificate | None, str]:
    """Dial as the bastion does (certificate with or without permit-pty), run ``command``."""
    async def run() -> tuple[IssuedCertificate | None, str]:
        request = CertificateRequest(CA, f"ann@local session dial-{permit_pty}", permit_pty)
        upstream = await dial(_authorization(sshd), request)
        try:
            result = await upstream.conn.run(command, term_type="xterm" if pty else None,
                                             check=False, timeout=30)
            out = result.stdout  # bytes: the bastion's connections carry bytes
            return upstream.certificate, out.decode() if isinstance(out, bytes) else str(out)
        finally:
            upstream.close()
    return asyncio.run(run())


def test_dial_signs_for_its_own_address_and_permits_a_pty_only_when_asked(
        sshd: SshdTarget) -> None:
    issued, out = _dial_and_run(sshd, permit_pty=True, command="tty", pty=True)
    assert out.startswith("/dev/pts/")
    assert issued is not None and issued.permit_pty
    assert issued.source_addresses == ("127.0.0.1",)  # the bastion's end of the connection
    assert issued.login == sshd.login

    issued, out = _dial_and_run(sshd, permit_pty=False, command="echo no-pty", pty=False)
    assert out == "no-pty\n" and issued is not None and not issued.permit_pty
    with pytest.raises(asyncssh.ChannelOpenError, match=r"(?i)pty"):
        _dial_and_run(sshd, permit_pty=False, command="tty", pty=True)
    _log_has(sshd, 'Accepted certificate ID "ann@local session dial-False"')


def test_dial_with_a_source_address_the_target_does_not_see_is_refused(
        sshd: SshdTarget) -> None:
    async def run() -> None:
        request = CertificateRequest(CA, "ann@local session nat", permit_pty=False)
        await dial(_authorization(sshd, ("192.0.2.1",)), request)
    with pytest.raises(UpstreamError, match="target cert01 refused the bastion's certificate"):
        asyncio.run(run())
    _log_has(sshd, "not from a permitted source address (127.0.0.1)")


def test_a_second_ca_added_while_sshd_runs_is_trusted_beside_the_first(
        tmp_path: Path) -> None:
    # Rolling the CA: the target trusts the old and the new CA during the change, and sshd
    # reads TrustedUserCAKeys at each login (no restart).
    old, new = CA, CertificateAuthority(asyncssh.generate_private_key("ssh-ed25519"))
    with SshdTarget("roll01", tmp_path / "roll01", user_ca_keys=(old.public_line(),)) as sshd:
        from_new = new.issue(sshd.login, "ann@local session roll-new", ["127.0.0.1"], False)
        with pytest.raises(asyncssh.PermissionDenied):
            _login(sshd, from_new)
        sshd.trust_user_ca(new.public_line())
        assert _login(sshd, from_new) == f"in-as-{sshd.login}\n"
        from_old = old.issue(sshd.login, "ann@local session roll-old", ["127.0.0.1"], False)
        assert _login(sshd, from_old) == f"in-as-{sshd.login}\n"
