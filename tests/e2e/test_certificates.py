"""Certificate targets through the bastion, with OpenSSH on both ends: the person and the
recorded session in the target's own log, nothing of the key on disk, host CAs trusted or not."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from harness.ssh import bastion_destination, run_ssh, ssh_base_argv
from harness.tmux import TmuxSession
from harness.wait import wait_until

from bastion.audit import read_events
from bastion.demo.sshd import SshdTarget, generate_key_pair
from bastion.demo.stack import DemoStack
from bastion.evidence.signing import generate_signing_key

pytestmark = pytest.mark.e2e

PROMPT = re.compile(r"[#$] ?$", re.MULTILINE)
PRIVATE_KEY_MARK = b"PRIVATE KEY-----"  # OpenSSH and PEM (PKCS#8) private keys
CERTIFICATE_MARK = b"-cert-v01@openssh.com"


class CertificateStack(DemoStack):
    """The demo (web01 by vault, db01 by certificate) plus targets whose host keys are
    certified: app01 by the host CA the bastion trusts (named in the config as host_ca, and
    as app01kh through an @cert-authority known_hosts line), app02 by another CA, app03 by the
    trusted CA but for another host name, and web01ca, which names the host CA but presents a
    plain key."""

    def setup_targets(self) -> None:
        super().setup_targets()
        host_ca = self.keys_dir / "host_ca"
        host_ca_line = generate_key_pair(host_ca, "trusted host CA")
        other_ca = self.keys_dir / "other_host_ca"
        generate_key_pair(other_ca, "some other host CA")
        entries: list[dict[str, Any]] = []
        for name, ca, principals in (("app01", host_ca, ()), ("app02", other_ca, ()),
                                     ("app03", host_ca, ("app03.elsewhere.example",))):
            target = SshdTarget(name, self.workdir / "targets" / name,
                                user_ca_keys=(self.ca_line,), host_ca_key=ca,
                                host_cert_principals=principals,
                                expose_auth_info=name == "app01")
            self.add_cleanup(target.stop)
            target.start()
            assert target.process is not None
            self.processes.append(target.process)
            self.targets[name] = target
            entries.append({"name": name, "host": target.host, "port": target.port,
                            "host_ca": host_ca_line, "auth": "certificate",
                            "default_login": self.login})
        app01 = self.targets["app01"]
        known_hosts = self.workdir / "targets_known_hosts"
        known_hosts.write_text(f"@cert-authority [{app01.host}]:{app01.port} {host_ca_line}\n",
                               encoding="utf-8")
        entries.append({"name": "app01kh", "host": app01.host, "port": app01.port,
                        "known_hosts": str(known_hosts), "auth": "certificate",
                        "default_login": self.login})
        web01 = self.targets["web01"]
        # web01's sshd has not been told to trust the user CA (yet).
        entries.append({"name": "web01cert", "host": web01.host, "port": web01.port,
                        "host_key": web01.host_key_line, "auth": "certificate",
                        "default_login": self.login})
        entries.append({"name": "web01ca", "host": web01.host, "port": web01.port,
                        "host_ca": host_ca_line, "auth": "certificate",
                        "default_login": self.login})
        self.config["targets"].extend(entries)
        # Sealing (no S3 needed): the manifest carries the certificate's serial and key id.
        generate_signing_key(self.signing_key_path)
        self.merge_config({"evidence": {"signing_key": str(self.signing_key_path)}})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    with CertificateStack(tmp_path_factory.mktemp("certificates") / "stack", with_idp=False,
                          with_s3=False) as stack:
        yield stack


def _events(stack: DemoStack, event: str, **fields: object) -> list[dict[str, Any]]:
    return [e for e in read_events(stack.state_dir / "audit.jsonl")
            if e["event"] == event and all(e.get(k) == v for k, v in fields.items())]


def _last_start(stack: DemoStack, target: str) -> dict[str, Any]:
    wait_until(lambda: bool(_events(stack, "session.start", target=target)), 15,
               f"session.start for {target}")
    return _events(stack, "session.start", target=target)[-1]


def _sshd_log(stack: DemoStack, name: str) -> str:
    return stack.targets[name].log_path.read_text(encoding="utf-8", errors="replace")


def _wait_sshd_log(stack: DemoStack, name: str, text: str) -> None:
    wait_until(lambda: text in _sshd_log(stack, name), 15, f"{text!r} in sshd {name}'s log")


def test_exec_on_a_certificate_target_names_person_and_session_in_its_log(
        stack: DemoStack) -> None:
    result = run_ssh([*ssh_base_argv(stack), bastion_destination(stack, "db01"), "--",
                      "echo on-$(hostname -s >/dev/null; id -un)"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"on-{stack.login}\n"

    start = _last_start(stack, "db01")
    session = start["session"]
    key_id = f"demo@local session {session}"
    assert start["certificate"]["key_id"] == key_id
    serial = start["certificate"]["serial"]
    assert serial.isdigit() and int(serial) < 2 ** 64  # decimal, as sshd logs it
    # The target's own log: who (the demo user, issuer local) and which recording.
    _wait_sshd_log(stack, "db01", f'Accepted certificate ID "{key_id}" (serial {serial})')
    _wait_sshd_log(stack, "db01", f"Accepted publickey for {stack.login} from 127.0.0.1")
    # The recording's metadata says the same.
    meta_path = stack.spool_dir / session / "session.json"
    wait_until(lambda: json.loads(meta_path.read_text(encoding="utf-8"))["state"] == "closed",
               15, "the session to be closed")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    assert meta["target"]["certificate"] == {"serial": serial, "key_id": key_id}
    assert meta["target"]["login"] == stack.login
    manifest_path = stack.spool_dir / session / "manifest.json"
    wait_until(manifest_path.exists, 30, "the session to be sealed")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    assert manifest["target"]["certificate"] == {"serial": serial, "key_id": key_id}


def test_shell_on_a_certificate_target(stack: DemoStack, tmux) -> None:
    argv = [*ssh_base_argv(stack), "-tt", bastion_destination(stack, "db01")]
    screen: TmuxSession = tmux(argv, width=100, height=30)
    screen.wait_for(PROMPT)
    screen.type_line("tty; echo cert-shell-$((6*7))")
    screen.wait_for("cert-shell-42")
    assert "/dev/pts/" in screen.capture()
    screen.type_line("exit 0")
    assert screen.wait_exit() == 0
    start = _last_start(stack, "db01")
    _wait_sshd_log(stack, "db01", f'ID "demo@local session {start["session"]}"')
    casts = list((stack.spool_dir / start["session"]).glob("*-shell.cast"))
    assert len(casts) == 1 and "cert-shell-42" in casts[0].read_text(encoding="utf-8")


def test_vault_target_still_uses_the_vault(stack: DemoStack) -> None:
    result = run_ssh([*ssh_base_argv(stack), bastion_destination(stack, "web01"), "--",
                      "echo vault-ok"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == "vault-ok\n"
    start = _last_start(stack, "web01")
    assert start["certificate"] is None  # a vaulted credential, no certificate
    assert "CERT" not in _sshd_log(stack, "web01")


def test_target_that_does_not_trust_the_ca_refuses_with_a_clear_message(
        stack: DemoStack) -> None:
    result = run_ssh([*ssh_base_argv(stack), bastion_destination(stack, "web01cert"), "--",
                      "echo never"])
    assert result.returncode == 1
    assert result.stderr == (f"bastion: target web01cert refused the bastion's certificate for "
                             f"{stack.login}\n")
    [refusal] = _events(stack, "session.refused", target="web01cert")
    key_id = f"demo@local session {refusal['session']}"
    assert refusal["certificate"]["key_id"] == key_id
    assert refusal["certificate"]["serial"].isdigit()


def test_no_certificate_or_ephemeral_key_on_disk_in_logs_or_recordings(stack: DemoStack) -> None:
    result = run_ssh([*ssh_base_argv(stack), bastion_destination(stack, "db01"), "--",
                      "echo one-more"])
    assert result.returncode == 0, result.stderr
    session = _last_start(stack, "db01")["session"]
    wait_until(lambda: json.loads((stack.spool_dir / session / "session.json").read_text(
        encoding="utf-8"))["state"] == "closed", 15, "the session to be closed")
    private_keys, certificates = set(), set()
    for path in stack.workdir.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        if PRIVATE_KEY_MARK in data:
            private_keys.add(path.relative_to(stack.workdir).as_posix())
        if CERTIFICATE_MARK in data:
            certificates.add(path.relative_to(stack.workdir).as_posix())
    # Only the keys the demo made on purpose; none in the spool, state, audit or logs.
    assert private_keys == {
        "keys/user_ca", "keys/bastion_host_ed25519_key", "keys/demo_ed25519", "keys/signing.key",
        "keys/host_ca", "keys/other_host_ca",
        *(f"targets/{name}/ssh_host_ed25519_key" for name in stack.targets)}
    # The only certificates are the host certificates app01 and app02 present.
    assert certificates == {f"targets/{name}/ssh_host_ed25519_key-cert.pub"
                            for name in ("app01", "app02", "app03")}
    # The bastion logs no key material either (its log is under logs/, scanned above), and
    # nothing of the user certificate but what is meant to be seen: serial and key id.
    assert "PRIVATE" not in (stack.logs_dir / "bastion.log").read_text(encoding="utf-8")


# What the certificate allowed, as the target's sshd saw it: ExposeAuthInfo puts the
# certificate in a file named by $SSH_USER_AUTH, and ssh-keygen -L on the target describes it.
DESCRIBE_CERTIFICATE = 'cut -d" " -f2- "$SSH_USER_AUTH" | ssh-keygen -L -f /dev/stdin'


def _described(output: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = ""
    for line in output.replace("\r", "").splitlines()[1:]:
        name, sep, rest = line.strip().partition(":")
        if line.startswith("        ") and not line.startswith("                ") and sep:
            current = name
            sections[current] = [rest.strip()] if rest.strip() else []
        elif current:
            sections[current].append(line.strip())
    return sections


@pytest.mark.parametrize("tty, extensions", [(False, ["(none)"]), (True, ["permit-pty"])])
def test_certificate_permits_a_terminal_only_to_a_terminal_channel(
        stack: DemoStack, tty: bool, extensions: list[str]) -> None:
    argv = [*ssh_base_argv(stack), *(["-tt"] if tty else []),
            bastion_destination(stack, "app01"), "--", DESCRIBE_CERTIFICATE]
    result = run_ssh(argv)
    assert result.returncode == 0, result.stderr
    seen = _described(result.stdout)
    session = _last_start(stack, "app01")["session"]
    assert seen["Extensions"] == extensions  # never agent, port or X11 forwarding
    assert seen["Principals"] == [stack.login]
    assert seen["Key ID"] == [f'"demo@local session {session}"']
    assert seen["Critical Options"] == ["source-address 127.0.0.1/32"]


def test_host_certificate_from_the_trusted_ca_is_accepted(stack: DemoStack) -> None:
    app01 = stack.targets["app01"]
    fingerprint = asyncssh.import_public_key(app01.host_key_line).get_fingerprint("sha256")
    for name in ("app01", "app01kh"):  # host_ca in the config; @cert-authority in known_hosts
        result = run_ssh([*ssh_base_argv(stack), bastion_destination(stack, name), "--",
                          "echo host-ca-ok"])
        assert result.returncode == 0, (name, result.stderr)
        assert result.stdout == "host-ca-ok\n"
        start = _last_start(stack, name)
        meta = json.loads((stack.spool_dir / start["session"] / "session.json").read_text(
            encoding="utf-8"))
        assert meta["target"]["host_key_fingerprint"] == fingerprint


def test_host_certificate_from_another_ca_is_refused_like_a_wrong_pin(stack: DemoStack) -> None:
    result = run_ssh([*ssh_base_argv(stack), bastion_destination(stack, "app02"), "--",
                      "echo never"])
    assert result.returncode == 1
    assert re.fullmatch(r"bastion: the host key of target app02 does not match its pinned key "
                        r"\(presented a host certificate from CA SHA256:\S+\); refusing to "
                        r"connect\n", result.stderr), result.stderr
    [refusal] = _events(stack, "session.refused", target="app02")
    assert "does not match its pinned key" in refusal["reason"]
    assert "Accepted" not in _sshd_log(stack, "app02")  # no certificate was offered to it


def test_host_certificate_for_another_host_name_is_refused(stack: DemoStack) -> None:
    result = run_ssh([*ssh_base_argv(stack), bastion_destination(stack, "app03"), "--",
                      "echo never"])
    assert result.returncode == 1
    assert re.fullmatch(r"bastion: the host key of target app03 does not match its pinned key "
                        r"\(presented an invalid host certificate: Certificate principal "
                        r"mismatch for host 127\.0\.0\.1\); refusing to connect\n",
                        result.stderr), result.stderr


def test_plain_host_key_where_a_host_certificate_is_expected_is_refused(
        stack: DemoStack) -> None:
    result = run_ssh([*ssh_base_argv(stack), bastion_destination(stack, "web01ca"), "--",
                      "echo never"])
    assert result.returncode == 1
    assert re.fullmatch(r"bastion: the host key of target web01ca does not match its pinned "
                        r"key \(presented SHA256:\S+\); refusing to connect\n", result.stderr)


def test_ca_show_prints_the_line_targets_trust(stack: DemoStack) -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "bastion", "ca", "show", "--config",
                             str(stack.config_path)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    trusted = stack.targets["db01"].trusted_user_ca_path.read_text(encoding="utf-8")
    assert result.stdout == f"# current CA (signs certificates now)\n{trusted}"
    assert Path(f"{stack.ca_key_path}.pub").read_text(encoding="ascii") == trusted
    # Its output is a TrustedUserCAKeys file as it stands (sshd skips the comment line).
    stack.targets["db01"].trusted_user_ca_path.write_text(result.stdout, encoding="utf-8")
    after = run_ssh([*ssh_base_argv(stack), bastion_destination(stack, "db01"), "--",
                     "echo still-trusted"])
    assert after.returncode == 0, after.stderr
    assert after.stdout == "still-trusted\n"
