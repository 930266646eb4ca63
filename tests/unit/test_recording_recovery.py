"""Crash recovery of byte-exact streams and of casts damaged in the middle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from harness.evidence import make_sealer

from bastion.evidence.manifest import parse_manifest
from bastion.evidence.signing import load_public_key
from bastion.evidence.sources import LocalSource
from bastion.evidence.verify import TrustedKey, verify_source
from bastion.recording import ChannelKind, Spool

META: dict[str, Any] = {"identity": {"subject": "bob"}, "client": {},
                        "target": {"name": "db01"}}


def timing_totals(path: Path) -> dict[str, int]:
    totals = {"I": 0, "O": 0, "E": 0}
    for line in path.read_text().splitlines():
        code, _delay, size = line.split(" ")
        totals[code] += int(size)
    return totals


def session(folder: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((folder / "session.json").read_text())
    return result


def recover(root: Path) -> Spool:
    spool = Spool(root, "node-1")
    spool.lock()
    spool.recover()
    spool.unlock()
    return spool


_RECORDER = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from bastion.recording import ChannelKind, Spool
    spool = Spool(Path(sys.argv[1]), "node-1")
    spool.lock()
    rec = spool.start_session({"identity": {}, "client": {}, "target": {}})
    writer = rec.open_channel(ChannelKind.EXEC, pty=False, width=0, height=0, term=None,
                              command="cat > f", user="u", target="t", login="l")
    chunk = bytes(range(256)) * 128  # 32 KiB, an SSH packet's worth
    for i in range(400):
        writer.input(chunk)
        writer.output(b"%d\\n" % i)
        if i == 50:
            spool.flush_due(max_age=0)  # some timing lines reach the disk
    print(rec.path, flush=True)
    sys.stdin.read()  # wait to be killed, buffers unflushed
""")


