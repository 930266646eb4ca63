"""The masking stages in a pipeline with a fake StageContext and a fake clock."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from pathlib import Path
from typing import Any

from test_masking_detectors import GH

from bastion.config.masking import MaskingConfig, TargetMasking
from bastion.config.model import Target
from bastion.masking import MaskingFactory, Timing
from bastion.relay.pipeline import ChannelInfo, ChannelKind, Pipeline, Stream
from bastion.server.features import masking_feature


class FakeClock:
    """``call_later`` on a clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, int, Callable[[], None], Any]] = []
        self.count = 0

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any:
        clock = self

        class Handle:
            cancelled = False

            def cancel(self) -> None:
                self.cancelled = True

        handle = Handle()
        self.count += 1
        heapq.heappush(self.timers, (self.now + delay, self.count, callback, handle))
        del clock
        return handle

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while self.timers and self.timers[0][0] <= end:
            when, _, callback, handle = heapq.heappop(self.timers)
            self.now = when
            if not handle.cancelled:
                callback()
        self.now = end

    def pending(self) -> list[float]:
        return [when - self.now for when, _, _, h in self.timers if not h.cancelled]


class FakeContext:
    def __init__(self, info: ChannelInfo) -> None:
        self.info = info
        self.markers: list[str] = []
        self.audits: list[tuple[str, dict[str, Any]]] = []

    def marker(self, label: str) -> None:
        self.markers.append(label)

    def audit(self, event: str, **fields: Any) -> None:
        self.audits.append((event, fields))

    def notify_user(self, text: str) -> None: ...
    def send_to_target(self, data: bytes) -> None: ...
    def note_command(self, line: str, verdict: str, rule: str | None = None) -> None: ...
    def pause_input(self) -> None: ...
    def resume_input(self) -> None: ...
    def end_channel(self, reason: str) -> None: ...


def target(**masking: Any) -> Target:
    return Target(name="web01", host="127.0.0.1", masking=TargetMasking(**masking))


def info(kind: ChannelKind = ChannelKind.SHELL, pty: bool = True, **masking: Any) -> ChannelInfo:
    return ChannelInfo(kind=kind, pty=pty, term="xterm", width=80, height=24, command=None,
                       subsystem=None, session_id="s1", channel=1, user="alice",
                       identity_key="k", groups=(), target=target(**masking), login="deploy")


class Channel:
    """A pipeline built from the masking factory, with every sink captured."""

    def __init__(self, chan: ChannelInfo, config: MaskingConfig | None = None) -> None:
        self.clock = FakeClock()
        self.factory = MaskingFactory(config or MaskingConfig(),
                                      Timing(hold_time=0.001, record_hold=2.0, echo_window=1.0),
                                      call_later=self.clock.call_later)
        self.ctx = FakeContext(chan)
        self.user: list[bytes] = []
        self.target: list[bytes] = []
        self.rec_in: list[bytes] = []
        self.rec_out: list[bytes] = []
        self.pipeline = Pipeline.build(
            [masking_feature(self.factory)], chan, self.ctx,
            to_target=lambda d, s: self.target.append(d), target_end=lambda: None,
            record_input=lambda d, s: self.rec_in.append(d),
            record_output=lambda d, s: self.rec_out.append(d),
            to_user=lambda d, s: self.user.append(d), user_end=lambda: None)

    def out(self, data: bytes) -> None:
        self.pipeline.output.feed(data, Stream.DATA)

    def key(self, data: bytes) -> None:
        self.pipeline.input.feed(data, Stream.DATA)


def test_secret_masked_for_the_user_and_the_recording() -> None:
    ch = Channel(info())
    ch.out(b"token " + GH[:10].encode())
    ch.out(GH[10:].encode() + b" done\r\n")
    ch.pipeline.output.end()
    assert b"".join(ch.user) == b"token " + b"*" * len(GH) + b" done\r\n"
    assert b"".join(ch.rec_out) == b"".join(ch.user)
    assert ch.factory.session_counts("s1") == {"github_token": 1}


def test_a_possible_secret_start_waits_only_the_hold_time() -> None:
    ch = Channel(info())
    ch.out(b"listing of g")  # could be the start of ghp_...
    assert b"".join(ch.user) == b"listing of "
    assert ch.clock.pending() == [0.001]
    ch.clock.advance(0.001)
    assert b"".join(ch.user) == b"listing of g"
    ch.out(b"o")
    ch.out(b"\r\n")
    assert b"".join(ch.user) == b"listing of go\r\n"


