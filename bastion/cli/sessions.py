"""``bastion sessions list|search|kill``: find recorded sessions, end a running one."""

from __future__ import annotations

import datetime as dt
import json
import math
import sys
import time
from typing import Any

import click

from bastion.audit import AuditLog
from bastion.cli.options import config_option
from bastion.cli.replay import analyst
from bastion.config.load import load_config
from bastion.config.model import Config
from bastion.errors import ReplayError, StateError, UsageError
from bastion.replay.catalog import Catalog, Summary
from bastion.replay.sanitize import one_line
from bastion.replay.search import Filters, Hit, compile_pattern, find, parse_when
from bastion.replay.transcript import clock
from bastion.state.backends import open_state
from bastion.state.sessions import MAX_REASON, SessionRegistry
from bastion.storage.client import make_client

KILL_WAIT = 15.0  # seconds to wait for the server to carry a kill out


def _filters(f: Any) -> click.Command:
    for option in reversed([
        click.option("--user", default=None, help="Only sessions of this user."),
        click.option("--target", default=None, help="Only sessions on this target."),
        click.option("--login", default=None, help="Only sessions as this target login."),
        click.option("--since", default=None, metavar="WHEN",
                     help="Started at or after: 7d, 12h, 30m, 2w ago or an ISO date."),
        click.option("--until", default=None, metavar="WHEN", help="Started at or before."),
        click.option("--end-reason", default=None, metavar="TEXT",
                     help="State or end reason contains TEXT (killed, idle, interrupted...)."),
        click.option("--running", is_flag=True, help="Only sessions running now."),
        click.option("--local-only", is_flag=True, help="Only the spool, not the S3 bucket."),
        click.option("--endpoint-url", default=None, metavar="URL", help="S3 endpoint override."),
        click.option("--json/--no-json", "as_json", default=None,
                     help="JSON lines (default when stdout is not a terminal)."),
        config_option,
    ]):
        f = option(f)
    return f  # type: ignore[no-any-return]


def _running_ids(config: Config) -> frozenset[str]:
    db = open_state(config)
    try:
        return frozenset(s.session_id for s in SessionRegistry(db).running())
    finally:
        db.close()


def _running_elsewhere(config: Config, known: set[str]) -> list[Summary]:
    """Sessions the shared registry says are running that this node's catalog does not hold
    (running on another node, with PostgreSQL as the state database)."""
    try:
        db = open_state(config)
        try:
            running = SessionRegistry(db).running()
        finally:
            db.close()
    except StateError as exc:  # the list of recordings is still worth showing
        click.echo(f"bastion: warning: running sessions unknown: {exc}", err=True)
        return []
    return [Summary(session_id=s.session_id, source="registry", where=f"node {s.node}",
                    user=s.user, target=s.target, login=s.login,
                    start=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(s.started)), end="",
                    state="active", end_reason="", node=s.node)
            for s in running if s.session_id not in known]


def _open(config: Config, local_only: bool, endpoint_url: str | None) -> Catalog:
    s3 = None
    if config.storage is not None and not local_only:
        storage = config.storage
        client = make_client(endpoint_url or storage.endpoint_url, storage.region,
                             storage.max_attempts)
        s3 = (client, storage.bucket, storage.prefix)
    return Catalog(config.paths.state_dir, config.paths.spool_dir, s3)


def _selected(config: Config, catalog: Catalog, opts: dict[str, Any]) -> list[Summary]:
    filters = _filters_of(config, opts)
    return [s for s in catalog.summaries() if filters.accept(s)]


def _filters_of(config: Config, opts: dict[str, Any]) -> Filters:
    now = dt.datetime.now(dt.UTC)
    return Filters(
        user=opts["user"], target=opts["target"], login=opts["login"],
        since=parse_when(opts["since"], now) if opts["since"] else None,
        until=parse_when(opts["until"], now) if opts["until"] else None,
        end_reason=opts["end_reason"],
        running=_running_ids(config) if opts["running"] else None)


_COLUMNS = (("SESSION", 33), ("START", 20), ("USER", 14), ("TARGET", 12), ("LOGIN", 10),
            ("STATE", 11))


def _row(summary: Summary) -> list[str]:
    return [summary.session_id, summary.start[:19], summary.user, summary.target,
            summary.login, summary.state]


def replay_at(hit: Hit, kind: str) -> str:
    """The ``--at`` that shows a match: a command's output comes after the line is read."""
    return clock(math.ceil(hit.t) + (1 if kind == "command" else 0))


