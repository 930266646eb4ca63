"""Property tests over what hostile peers and broken files feed bastion: the SSH user-name
parser, the target menu, asciicast recovery, manifest parsing and verification, and the config
loader. No crash (only the module's own error class), no hang, and the invariants that matter:
a parsed user name names a configured target; recovery leaves every line valid or reported; a
changed manifest never verifies; a config either loads or is one ``ConfigError`` line.

The default suite runs a few examples of each (seconds); ``scripts/fuzz`` runs many more
(``BASTION_FUZZ_EXAMPLES``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from harness.evidence import make_sealer, record_sessions
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.config import load_config
from bastion.config.model import Target
from bastion.errors import ConfigError, ManifestError, TargetNameError
from bastion.evidence.manifest import parse_manifest
from bastion.evidence.signing import load_public_key
from bastion.evidence.sources import LocalSource
from bastion.evidence.verify import TrustedKey, Verifier, default_session_policies
from bastion.policy.access import parse_username
from bastion.recording.asciicast import close_interrupted
from bastion.relay.menu import TargetMenu

EXAMPLES = int(os.environ.get("BASTION_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 100,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

HOST_KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
CONFIG = f"""\
[server]
port = 2222
max_sessions_per_user = 4

[vault]
key_file = "vault.key"

[[users]]
name = "alice"
keys = ["{HOST_KEY}"]
groups = ["ops"]

[[targets]]
name = "web01"
host = "127.0.0.1"
host_key = "{HOST_KEY}"
default_login = "deploy"

[[targets]]
name = "db-01_x"
host = "127.0.0.1"
port = 2200
host_key = "{HOST_KEY}"