def test_sigkill_mid_transfer_streams_are_closed_and_accounted(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    proc = subprocess.Popen([sys.executable, "-c", _RECORDER, str(root)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        folder = Path(proc.stdout.readline().strip())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    stdin = folder / "1-exec.stdin"
    on_disk = stdin.read_bytes()
    assert len(on_disk) > 0 and on_disk == (bytes(range(256)) * 128 * 400)[:len(on_disk)]
    spool = recover(root)
    assert spool.recovery_results[0].state.value == "interrupted"
    meta = session(folder)
    assert meta["state"] == "interrupted"
    assert meta["recordings"] == ["1-exec.stdin", "1-exec.stdout", "1-exec.stderr",
                                  "1-exec.timing"]
    assert stdin.read_bytes() == on_disk  # the bytes on disk are evidence: all kept
    totals = timing_totals(folder / "1-exec.timing")
    assert totals["I"] == len(on_disk)
    assert totals["O"] == (folder / "1-exec.stdout").stat().st_size
    assert totals["E"] == 0
    channel = meta["channels"][0]
    assert channel["closed"] == meta["end"]
    assert channel["markers"][-1]["label"] == "interrupted"
    recover(root)  # a second recovery changes nothing
    assert session(folder) == meta
    # Sealed as interrupted, with the streams' hashes; verify passes.
    sealer, pub = make_sealer(tmp_path, "node-1")
    manifest = parse_manifest(sealer.seal(folder).read_bytes())
    assert manifest.doc["state"] == "interrupted"
    assert {f.name: f.size for f in manifest.files}["1-exec.stdin"] == len(on_disk)
    report = verify_source(LocalSource(folder), [TrustedKey.of(load_public_key(pub))])
    assert report.ok


def test_torn_timing_line_is_cut_and_uncounted_bytes_get_a_line(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    spool = Spool(root, "node-1")
    spool.lock()
    rec = spool.start_session(META)
    writer = rec.open_channel(ChannelKind.EXEC, pty=False, width=0, height=0, term=None,
                              command="sh", user="u", target="t", login="l")
    writer.output(b"hello")
    writer.stderr(b"oops")
    writer.flush()
    spool.unlock()
    with (rec.path / "1-exec.timing").open("ab") as fh:
        fh.write(b"O 0.0001")  # torn mid-line
    with (rec.path / "1-exec.stdout").open("ab") as fh:
        fh.write(b" world")  # reached the disk before its timing line
    recover(root)
    lines = (rec.path / "1-exec.timing").read_text().splitlines()
    assert lines[-1] == "O 0.000000 6"
    assert timing_totals(rec.path / "1-exec.timing") == {"I": 0, "O": 11, "E": 4}


def test_timing_claiming_lost_bytes_is_cut_to_the_stream(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    spool = Spool(root, "node-1")
    spool.lock()
    rec = spool.start_session(META)
    writer = rec.open_channel(ChannelKind.EXEC, pty=False, width=0, height=0, term=None,
                              command="sh", user="u", target="t", login="l")
    writer.output(b"a" * 10)
    writer.output(b"b" * 10)
    writer.flush()
    spool.unlock()
    os.truncate(rec.path / "1-exec.stdout", 15)  # the OS lost the end (power failure)
    spool = recover(root)
    assert timing_totals(rec.path / "1-exec.timing")["O"] == 15
    assert "5 stdout bytes" in session(rec.path)["recording_errors"][0]
    assert spool.recovery_results[0].state.value == "interrupted"


def test_cast_with_a_garbage_middle_line_recovers_as_damaged(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    spool = Spool(root, "node-1")
    spool.lock()
    rec = spool.start_session(META)
    writer = rec.open_channel("shell", width=80, height=24, term="xterm", command=None,
                              user="u", target="t", login="l")
    for index in range(5):
        writer.output(b"line %d\r\n" % index)
    writer.flush()
    spool.unlock()
    lines = writer.path.read_bytes().split(b"\n")
    lines[2] = b'[0.1, "o", "tampered'  # line 3 of the file: not JSON
    lines[4] = b"\x00\x00\x00"
    writer.path.write_bytes(b"\n".join(lines) + b'[9.0, "o", "torn')
    spool = recover(root)
    result = spool.recovery_results[0]
    assert result.state.value == "damaged"
    meta = session(rec.path)
    assert meta["state"] == "damaged"
    assert meta["recording_errors"] == ["1-shell.cast: invalid lines 3, 5 (kept as found)"]
    kept = writer.path.read_bytes().split(b"\n")
    assert kept[2] == b'[0.1, "o", "tampered' and kept[4] == b"\x00\x00\x00"
    assert kept[-2].endswith(b', "m", "interrupted"]')  # the torn tail was dropped
    assert json.loads(kept[-3]) == [*json.loads(lines[-2])[:2], "line 4\r\n"]


def test_odd_session_json_fields_do_not_stop_recovery(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    spool = Spool(root, "node-1")
    spool.lock()
    rec = spool.start_session(META)
    rec.open_channel(ChannelKind.EXEC, pty=False, width=0, height=0, term=None,
                     command="sh", user="u", target="t", login="l")
    spool.unlock()
    meta = session(rec.path)
    meta["recording_errors"] = 7
    meta["channels"][0]["markers"] = [{"t": "soon", "label": "x"}, "junk"]
    meta["channels"].append("junk")
    (rec.path / "session.json").write_text(json.dumps(meta))
    spool = recover(root)
    assert spool.recovery_skipped == []
    after = session(rec.path)
    assert after["state"] == "interrupted"
    assert after["channels"][0]["markers"][-1] == {"t": 0, "label": "interrupted"}


def _crashed_shell(root: Path, tail: bytes) -> Path:
    """A session left active with a shell cast ending in ``tail``; returns its folder."""
    spool = Spool(root, "node-1")
    spool.lock()
    rec = spool.start_session(META)
    writer = rec.open_channel("shell", width=80, height=24, term="xterm", command=None,
                              user="u", target="t", login="l")
    writer.output(b"hello\r\n")
    writer.flush()
    spool.unlock()
    with writer.path.open("ab") as fh:
        fh.write(tail)
    return rec.path


def test_last_event_with_an_invalid_time_is_damaged_not_interrupted(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    tails = [b'[NaN, "o", "x"]\n', b'[1e400, "o", "x"]\n', b'[-5, "o", "x"]\n',
             b'[1' + b"0" * 400 + b', "o", "x"]\n']
    folders = [_crashed_shell(root, tail) for tail in tails]
    spool = recover(root)
    assert spool.recovery_skipped == []
    for folder, tail in zip(folders, tails, strict=True):
        meta = session(folder)
        assert meta["state"] == "damaged", tail
        assert meta["recording_errors"] == ["1-shell.cast: invalid lines 3 (kept as found)"]
        lines = (folder / "1-shell.cast").read_bytes().split(b"\n")
        assert lines[2] == tail.rstrip(b"\n")  # kept as found
        marker = json.loads(lines[3])
        assert marker[1:] == ["m", "interrupted"] and 0 <= marker[0] < 1e6


def test_hostile_files_skip_one_session_and_recover_the_others(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    deep_cast = _crashed_shell(root, b"[" * 100_000 + b'\n[0.5, "o", "after"]\n')
    deep_meta = _crashed_shell(root, b"")
    (deep_meta / "session.json").write_bytes(b"[" * 100_000)
    big_int = _crashed_shell(root, b'[1' + b"0" * 400 + b', "o", "x"]')
    spool = Spool(root, "node-1")
    spool.lock()
    rec = spool.start_session(META)
    writer = rec.open_channel(ChannelKind.EXEC, pty=False, width=0, height=0, term=None,
                              command="sh", user="u", target="t", login="l")
    writer.output(b"abc")
    spool.flush_due(max_age=0)
    spool.unlock()
    timing = rec.path / "1-exec.timing"
    timing.write_bytes(timing.read_bytes() + b"O 1.000000 " + b"9" * 5000 + b"\nO 0.100000 0\n")
    spool = recover(root)
    assert [p for p, _ in spool.recovery_skipped] == [deep_meta]
    assert "nested too deeply" in spool.recovery_skipped[0][1]
    assert session(deep_cast)["state"] == "damaged"
    assert session(big_int)["state"] == "damaged"
    assert session(rec.path)["state"] == "damaged"
    assert session(rec.path)["recording_errors"] == [
        "1-exec.timing: invalid lines 2 (kept as found)"]


def test_a_session_recovery_had_to_leave_is_audited(tmp_path: Path) -> None:
    from bastion.server.app import audit_recovery

    root = tmp_path / "spool"
    deep_meta = _crashed_shell(root, b"")
    (deep_meta / "session.json").write_bytes(b"[" * 100_000)
    spool = recover(root)
    events: list[tuple[str, dict[str, object]]] = []

    class Audit:
        def emit(self, event: str, **fields: object) -> None:
            events.append((event, fields))

    audit_recovery(Audit(), spool)  # type: ignore[arg-type]
    assert [(event, fields["session"]) for event, fields in events] == [
        ("recording.recovery_failed", deep_meta.name)]
    assert "nested too deeply" in str(events[0][1]["error"])
