"""Session search: commands from metadata or markers, output and input with their times,
filters, the local index; exec streams; the running-session registry and kill requests."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from bastion.errors import ReplayError
from bastion.replay.catalog import Catalog
from bastion.replay.search import Filters, compile_pattern, find, parse_when
from bastion.replay.session import open_session_folder
from bastion.replay.streams import timed_events
from bastion.replay.transcript import transcript
from bastion.state.db import StateDB
from bastion.state.sessions import RunningSession, SessionRegistry

HEADER = {"version": 2, "width": 80, "height": 24, "term": {"type": "xterm"}}


def _session(spool: Path, sid: str, *, user: str = "alice", target: str = "web01",
             events: list[list[object]], commands: list[dict[str, object]] | None = None,
             start: str = "2026-11-20T10:00:00Z") -> Path:
    folder = spool / sid
    folder.mkdir(parents=True)
    meta = {"schema": 1, "session_id": sid, "state": "closed", "end_reason": "client closed",
            "identity": {"name": user}, "target": {"name": target, "login": "deploy"},
            "start": start, "recordings": ["1-shell.cast"], "commands": commands or []}
    (folder / "session.json").write_text(json.dumps(meta), encoding="utf-8")
    lines = [json.dumps(HEADER)] + [json.dumps(e) for e in events]
    (folder / "1-shell.cast").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    root = tmp_path / "spool"
    _session(root, "20261120T100000Z-000000000001", events=[
        [1.0, "i", "systemctl stop nginx\r"], [1.0, "m", "command: systemctl stop nginx"],
        [1.5, "o", "\x1b[31mStopped nginx\x1b[0m\r\n$ "]])
    _session(root, "20261121T100000Z-000000000002", user="bob", target="db01", events=[
        [2.0, "o", "uptime output\r\n"]],
        commands=[{"channel": 1, "t": 1.25, "line": "uptime", "verdict": "allow",
                   "rule": None}], start="2026-11-21T10:00:00Z")
    return root


def test_search_by_marker_command_output_and_input(tmp_path: Path, spool: Path) -> None:
    catalog = Catalog(tmp_path / "state", spool)
    first, second = catalog.summaries()
    content = catalog.content(first)
    assert content is not None
    hit = find(content, "command", compile_pattern("systemctl stop"))
    assert hit is not None and (hit.channel, hit.t) == (1, 1.0)
    out = find(content, "output", compile_pattern("Stopped nginx"))
    assert out is not None and out.t == 1.5 and out.text == "Stopped nginx"
    typed = find(content, "input", compile_pattern(r"stop nginx\^M"))
    assert typed is not None and typed.t == 1.0
    other = catalog.content(second)
    assert other is not None
    assert find(other, "command", compile_pattern("systemctl")) is None
    meta_hit = find(other, "command", compile_pattern("^uptime$"))
    assert meta_hit is not None and meta_hit.t == 1.25  # from session.json's commands
    catalog.close()


def test_index_is_reused_and_refreshed(tmp_path: Path, spool: Path) -> None:
    catalog = Catalog(tmp_path / "state", spool)
    for summary in catalog.summaries():
        catalog.content(summary)
    catalog.close()
    again = Catalog(tmp_path / "state", spool)
    assert len(again._cache) == 2 and all(v[2] is not None for v in again._cache.values())
    cast = spool / "20261121T100000Z-000000000002" / "1-shell.cast"
    cast.write_text(cast.read_text() + json.dumps([3.0, "o", "NEWTEXT"]) + "\n")
    summaries = again.summaries()
    content = again.content(summaries[1])
    assert content is not None and find(content, "output", compile_pattern("NEWTEXT"))
    again.close()


def test_filters(tmp_path: Path, spool: Path) -> None:
    catalog = Catalog(tmp_path / "state", spool)
    summaries = catalog.summaries()
    catalog.close()
    now = dt.datetime(2026, 11, 21, 12, tzinfo=dt.UTC)
    assert [s.user for s in summaries if Filters(user="bob").accept(s)] == ["bob"]
    assert [s.target for s in summaries if Filters(target="web01").accept(s)] == ["web01"]
    since = parse_when("1d", now)
    assert [s.user for s in summaries if Filters(since=since).accept(s)] == ["bob"]
    until = parse_when("2026-11-20T23:00:00Z", now)
    assert [s.user for s in summaries if Filters(until=until).accept(s)] == ["alice"]
    assert not [s for s in summaries if Filters(running=frozenset()).accept(s)]
    assert len([s for s in summaries if Filters(end_reason="client").accept(s)]) == 2


def test_transcript_shows_commands_and_plain_output(spool: Path) -> None:
    folder = open_session_folder(spool / "20261120T100000Z-000000000001")
    lines = list(transcript(folder, folder.channel(None)))
    assert "[00:01] $ systemctl stop nginx" in lines
    assert "Stopped nginx" in lines
    assert not any("\x1b" in line for line in lines)


def test_exec_streams_with_timing(tmp_path: Path) -> None:
    folder = tmp_path / "20261120T100000Z-000000000003"
    folder.mkdir()
    (folder / "session.json").write_text(json.dumps({
        "schema": 2, "session_id": folder.name, "state": "closed",
        "channels": [{"number": 1, "kind": "exec", "pty": False, "command": "cat",
                      "files": ["1-exec.stdin", "1-exec.stdout", "1-exec.stderr",
                                "1-exec.timing"], "exit_status": 0,
                      "markers": [{"t": 0.8, "label": "exit: 0"}, {"t": "x", "label": 5}]}]}),
        encoding="utf-8")
    (folder / "1-exec.stdin").write_bytes(b"hello\n")
    (folder / "1-exec.stdout").write_bytes(b"hello\n\xff")
    (folder / "1-exec.stderr").write_bytes(b"warn\n")
    (folder / "1-exec.timing").write_text("I 0.100000 6\nO 0.010000 6\nE 0.5 5\nO 0.1 1\n")
    session = open_session_folder(folder)
    chan = session.channel(None)
    assert chan.pty is False and chan.command == "cat"
    events = timed_events(session, chan)
    assert [(round(e.t, 2), e.code, e.data) for e in events] == [
        (0.1, "i", "hello\n"), (0.11, "o", "hello\n"), (0.61, "o", "warn\n"),
        (0.71, "o", "\ufffd")]
    assert session.read_stream(chan, "stdout") == b"hello\n\xff"
    lines = list(transcript(session, chan))
    assert "[00:00] stdin: hello^J" in lines and "[00:00] -- exit: 0" in lines
    assert lines[-1] == "# exit status 0"
    (folder / "1-exec.timing").write_text("O 0.1 999\n")
    with pytest.raises(ReplayError, match="past the end"):
        timed_events(session, chan)


def test_hostile_file_names_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "20261120T100000Z-000000000004"
    folder.mkdir()
    (folder / "session.json").write_text(json.dumps({
        "session_id": folder.name, "channels": [
            {"number": 1, "kind": "shell", "pty": True, "files": ["../../etc/passwd.cast"]}]}))
    session = open_session_folder(folder)
    with pytest.raises(ReplayError, match="not a bastion recording name"):
        session.read_cast(session.channel(1))


def test_registry_and_kill_requests(tmp_path: Path) -> None:
    db = StateDB.in_state_dir(tmp_path)
    registry = SessionRegistry(db, clock=lambda: 100.0)
    running = RunningSession("s1", "node-a", "alice", "web01", "deploy", "127.0.0.1", "3",
                             1234, 99.0)
    registry.register(running)
    registry.register(RunningSession("s2", "node-b", "bob", "db01", "root", "::1", "1", 1, 1))
    assert [s.session_id for s in registry.running()] == ["s2", "s1"]
    assert registry.pending_kills("node-a") == []
    registry.request_kill("s1", "x" * 500, "carol")
    pending = registry.pending_kills("node-a")
    assert [(k.session_id, k.requested_by, len(k.reason)) for k in pending] == [
        ("s1", "carol", 200)]
    assert registry.pending_kills("node-b") == []  # each node sees only its own sessions
    registry.mark_done("s1")
    assert registry.pending_kills("node-a") == []
    request = registry.kill_request("s1")
    assert request is not None and request.done == 100.0
    registry.unregister(["s1"])
    registry.clear_node("node-b")
    assert registry.running() == []
    db.close()
