"""Live masking through the real bastion, OpenSSH in tmux and an sshd target.

A file holding secrets is ``cat``-ed in a terminal session: the user's screen shows them masked,
and neither the spool, the audit log nor the uploaded S3 objects hold a raw value. A password
typed at a real ``read -s`` prompt is recorded as a count of keys, not the keys.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from harness.ssh import ssh_base_argv
from harness.tmux import TmuxSession
from harness.wait import wait_for_session_end

from bastion.demo.stack import DemoStack

pytestmark = pytest.mark.e2e

PROMPT = re.compile(r"[#$] ?$", re.MULTILINE)
GITHUB = "ghp_" + "Zk3Qw9Lm2Xc8Vb7Nn6Aa5Ss4Dd3Ff2Gg1Hh0J"[:36]
AWS_ID = "AKIAZ7QPRSTUVWXY2345"
CARD = "4111 1111 1111 1111"
URL_PASSWORD = "Pw-in-url-9931"
KEY_LINES = ["MIIEpAIBAAKCAQEA3mAsKeD1sEcReTlInE0001", "kEyBoDyLiNeTwO0002xYzAbCdEfGhIjKlMn"]
SECRETS_FILE = (
    f"github token: {GITHUB}\n"
    f"aws key id: {AWS_ID}\n"
    f"card: {CARD}\n"
    f"db: postgres://app:{URL_PASSWORD}@db.internal:5432/shop\n"
    "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(KEY_LINES) + "\n"
    "-----END RSA PRIVATE KEY-----\n"
    "commit 3f786850e387550fdab836ed7e6dc881de23001b stays\n"
)
RAW_VALUES = [GITHUB, AWS_ID, "4111 1111 1111", URL_PASSWORD, *KEY_LINES]
TYPED_PASSWORD = "Zq8hiddenPW77"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    # Its own stack: the test uploads the spool, which must hold only this module's sessions.
    with DemoStack(tmp_path_factory.mktemp("masking") / "demo", with_idp=False) as demo:
        yield demo


def _shell(stack: DemoStack, tmux: object) -> TmuxSession:
    argv = [*ssh_base_argv(stack), "-tt", f"{stack.login}@web01@127.0.0.1"]
    screen: TmuxSession = tmux(argv, width=120, height=40)  # type: ignore[operator]
    screen.wait_for(PROMPT)
    return screen


def _new_session(stack: DemoStack, before: set[Path]) -> Path:
    new = {p.parent for p in stack.spool_dir.glob("*/session.json")} - before
    assert len(new) == 1, f"expected one new session, found {sorted(new)}"
    return new.pop()


def _sessions(stack: DemoStack) -> set[Path]:
    return {p.parent for p in stack.spool_dir.glob("*/session.json")}


def _all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def _audit(stack: DemoStack) -> list[dict[str, object]]:
    path = stack.state_dir / "audit.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_cat_of_secrets_is_masked_on_screen_in_the_recording_and_in_s3(
        stack: DemoStack, tmux: object, tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.txt"
    secrets.write_text(SECRETS_FILE, encoding="utf-8")
    before = _sessions(stack)
    screen = _shell(stack, tmux)
    screen.type_line(f"cat {secrets}; echo cat-done-$((40+2))")
    screen.wait_for("cat-done-42")
    shown = screen.capture(history=True)
    for raw in RAW_VALUES:
        assert raw not in shown, f"{raw!r} reached the user's screen"
    assert "card: **** **** **** 1111" in shown
    assert "github token: " + "*" * len(GITHUB) in shown
    assert f"postgres://app:{'*' * len(URL_PASSWORD)}@db.internal" in shown
    assert "-----BEGIN RSA PRIVATE KEY-----" in shown and "*" * len(KEY_LINES[0]) in shown
    assert "3f786850e387550fdab836ed7e6dc881de23001b stays" in shown  # a git SHA is no secret
    screen.type_line("exit")
    assert screen.wait_exit() == 0

    session = _new_session(stack, before)
    wait_for_session_end(session)
    recorded = _all_bytes(session)
    cast = next(session.glob("*-shell.cast")).read_text(encoding="utf-8")
    assert "**** **** **** 1111" in cast
    for raw in RAW_VALUES:
        assert raw.encode() not in recorded, f"{raw!r} is in the spool"
    markers = [e[2] for e in map(json.loads, cast.splitlines()[1:]) if e[1] == "m"]
    assert any(m.startswith("masked: ") and "private_key 1" in m and "card 1" in m
               for m in markers), markers

    audit_text = (stack.state_dir / "audit.jsonl").read_bytes()
    for raw in RAW_VALUES:
        assert raw.encode() not in audit_text, f"{raw!r} is in the audit log"
    summaries = [e for e in _audit(stack) if e.get("event") == "masking.summary"
                 and e.get("session") == session.name]
    assert summaries, "no masking.summary audit event for the session"
    counts = summaries[-1]["counts"]
    assert isinstance(counts, dict)
    assert counts.get("github_token") == 1 and counts.get("private_key") == 1
    assert counts.get("aws_access_key_id") == 1 and counts.get("url_password") == 1

    # The sealed session goes to S3; no uploaded object holds a raw value either.
    wait_until_sealed(session)
    env = {**os.environ, **stack.env}
    upload = subprocess.run(
        [sys.executable, "-m", "bastion", "upload", "--config", str(stack.config_path)],
        capture_output=True, text=True, env=env, timeout=120)
    assert upload.returncode == 0, upload.stdout + upload.stderr
    assert session.name in json.loads(upload.stdout)["uploaded"]
    client = boto3.client("s3", endpoint_url=stack.env["S3_ENDPOINT"],
                          aws_access_key_id=stack.env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=stack.env["AWS_SECRET_ACCESS_KEY"],
                          region_name="us-east-1")
    bucket, _, prefix = stack.env["BASTION_S3_URI"].removeprefix("s3://").partition("/")
    listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    keys = [o["Key"] for o in listing.get("Contents", []) if session.name in o["Key"]]
    assert keys, "the session's objects are not in the bucket"
    for key in keys:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        for raw in RAW_VALUES:
            assert raw.encode() not in body, f"{raw!r} is in s3://{bucket}/{key}"


def wait_until_sealed(session: Path) -> None:
    from harness.wait import wait_until
    wait_until(lambda: (session / "manifest.json").exists(), 30, f"{session.name} sealed")


def test_password_typed_at_a_read_s_prompt_is_not_recorded(stack: DemoStack,
                                                            tmux: object) -> None:
    before = _sessions(stack)
    screen = _shell(stack, tmux)
    screen.type_line("read -rs -p 'Password: ' PW; echo; echo got-${#PW}-keys")
    screen.wait_for("Password:")
    screen.type_line(TYPED_PASSWORD)
    screen.wait_for(f"got-{len(TYPED_PASSWORD)}-keys")
    screen.type_line("echo after-$((2*3))")
    screen.wait_for("after-6")
    screen.type_line("exit")
    assert screen.wait_exit() == 0

    session = _new_session(stack, before)
    wait_for_session_end(session)
    assert TYPED_PASSWORD.encode() not in _all_bytes(session)
    assert TYPED_PASSWORD.encode() not in (stack.state_dir / "audit.jsonl").read_bytes()
    cast = next(session.glob("*-shell.cast")).read_text(encoding="utf-8")
    events = [json.loads(line) for line in cast.splitlines()[1:]]
    # The keystrokes ("i" events) hold one * per hidden key, and the rest as typed.
    typed = "".join(e[2] for e in events if e[1] == "i")
    assert "*" * len(TYPED_PASSWORD) + "\r" in typed
    assert "echo after-$((2*3))\r" in typed
    markers = [e[2] for e in events if e[1] == "m"]
    assert f"input hidden: {len(TYPED_PASSWORD)} keys" in markers, markers
