"""``bastion replay SESSION``: play, print or export a recorded session, verified first."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

import click

from bastion.audit import AuditLog
from bastion.cli.display import printable
from bastion.cli.options import config_option
from bastion.config.load import load_config
from bastion.config.model import Config
from bastion.errors import ReplayError, UsageError, VerificationFailed
from bastion.replay.export import export_cast
from bastion.replay.follow import CastFollower
from bastion.replay.locate import Located, locate
from bastion.replay.player import PlayerOptions, play
from bastion.replay.sanitize import without_surrogates
from bastion.replay.screens import Timeline
from bastion.replay.session import Channel, SessionFolder, open_session_folder
from bastion.replay.timing import parse_time
from bastion.replay.transcript import channel_events, screen_at, transcript


def analyst() -> str:
    """Who is replaying: the user behind sudo, else the OS user."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


def _audit(config: Config, event: str, **fields: object) -> None:
    log = AuditLog(config.paths.audit_log, config.server.node_id, stream=None)
    try:
        log.emit(event, **fields)
    finally:
        log.close()


def _mode(screen: bool, as_transcript: bool, export: str | None, raw: str | None,
          follow: bool) -> str:
    chosen = [name for name, on in (("screen", screen), ("transcript", as_transcript),
                                    ("export", export is not None), ("raw", raw is not None),
                                    ("follow", follow)) if on]
    if len(chosen) > 1:
        raise UsageError(f"choose one of --screen, --transcript, --export, --raw, --follow "
                         f"(got {', '.join('--' + c for c in chosen)})")
    return chosen[0] if chosen else "play"


def _write_raw(folder: SessionFolder, chan: Channel, stream: str) -> None:
    if sys.stdout.isatty():
        raise UsageError("--raw writes the recorded bytes unfiltered: redirect it to a file or "
                         "a pipe, not a terminal")
    data = folder.read_stream(chan, stream)
    if data is None:
        if stream != "stdout":
            raise ReplayError(f"channel {chan.number} has no byte-exact {stream} stream "
                              "(recorded as an asciicast: only its output is available)")
        _cast, events = channel_events(folder, chan)
        data = without_surrogates("".join(e.data for e in events if e.code == "o")).encode()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


@click.command("replay")
@click.argument("session")
@config_option
@click.option("--channel", type=int, default=None, metavar="N",
              help="Channel number (default: the first with a terminal, else the first).")
@click.option("--at", "at", default=None, metavar="TIME",
              help="Start at (or show) this moment: seconds, MM:SS or HH:MM:SS.")
@click.option("--speed", type=click.FloatRange(0.125, 64), default=1.0, show_default=True)
@click.option("--idle-limit", type=click.FloatRange(0.1, None), default=None, metavar="SECONDS",
              help="Shorten pauses longer than this.")
@click.option("--paused", is_flag=True, help="Start paused.")
@click.option("--input", "show_input", is_flag=True, help="Show the recorded keystrokes.")
@click.option("--screen", is_flag=True, help="Print the screen at --at as text and exit.")
@click.option("--transcript", "as_transcript", is_flag=True,
              help="Print the commands with their output as plain text.")
@click.option("--export", default=None, metavar="FILE",
              help="Write a sanitized asciicast for asciinema's players.")
@click.option("--raw", type=click.Choice(["stdout", "stderr", "stdin"]), default=None,
              help="Write a stream's exact recorded bytes to stdout (not to a terminal).")
@click.option("--follow", is_flag=True, help="Watch a running session as it is recorded.")
@click.option("--no-verify", is_flag=True,
              help="Replay even if the evidence does not verify (a warning stays shown).")
@click.option("--public-key", "public_keys", metavar="FILE", multiple=True,
              help="Trusted Ed25519 public key (PEM); repeatable. Default: [evidence].")