def test_key_echo_is_never_held_and_the_recording_still_masks() -> None:
    ch = Channel(info())
    ch.out(b"$ ")
    for key in GH[:6]:
        ch.out(key.encode())  # each typed key's echo
        assert b"".join(ch.user).endswith(key.encode()), "shown at once"
    assert ch.clock.pending() == [] or all(t > 0.5 for t in ch.clock.pending())
    ch.out(GH[6:].encode() + b"\r\n")
    ch.clock.advance(5)
    assert GH.encode() not in b"".join(ch.rec_out)
    assert b"".join(ch.rec_out) == b"$ " + b"*" * len(GH) + b"\r\n"


def test_plain_echo_is_not_held() -> None:
    ch = Channel(info())
    ch.out(b"user@web01:~$ ")
    ch.out(b"l")
    assert b"".join(ch.user) == b"user@web01:~$ l"
    assert ch.clock.pending() == []


def test_a_secret_split_by_a_timed_release_is_still_masked_in_the_recording() -> None:
    ch = Channel(info())
    ch.out(b"x ghp_")
    ch.clock.advance(0.01)  # the user saw "ghp_" (the next chunk was late)
    ch.out(GH[4:].encode() + b" end\r\n")
    ch.clock.advance(5)
    recorded = b"".join(ch.rec_out)
    assert GH.encode() not in recorded and GH[4:].encode() not in recorded
    assert recorded == b"x " + b"*" * len(GH) + b" end\r\n"


def test_user_output_unmasked_when_switched_off_but_recording_masked() -> None:
    ch = Channel(info(mask_user_output=False))
    ch.out(b"key " + GH.encode() + b"\r\n")
    ch.clock.advance(5)
    assert b"".join(ch.user) == b"key " + GH.encode() + b"\r\n"
    assert GH.encode() not in b"".join(ch.rec_out)


def test_masking_off_per_target() -> None:
    ch = Channel(info(masking_off=["github_token"]))
    ch.out(b"key " + GH.encode() + b" 4111 1111 1111 1111\r\n")
    ch.pipeline.output.end()
    user = b"".join(ch.user)
    assert GH.encode() in user and b"4111 1111 1111" not in user
    assert MaskingFactory(MaskingConfig()).scanner(target(masking_off=["*"])) is None


def test_typed_secret_masked_in_recorded_keystrokes() -> None:
    ch = Channel(info())
    for key in b"export API_TOKEN=hunter22":
        ch.key(bytes([key]))
        ch.out(bytes([key]))  # the shell echoes it
        ch.clock.advance(0.05)  # typing speed
    ch.key(b"\r")
    ch.clock.advance(3)
    assert b"".join(ch.target) == b"export API_TOKEN=hunter22\r", "the target gets every key"
    assert b"".join(ch.rec_in) == b"export API_TOKEN=********\r"


def test_no_echo_input_is_recorded_as_a_count_of_keys() -> None:
    ch = Channel(info())
    ch.out(b"[sudo] password for deploy: ")
    for key in b"s3cretPW":
        ch.key(bytes([key]))
    ch.key(b"\r")
    ch.clock.advance(1.5)  # no echo came within the window
    ch.out(b"\r\n")
    ch.key(b"ls\r")
    ch.out(b"ls\r\nfile\r\n")
    ch.clock.advance(3)
    assert b"".join(ch.target) == b"s3cretPW\rls\r"
    recorded = b"".join(ch.rec_in)
    assert b"s3cret" not in recorded
    assert recorded == b"********\rls\r"
    assert ch.ctx.markers == ["input hidden: 8 keys"]
    assert ch.factory.session_counts("s1") == {"hidden_input": 1}


def test_no_echo_is_decided_as_soon_as_output_moves_on_after_enter() -> None:
    ch = Channel(info())
    ch.out(b"Password: ")
    ch.key(b"Zq8hiddenPW77")
    ch.key(b"\r")
    ch.out(b"\r\n")  # read -s; echo
    ch.key(b"ex")  # typed before the decision would have timed out
    ch.out(b"got-13\r\n$ ex")
    ch.key(b"it\r")
    ch.out(b"it\r\n")
    assert b"".join(ch.rec_in) == b"*************\rexit\r"
    assert ch.ctx.markers == ["input hidden: 13 keys"]


def test_echo_off_at_a_shell_prompt_does_not_hide_commands() -> None:
    """`stty -echo` then a command: not a secret's prompt, so the keys are recorded as typed
    (echo off is no way to type commands off the record)."""
    ch = Channel(info())
    ch.out(b"root@web01:~# ")
    ch.key(b"touch /tmp/hidden\r")
    ch.clock.advance(1.5)  # no echo within the window
    ch.out(b"root@web01:~# ")
    assert b"".join(ch.rec_in) == b"touch /tmp/hidden\r"
    assert ch.ctx.markers == ["input not echoed: 17 keys"]