[[access]]
groups = ["ops"]
targets = ["web01"]
logins = ["deploy"]
"""


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("cfg") / "bastion.toml"
    path.write_text(CONFIG, encoding="utf-8")
    return load_config(path)


# -- the SSH user name --------------------------------------------------------------------------

USERNAME_PARTS = st.sampled_from(["web01", "db-01_x", "deploy", "@", "root", ".", "-",
                                  "..", "/", ":", "%", "\x00", "\n", "é", " ", "*", "WEB01",
                                  "web01.", "127.0.0.1", "[::1]", "22", "a" * 40])
usernames = st.one_of(st.text(max_size=300),
                      st.lists(USERNAME_PARTS, max_size=12).map("".join))


@FUZZ
@given(usernames)
def test_parse_username_names_only_configured_targets(config: Any, username: str) -> None:
    try:
        request = parse_username(username, config)
    except TargetNameError as exc:
        assert "\n" not in str(exc)
        return
    if request.target is not None:
        assert config.target(request.target) is not None
        assert request.target in {"web01", "db-01_x"}
    else:
        assert "@" not in username and request.login is None  # the menu, for a plain word
    if request.login is not None:
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", request.login)


# -- the target menu ----------------------------------------------------------------------------

class _Channel:
    def __init__(self) -> None:
        self.written = bytearray()

    def write(self, data: bytes) -> None:
        self.written += data


TARGETS = [Target(name=f"t{n}", host="127.0.0.1") for n in range(1, 4)]


@FUZZ
@given(st.lists(st.binary(max_size=40), max_size=20))
def test_the_menu_takes_any_bytes_and_picks_only_a_listed_target(chunks: list[bytes]) -> None:
    async def run() -> None:
        chan = _Channel()
        menu = TargetMenu(chan, TARGETS)  # type: ignore[arg-type]
        for chunk in chunks:
            menu.feed(chunk)
        choice = menu._choice
        if choice.done():
            assert choice.result() in (None, *TARGETS)
            if choice.result() is not None:
                assert any(b in b"\r\n" for b in b"".join(chunks))
        assert len(chan.written) <= 100 * (1 + sum(map(len, chunks)))

    asyncio.run(run())


# -- asciicast recovery -------------------------------------------------------------------------

HEADER = json.dumps({"version": 2, "width": 80, "height": 24, "timestamp": 1})
cast_lines = st.lists(st.one_of(
    st.tuples(st.floats(0, 1e6, allow_nan=False), st.sampled_from("oimr"),
              st.text(max_size=20)).map(lambda e: json.dumps(list(e))),
    st.text(max_size=30),
    st.just('[1.0, "o", "torn'),
    st.just("[true, \"o\", \"x\"]"),
), max_size=12)


@FUZZ
@given(st.booleans(), cast_lines, st.binary(max_size=30))
def test_recovery_leaves_every_cast_line_valid_or_reported(
        with_header: bool, lines: list[str], tail: bytes) -> None:
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "1-shell.cast"
        body = "\n".join(([HEADER] if with_header else []) + lines)
        path.write_bytes(body.encode("utf-8", "surrogatepass") + b"\n" + tail)
        bad = close_interrupted(path, {"version": 2, "width": 80, "height": 24, "timestamp": 0})
        again = close_interrupted(path, {"version": 2, "width": 80, "height": 24,
                                         "timestamp": 0})
        assert again == bad  # idempotent: recovery interrupted and run again changes nothing
        result = path.read_bytes().split(b"\n")
        assert result[-1] == b""
        rows = result[:-1]
        assert json.loads(rows[-1])[1:] == ["m", "interrupted"]
        for number, row in enumerate(rows, start=1):
            if number in bad:
                continue
            value = json.loads(row)
            if number == 1:
                assert isinstance(value, dict) and value.get("version") == 2
            else:
                assert isinstance(value, list) and len(value) == 3


# -- manifests ----------------------------------------------------------------------------------

@FUZZ
@given(st.binary(max_size=400))
def test_parse_manifest_refuses_junk_with_one_error(raw: bytes) -> None:
    try:
        parse_manifest(raw)
    except ManifestError as exc:
        assert "\n" not in str(exc)


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrustedKey]:
    work = tmp_path_factory.mktemp("sealed")
    [folder] = record_sessions(work / "spool", 1, output_bytes=200)
    sealer, public = make_sealer(work)
    sealer.seal(folder)
    return folder, TrustedKey.of(load_public_key(public))


mutations = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 16)),
)


def _mutate(raw: bytes, mutation: tuple[Any, ...]) -> bytes:
    kind, at, what = mutation
    at %= len(raw)
    if kind == "flip":
        return raw[:at] + bytes([raw[at] ^ what]) + raw[at + 1:]
    if kind == "insert":
        return raw[:at] + what + raw[at:]
    return raw[:at] + raw[at + what:]


@FUZZ
@given(mutations, st.sampled_from(["manifest.json", "manifest.sig", "1-shell.cast",
                                   "session.json"]))
def test_a_changed_manifest_signature_or_file_never_verifies(
        sealed: tuple[Path, TrustedKey], mutation: tuple[Any, ...], name: str) -> None:
    folder, key = sealed
    with tempfile.TemporaryDirectory() as work:
        copy = Path(work) / folder.name
        shutil.copytree(folder, copy)
        original = (copy / name).read_bytes()
        changed = _mutate(original, mutation)
        if changed == original:
            return
        (copy / name).write_bytes(changed)
        report = Verifier(default_session_policies([key])).run(LocalSource(copy))
        if name == "manifest.sig" and _same_signature(original, changed):
            return  # key_id is an unsigned hint; JSON whitespace changes nothing
        assert not report.ok, (name, mutation)


def _same_signature(original: bytes, changed: bytes) -> bool:
    try:
        before, after = json.loads(original), json.loads(changed)
    except ValueError:
        return False
    return isinstance(after, dict) and {k: v for k, v in before.items() if k != "key_id"} == \
        {k: v for k, v in after.items() if k != "key_id"}


def test_the_untouched_sealed_session_verifies(sealed: tuple[Path, TrustedKey]) -> None:
    folder, key = sealed
    assert Verifier(default_session_policies([key])).run(LocalSource(folder)).ok


# -- the config loader --------------------------------------------------------------------------

toml_bits = st.sampled_from(['"', "'", "[", "]", "[[", "]]", "=", "\n", "#", "{", "}", ",",
                             "port", "targets", "access", "1e999", "-1", "true", "nan",
                             '"\\u0000"', "\x00", "\xff", "é", " ", "0x10", "9" * 30,
                             "[server]", "[[targets]]", 'name = "x"', "host_key = 1"])


@FUZZ
@given(st.integers(0, len(CONFIG)), st.integers(0, 40),
       st.lists(toml_bits, max_size=6).map("".join))
def test_the_config_loader_loads_or_says_one_line(
        tmp_path_factory: pytest.TempPathFactory, at: int, cut: int, insert: str) -> None:
    text = CONFIG[:at] + insert + CONFIG[at + cut:]
    path = tmp_path_factory.getbasetemp() / "fuzz.toml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
    except ConfigError as exc:
        assert str(exc) and "Traceback" not in str(exc)


@pytest.mark.parametrize("edit", ["padding bits", "renamed field", "other digest", "extra field"])
def test_an_altered_signature_file_does_not_verify(
        sealed: tuple[Path, TrustedKey], edit: str, tmp_path: Path) -> None:
    """Found by the property above: these edits of manifest.sig used to verify."""
    folder, key = sealed
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    doc = json.loads((copy / "manifest.sig").read_bytes())
    if edit == "padding bits":  # "...Bg==" -> "...Bh==": same bytes, unused bits set
        sig = doc["signature"]
        doc["signature"] = sig[:-3] + chr(ord(sig[-3]) + 1) + sig[-2:]
    elif edit == "renamed field":
        doc["lanifest_sha256"] = doc.pop("manifest_sha256")
    elif edit == "other digest":
        doc["manifest_sha256"] = "0" * 64
    else:
        doc["comment"] = "added later"
    (copy / "manifest.sig").write_text(json.dumps(doc, separators=(",", ":")))
    assert not Verifier(default_session_policies([key])).run(LocalSource(copy)).ok
