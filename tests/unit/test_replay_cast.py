"""Reading hostile or damaged recordings: one clear ReplayError, never a traceback."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bastion.errors import ReplayError, UsageError
from bastion.replay import transcript as transcript_module
from bastion.replay.cast import Cast, CastParser, Event, read_cast
from bastion.replay.catalog import content_of
from bastion.replay.export import export_cast
from bastion.replay.session import (
    Channel,
    SessionFolder,
    _channels_from_meta,
    metadata_commands,
    open_session_folder,
)
from bastion.replay.timing import parse_time

HEADER = json.dumps({"version": 2, "width": 80, "height": 24})

BAD = {
    "empty": b"",
    "not json": b"hello\n",
    "version 1": b'{"version": 1, "width": 80, "height": 24}\n',
    "header a list": b"[1, 2]\n",
    "huge width": b'{"version": 2, "width": 10000000, "height": 24}\n',
    "width a string": b'{"version": 2, "width": "80", "height": 24}\n',
    "event not a list": (HEADER + '\n{"t": 1}\n').encode(),
    "event too short": (HEADER + '\n[1, "o"]\n').encode(),
    "negative time": (HEADER + '\n[-1, "o", "x"]\n').encode(),
    "NaN time": (HEADER + '\n[NaN, "o", "x"]\n').encode(),
    "infinite time": (HEADER + '\n[Infinity, "o", "x"]\n').encode(),
    "time a string": (HEADER + '\n["1", "o", "x"]\n').encode(),
    "time a bool": (HEADER + '\n[true, "o", "x"]\n').encode(),
    "data a number": (HEADER + '\n[1, "o", 5]\n').encode(),
    "bad resize": (HEADER + '\n[1, "r", "80xx24"]\n').encode(),
    "resize huge": (HEADER + '\n[1, "r", "99999999x5"]\n').encode(),
    "deep nesting": (HEADER + "\n" + "[" * 100000 + "\n").encode(),
    "binary garbage": HEADER.encode() + b"\n\xff\xfe\x00\x01garbage\n",
    "torn event": (HEADER + '\n[1.0, "o", "unfinished').encode(),
    "time a 401-digit integer": (HEADER + '\n[1' + "0" * 400 + ', "o", "x"]\n').encode(),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_recordings_are_one_clear_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / "1-shell.cast"
    path.write_bytes(BAD[name])
    with pytest.raises(ReplayError) as caught:
        read_cast(path)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_unknown_codes_skipped_and_time_never_goes_back(tmp_path: Path) -> None:
    path = tmp_path / "1-shell.cast"
    path.write_text("\n".join([HEADER, '[2.0, "o", "a"]', '[1.0, "o", "b"]', '[3, "x", "?"]',
                               '[4, "i", "ls\\r"]', ""]), encoding="utf-8")
    cast = read_cast(path)
    assert [(e.t, e.code, e.data) for e in cast.events] == [
        (2.0, "o", "a"), (2.0, "o", "b"), (4.0, "i", "ls\r")]


def test_huge_integer_times_in_metadata_are_skipped() -> None:
    huge = 10 ** 400  # float() of it overflows
    meta = {"commands": [{"channel": 1, "t": huge, "line": "x"},
                         {"channel": 1, "t": 2, "line": "kept"}],
            "channels": [{"number": 1, "markers": [{"t": huge, "label": "x"},
                                                   {"t": 1, "label": "kept"}]}]}
    assert [c.line for c in metadata_commands(meta)] == ["kept"]
    [chan] = _channels_from_meta(meta) or []
    assert chan.markers == ((1.0, "kept"),)


def test_search_skips_a_recording_with_a_huge_time_with_a_note(tmp_path: Path) -> None:
    folder = tmp_path / "20260101T000000Z-0123456789ab"
    folder.mkdir()
    (folder / "session.json").write_text(json.dumps({
        "schema": 2, "session_id": folder.name, "state": "closed",
        "commands": [{"channel": 1, "t": 10 ** 400, "line": "x"}],
        "channels": [{"number": 1, "kind": "shell", "pty": True, "files": ["1-shell.cast"]}]}))
    (folder / "1-shell.cast").write_bytes(BAD["time a 401-digit integer"])
    content = content_of(open_session_folder(folder))
    assert content.output == [] and content.commands == []
    assert content.problems == [f"channel 1: {folder / '1-shell.cast'}: line 2: event time "
                                "must be a number >= 0"]


def test_parser_waits_for_a_torn_line() -> None:
    parser = CastParser("live")
    assert parser.feed((HEADER + '\n[1, "o", "he').encode()) == []
    events = parser.feed(b'llo"]\n')
    assert [e.data for e in events] == ["hello"]


def _replay_screen_at_1s(tmp_path: Path, cast: bytes) -> subprocess.CompletedProcess[str]:
    """``bastion replay --screen --at 1`` on a closed session holding ``cast`` (unverified)."""
    session = tmp_path / "spool" / "20260101T000000Z-0123456789ab"
    session.mkdir(parents=True)
    (session / "session.json").write_text(json.dumps({
        "schema": 1, "session_id": session.name, "state": "closed",
        "recordings": ["1-shell.cast"]}), encoding="utf-8")
    (session / "1-shell.cast").write_bytes(cast)
    config = tmp_path / "bastion.toml"
    config.write_text(f'[paths]\nstate_dir = "{tmp_path / "state"}"\n'
                      f'spool_dir = "{tmp_path / "spool"}"\n[vault]\nkey_env = "X"\n',
                      encoding="utf-8")
    return subprocess.run([sys.executable, "-m", "bastion", "replay", str(session), "--config",
                           str(config), "--no-verify", "--screen", "--at", "1"],
                          capture_output=True, text=True, timeout=60)


def test_cli_on_a_hostile_recording_prints_one_line(tmp_path: Path) -> None:
    proc = _replay_screen_at_1s(tmp_path, BAD["NaN time"])
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if not line.startswith(
        "bastion: warning:")]
    assert len(errors) == 1 and errors[0].startswith("bastion: "), proc.stderr
    assert "line 2" in errors[0] and "Traceback" not in proc.stderr


def _session_with(tmp_path: Path, cast: bytes) -> tuple[Path, Path]:
    session = tmp_path / "spool" / "20260101T000000Z-0123456789ab"
    _replay_screen_at_1s(tmp_path, cast)
    return session, tmp_path / "bastion.toml"


def _bastion(*args: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "bastion", *map(str, args)],
                          capture_output=True, timeout=60, stdin=subprocess.DEVNULL)


def test_lone_surrogates_never_crash_an_output(tmp_path: Path) -> None:
    cast = (HEADER + '\n[0.1, "o", "A\\ud800B\\r\\n"]\n[0.2, "m", "mark \\udfff"]\n'
            '[0.3, "i", "\\ud800"]\n').encode()
    session, config = _session_with(tmp_path, cast)
    common = (session, "--config", config, "--no-verify")
    text = _bastion("replay", *common, "--transcript")
    assert text.returncode == 0, text.stderr
    assert "A\ufffdB".encode() in text.stdout and "mark \ufffd".encode() in text.stdout
    raw = _bastion("replay", *common, "--raw", "stdout")
    assert raw.returncode == 0 and raw.stdout == "A\ufffdB\r\n".encode(), raw.stderr
    out = tmp_path / "out.cast"
    export = _bastion("replay", *common, "--export", out)
    assert export.returncode == 0, export.stderr
    assert "\ufffd" in out.read_text(encoding="utf-8")


def test_export_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    session, _ = _session_with(tmp_path, (HEADER + '\n[0.1, "o", "hello"]\n').encode())
    folder = open_session_folder(session)
    out = tmp_path / "out.cast"

    class Full(io.FileIO):
        def write(self, _data: object) -> int:
            raise OSError(28, "No space left on device")

    real = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, mode: Full(fd, "w") if "w" in mode
                        else real(fd, mode))
    with pytest.raises(ReplayError, match="No space left"):
        export_cast(folder, folder.channel(None), out)
    monkeypatch.undo()
    assert not out.exists()
    assert export_cast(folder, folder.channel(None), out) == 1


@pytest.mark.parametrize(("text", "seconds"), [
    ("0", 0.0), ("90", 90.0), ("1:30", 90.0), ("12:03", 723.0), ("01:02:03", 3723.0),
    ("12:03.5", 723.5), ("75:00", 4500.0), (" 5 ", 5.0)])
def test_parse_time(text: str, seconds: float) -> None:
    assert parse_time(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "1:2:3:4", "-5", "1:60", "1.5:00", "1::2", "1e9",
                                  "nan", "1:99:00"])
def test_parse_time_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_time(text)


def test_cli_replays_sequences_with_parameters_no_command_uses(tmp_path: Path) -> None:
    # pyte raised on these (TypeError, UnboundLocalError) and the replay ended with a traceback.
    events = [[0.5, "o", "first\r\nsecond\x1b[1;3AX"], [0.6, "o", "\x1b[9999J\x1b[2;5;9HY"]]
    proc = _replay_screen_at_1s(tmp_path, (HEADER + "\n" + "\n".join(
        json.dumps(e) for e in events) + "\n").encode())
    assert proc.returncode == 0, proc.stderr
    # Up one line (the 3 is ignored), an unknown erase erases nothing, row 2 column 5.
    assert proc.stdout.splitlines()[:2] == ["first X", "secoYd"], proc.stdout


def test_transcript_of_output_without_newlines_is_linear() -> None:
    bar = "\r 42% [=========>          ] 1.2MB/s eta 3m"
    events = [Event(i * 0.1, "o", bar) for i in range(300_000)] + [Event(1e5, "o", "done\n")]
    cast = Cast("x", 80, 24, {}, events)
    folder = SessionFolder(Path("/nonexistent"), {"session_id": "x"}, [])
    chan = Channel(1, "shell", True, None, ("1-shell.cast",))
    started = time.monotonic()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(transcript_module, "channel_events", lambda _f, _c: (cast, cast.events))
        lines = list(transcript_module.transcript(folder, chan))
    assert time.monotonic() - started < 10  # quadratic: minutes
    assert lines[-1].endswith("done") and len(lines) == 3