@click.option("--endpoint-url", default=None, metavar="URL", help="S3 endpoint override.")
def replay(session: str, config_path: str, channel: int | None, at: str | None, speed: float,
           idle_limit: float | None, paused: bool, show_input: bool, screen: bool,
           as_transcript: bool, export: str | None, raw: str | None, follow: bool,
           no_verify: bool, public_keys: tuple[str, ...], endpoint_url: str | None) -> None:
    """Replay SESSION (a session id, a session folder or an s3:// address)."""
    mode = _mode(screen, as_transcript, export, raw, follow)
    start = parse_time(at) if at is not None else 0.0
    if screen and at is None:
        raise UsageError("--screen needs --at TIME")
    config = load_config(config_path)
    located = locate(session, spool_dir=config.paths.spool_dir, storage=config.storage,
                     endpoint_url=endpoint_url)
    try:
        _replay(config, located, mode, channel, start, speed, idle_limit, paused, show_input,
                export, raw, no_verify, [Path(p) for p in public_keys])
    finally:
        located.close()


def _replay(config: Config, located: Located, mode: str, channel: int | None, start: float,
            speed: float, idle_limit: float | None, paused: bool, show_input: bool,
            export: str | None, raw: str | None, no_verify: bool,
            public_keys: list[Path]) -> None:
    warning = ""
    verified = False
    if mode == "follow":
        warning = "live session: not sealed yet, not verified"
    else:
        keys = public_keys or list(config.evidence.public_keys if config.evidence else ())
        verdict = located.verify(keys)
        verified = verdict.ok
        if not verdict.ok:
            if not no_verify:
                _audit(config, "replay.refused", who=analyst(), where=located.where,
                       reason=verdict.reason)
                raise VerificationFailed(f"{located.where} does not verify: {verdict.reason}; "
                                         "not replayed (--no-verify replays it anyway, marked "
                                         "unverified)")
            warning = f"NOT VERIFIED: {verdict.reason}"
            click.echo(f"bastion: warning: {printable(warning)}", err=True)
    folder = open_session_folder(located.folder)
    _audit(config, "replay.view", who=analyst(), session=folder.session_id,
           where=located.where, mode=mode, verified=verified)
    if mode == "follow":
        _follow(folder, channel, speed, show_input, warning)
        return
    chan = folder.channel(channel)
    if mode == "raw":
        assert raw is not None
        _write_raw(folder, chan, raw)
    elif mode == "transcript":
        for line in transcript(folder, chan):
            click.echo(line)
    elif mode == "export":
        assert export is not None
        count = export_cast(folder, chan, Path(export))
        click.echo(f"wrote {count} events to {export}", err=True)
    elif mode == "screen":
        if chan.cast_name is None:
            raise ReplayError(f"channel {chan.number} has no terminal recording; use "
                              "--transcript")
        for line in screen_at(folder.read_cast(chan), start):
            click.echo(line)
    elif chan.cast_name is None or not chan.pty:
        for line in transcript(folder, chan):  # exec without a pty: text, not a terminal
            click.echo(line)
    else:
        _require_terminal()
        cast = folder.read_cast(chan)
        options = PlayerOptions(speed=speed, idle_limit=idle_limit, start_at=start,
                                paused=paused, show_input=show_input, warning=warning,
                                commands=folder.commands(chan, cast))
        play(Timeline(cast), options, sys.stdin.fileno(), sys.stdout.fileno())


def _require_terminal() -> None:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("interactive replay needs a terminal; use --screen --at TIME, "
                         "--transcript, --export FILE or --raw")


def _follow(folder: SessionFolder, channel: int | None, speed: float, show_input: bool,
            warning: str) -> None:
    _require_terminal()
    follower = CastFollower.wait_for_channel(folder.path, channel)
    cast = follower.initial()
    timeline = Timeline(cast)
    options = PlayerOptions(speed=speed, start_at=cast.duration, show_input=show_input,
                            warning=warning, follow=True, poll=follower.poll,
                            commands=follower.commands)
    play(timeline, options, sys.stdin.fileno(), sys.stdout.fileno())
