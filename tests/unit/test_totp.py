"""TOTP: enrollment, ±1 step, each code once, rate limit, sealed secrets, policy."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest
from harness.state import StateBackend

from bastion.config.model import TotpPolicy
from bastion.errors import StateError, TotpError
from bastion.identity.model import Identity
from bastion.identity.totp import MAX_FAILURES, STEP, TotpStore, totp_required
from bastion.secret import Secret
from bastion.state.db import StateDB

WHO = "https://idp|sub-a"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0 - (1_700_000_000.0 % STEP) + 5

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(state_backend: StateBackend, clock: Clock) -> TotpStore:
    return TotpStore(state_backend.open(), Secret(os.urandom(32)), clock)


def enroll(store: TotpStore) -> pyotp.TOTP:
    uri = store.enroll(WHO, "alice@example.com").reveal()
    assert uri.startswith("otpauth://totp/") and "issuer=bastion" in uri
    return pyotp.TOTP(parse_qs(urlsplit(uri).query)["secret"][0])


def test_right_code_passes_once(store: TotpStore, clock: Clock) -> None:
    totp = enroll(store)
    code = totp.at(clock.now)
    store.verify(WHO, code)
    with pytest.raises(TotpError, match="used already"):
        store.verify(WHO, code)
    clock.now += STEP
    store.verify(WHO, totp.at(clock.now))


def test_code_used_once_across_nodes(state_backend: StateBackend, clock: Clock) -> None:
    """Two nodes (two connections to one database) checking the same code at the same moment:
    one accepts it, the other refuses it, also when their checks overlap in threads."""
    import threading

    key = Secret(os.urandom(32))
    nodes = [TotpStore(state_backend.open(), key, clock) for _ in range(4)]
    totp = enroll(nodes[0])
    code = totp.at(clock.now)
    outcomes: list[str] = []
    start = threading.Barrier(len(nodes))

    def check(node: TotpStore) -> None:
        start.wait()
        try:
            node.verify(WHO, code)
            outcomes.append("accepted")
        except TotpError as error:
            outcomes.append(str(error))

    threads = [threading.Thread(target=check, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["accepted"] + [
        "this TOTP code was used already; wait for the next one"] * (len(nodes) - 1)


def test_one_step_window(store: TotpStore, clock: Clock) -> None:
    totp = enroll(store)
    store.verify(WHO, totp.at(clock.now - STEP))
    store.verify(WHO, totp.at(clock.now + STEP))
    with pytest.raises(TotpError, match="used already"):  # older than the newest accepted
        store.verify(WHO, totp.at(clock.now))
    with pytest.raises(TotpError, match="wrong"):
        store.verify(WHO, totp.at(clock.now + 2 * STEP))


def test_wrong_code_and_rate_limit(store: TotpStore, clock: Clock) -> None:
    totp = enroll(store)
    for _ in range(MAX_FAILURES):
        with pytest.raises(TotpError, match="wrong TOTP code"):
            store.verify(WHO, "000000" if totp.at(clock.now) != "000000" else "111111")
    with pytest.raises(TotpError, match="too many"):
        store.verify(WHO, totp.at(clock.now))  # even the right code, while limited
    clock.now += 301
    store.verify(WHO, totp.at(clock.now))


def test_not_enrolled_and_garbage(store: TotpStore) -> None:
    with pytest.raises(TotpError, match="no TOTP secret"):
        store.verify(WHO, "123456")
    enroll(store)
    with pytest.raises(TotpError, match="wrong"):
        store.verify(WHO, "12345x")


def test_enroll_twice_needs_replace(store: TotpStore) -> None:
    enroll(store)
    with pytest.raises(TotpError, match="already"):
        store.enroll(WHO, "alice")
    store.enroll(WHO, "alice", replace=True)
    assert store.enrolled(WHO)
    assert store.remove(WHO) and not store.enrolled(WHO)


def test_secret_sealed_at_rest(tmp_path: Path, clock: Clock) -> None:
    db = StateDB.in_state_dir(tmp_path)
    store = TotpStore(db, Secret(os.urandom(32)), clock)
    uri = store.enroll(WHO, "alice").reveal()
    secret = parse_qs(urlsplit(uri).query)["secret"][0]
    assert secret.encode() not in db.path.read_bytes()
    other_key = TotpStore(db, Secret(os.urandom(32)), clock)
    with pytest.raises(StateError, match="does not decrypt"):
        other_key.verify(WHO, "123456")
    # A sealed secret moved to another identity's row does not open (identity is the AAD).
    with db.transaction() as cur:
        cur.execute("UPDATE totp_secrets SET identity = 'https://idp|sub-b'")
    with pytest.raises(StateError):
        store.verify("https://idp|sub-b", "123456")


def test_policy() -> None:
    ops = Identity("i", "s", "n", ("ops",))
    assert not totp_required(TotpPolicy(), ops, "web01")
    assert totp_required(TotpPolicy(all=True), ops, None)
    assert totp_required(TotpPolicy(groups=("ops",)), ops, None)
    assert not totp_required(TotpPolicy(groups=("dev",)), ops, "web01")
    assert totp_required(TotpPolicy(targets=("db01",)), ops, "db01")
    assert not totp_required(TotpPolicy(targets=("db01",)), ops, "web01")