def test_echoed_line_with_enter_is_recorded_as_typed() -> None:
    ch = Channel(info())
    ch.key(b"ls -l\r")  # typed fast: the echo comes after the Enter
    ch.out(b"ls")
    ch.out(b" -l\r\ntotal 0\r\n$ ")
    assert b"".join(ch.rec_in) == b"ls -l\r"
    assert ch.ctx.markers == []


def test_full_screen_keys_are_not_taken_for_hidden_input() -> None:
    ch = Channel(info())
    ch.out(b"\x1b[?1049h")  # vim on the alternate screen
    ch.key(b"dd")
    ch.clock.advance(3)
    assert b"".join(ch.rec_in) == b"dd"


def test_exec_bytes_pass_unchanged_and_are_counted() -> None:
    ch = Channel(info(kind=ChannelKind.EXEC, pty=False))
    key = b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
    ch.out(key[:20])
    ch.out(key[20:] + key)
    ch.pipeline.input.feed(b"password=abc123\n", Stream.DATA)
    ch.pipeline.output.end()
    ch.pipeline.close()
    assert b"".join(ch.user) == key + key and b"".join(ch.rec_out) == key + key
    assert b"".join(ch.target) == b"password=abc123\n"
    counts = ch.factory.channel("s1", 1)
    assert counts is not None and counts.counts() == {"env_secret": 1, "private_key": 2}
    assert ch.ctx.audits == [("masking.summary", {"counts": {"env_secret": 1, "private_key": 2},
                                                   "mode": "counted"})]


def test_mask_exec_masks_output_and_stdin() -> None:
    ch = Channel(info(kind=ChannelKind.EXEC, pty=False, mask_exec=True))
    ch.out(b"t " + GH.encode() + b"\n")
    ch.pipeline.input.feed(b"DB_PASSWORD=abc123\n", Stream.DATA)
    ch.pipeline.output.end()
    ch.pipeline.input.end()
    assert GH.encode() not in b"".join(ch.user) + b"".join(ch.rec_out)
    assert b"".join(ch.target) == b"DB_PASSWORD=******\n"


def test_summary_marker_and_audit_on_a_pty() -> None:
    ch = Channel(info())
    ch.out(b"4111 1111 1111 1111\r\n")
    ch.pipeline.output.end()
    ch.pipeline.close()
    assert ch.ctx.markers == ["masked: card 1"]
    assert ch.ctx.audits == [("masking.summary", {"counts": {"card": 1}, "mode": "masked"})]
    assert ch.factory.forget_session("s1") == {"card": 1}
    assert ch.factory.session_counts("s1") == {}


def test_sftp_and_disabled_masking_add_no_stages() -> None:
    factory = MaskingFactory(MaskingConfig())
    ctx = FakeContext(info())
    assert factory(info(kind=ChannelKind.SFTP, pty=False), ctx) is None
    assert MaskingFactory(MaskingConfig(enabled=False))(info(), ctx) is None


def test_factory_mask_text_uses_config(tmp_path: Path) -> None:
    from bastion.config.masking import CustomDetector
    config = MaskingConfig(detectors=(CustomDetector("employee", r"EMP-[0-9]{6}"),),
                           allow=("4111 1111 1111 1111",))
    factory = MaskingFactory(config)
    assert factory.mask_text("id EMP-123456 card 4111 1111 1111 1111") == (
        "id ********** card 4111 1111 1111 1111")


def test_detectors_are_compiled_when_the_server_builds_its_features(tmp_path: Path) -> None:
    """Hyperscan compiles each target's detectors when a worker starts (about 45 ms a set), so
    the first session through a worker does not wait for it."""
    from test_config_errors import BASE

    from bastion.config import load_config
    from bastion.masking import prefilter
    from bastion.server.features import build_features

    path = tmp_path / "bastion.toml"
    path.write_text(BASE + '\n[[targets]]\nname = "db01"\nhost = "127.0.0.1"\nhost_key = '
                    + repr(BASE.split('host_key = "')[1].split('"')[0]).replace("'", '"')
                    + '\nmasking_off = ["jwt"]\n', encoding="utf-8")
    prefilter.database.cache_clear()
    build_features(load_config(path))
    compiled = prefilter.database.cache_info().currsize
    assert compiled >= 4  # a raw and a visible database for web01's set and for db01's