def _print(rows: list[tuple[Summary, Hit | None]], as_json: bool | None, search: str) -> None:
    if as_json is None:
        as_json = not sys.stdout.isatty()
    if as_json:
        for summary, hit in rows:
            doc = summary.as_json()
            if hit is not None:
                doc["match"] = {"channel": hit.channel, "t": round(hit.t, 3), "at": clock(hit.t),
                                "replay_at": replay_at(hit, search), "text": hit.text[:2000]}
            click.echo(json.dumps(doc, sort_keys=True))  # escaped: no control, no lone surrogate
        return
    header = [name.ljust(width) for name, width in _COLUMNS]
    header.append("MATCH" if search else "END REASON")
    click.echo(" ".join(header).rstrip())
    for summary, hit in rows:
        cells = [one_line(value, width).ljust(width)
                 for value, (_, width) in zip(_row(summary), _COLUMNS, strict=True)]
        if hit is not None:
            cells.append(f"{clock(hit.t)} ch{hit.channel} {one_line(hit.text, 60)}")
        else:
            cells.append(one_line(summary.end_reason, 40))
        click.echo(" ".join(cells).rstrip())
    if search and rows:
        first, hit = rows[0]
        assert hit is not None
        click.echo(f"\nreplay the moment: bastion replay {first.session_id} --at "
                   f"{replay_at(hit, search)}"
                   + (f" --channel {hit.channel}" if hit.channel != 1 else ""), err=True)


def _warn_skipped(catalog: Catalog) -> None:
    for why in catalog.skipped[:20]:
        click.echo(f"bastion: warning: skipped {one_line(why, 300)}", err=True)


@click.group("sessions")
def sessions() -> None:
    """List, search and end recorded sessions."""


@sessions.command("list")
@_filters
def list_cmd(**opts: Any) -> None:
    """Sessions in the spool and the S3 bucket, oldest first."""
    config = load_config(opts["config_path"])
    catalog = _open(config, opts["local_only"], opts["endpoint_url"])
    try:
        filters = _filters_of(config, opts)
        summaries = catalog.summaries()
    finally:
        catalog.close()
    # Sessions running on another node are in the shared registry, not in this node's spool.
    summaries += _running_elsewhere(config, {s.session_id for s in summaries})
    rows: list[tuple[Summary, Hit | None]] = [
        (s, None) for s in sorted(summaries, key=lambda s: (s.start, s.session_id))
        if filters.accept(s)]
    _warn_skipped(catalog)
    _print(rows, opts["as_json"], search="")


@sessions.command("search")
@click.option("--command", "command_re", default=None, metavar="REGEX",
              help="A command line matching REGEX.")
@click.option("--output", "output_re", default=None, metavar="REGEX",
              help="Output (as plain text) matching REGEX.")
@click.option("--input", "input_re", default=None, metavar="REGEX",
              help="Typed input matching REGEX (controls as ^C, ^M...).")
@_filters
def search_cmd(command_re: str | None, output_re: str | None, input_re: str | None,
               **opts: Any) -> None:
    """Sessions whose commands, output or input match a regular expression."""
    given = [(k, p) for k, p in (("command", command_re), ("output", output_re),
                                 ("input", input_re)) if p is not None]
    if len(given) != 1:
        raise UsageError("give exactly one of --command, --output or --input REGEX")
    kind, pattern = given[0]
    regex = compile_pattern(pattern)
    config = load_config(opts["config_path"])
    catalog = _open(config, opts["local_only"], opts["endpoint_url"])
    rows: list[tuple[Summary, Hit | None]] = []
    try:
        for summary in _selected(config, catalog, opts):
            content = catalog.content(summary)
            hit = find(content, kind, regex) if content is not None else None
            if hit is not None:
                rows.append((summary, hit))
    finally:
        catalog.close()
    _warn_skipped(catalog)
    _print(rows, opts["as_json"], search=kind)


@sessions.command("kill")
@click.argument("session")
@click.option("--reason", required=True, help="Why; the user sees it.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait until the server has ended the session.")
@config_option
def kill_cmd(session: str, reason: str, wait: bool, config_path: str) -> None:
    """End a running session: the user sees the reason, the recording gets a marker."""
    text = one_line(reason, MAX_REASON).strip()
    if not text:
        raise UsageError("--reason must say why (the user sees it)")
    config = load_config(config_path)
    who = analyst()
    db = open_state(config)
    try:
        registry = SessionRegistry(db)
        running = registry.get_running(session)
        if running is None:
            raise ReplayError(f"session {one_line(session, 80)} is not running on any node")
        registry.request_kill(session, text, who)
        log = AuditLog(config.paths.audit_log, config.server.node_id, stream=None)
        log.emit("session.kill_requested", session=session, by=who, reason=text,
                 node=running.node, user=running.user, target=running.target)
        log.close()
        if not wait:
            click.echo(f"kill of {session} requested")
            return
        deadline = time.monotonic() + KILL_WAIT
        while time.monotonic() < deadline:
            request = registry.kill_request(session)
            if request is not None and request.done is not None:
                click.echo(f"session {session} ({one_line(running.user, 40)} on "
                           f"{one_line(running.target, 40)}) ended: {text}")
                return
            time.sleep(0.2)
    finally:
        db.close()
    raise ReplayError(f"kill of {session} requested, but node {one_line(running.node, 40)} has "
                      f"not ended it within {KILL_WAIT:.0f}s (is its server running?)")
