"""The recorded copy stays masked whatever the user's copy let through early.

The user's copy of a pty's output waits ``hold_time`` (1 ms) for a possible secret's rest; a
timer then releases what it holds. The recording is masked from the raw bytes with its own
2 s hold, so however the stream is cut and timed within that, it records what masking the
whole stream at once gives. Each case here leaked into the recording before (found by an
outside probe of the masking).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_masking_detectors import GH, POSITIVE, SCANNER
from test_masking_stages import Channel, info

from bastion.masking.stream import StreamMasker
from bastion.relay.pipeline import ChannelKind, Stream

LATE = 0.002  # longer than the user's hold (1 ms), far shorter than the recording's (2 s)
AWS_ID = "AKIAZ7QPRSTUVWXY2345"


def whole(data: bytes) -> bytes:
    return StreamMasker(SCANNER).mask_all(data)


def recorded(*steps: bytes | float, **masking: object) -> Channel:
    """Feed output chunks (bytes) and clock moves (seconds), then end the stream."""
    ch = Channel(info(**masking))  # type: ignore[arg-type]
    for step in steps:
        if isinstance(step, float):
            ch.clock.advance(step)
        else:
            ch.out(step)
    ch.clock.advance(5)
    ch.pipeline.output.end()
    return ch


@pytest.mark.parametrize(("name", "text", "secret", "shown"), POSITIVE,
                         ids=[f"{v[0]}-{i}" for i, v in enumerate(POSITIVE)])
def test_a_late_second_half_is_masked_in_the_recording_at_every_cut(
        name: str, text: str, secret: str, shown: str) -> None:
    # Typed keys' echoes first ("g", "o"): they pass the user's stage at once, and the
    # recording's scanner used to lose its place after them.
    raw = text.encode()
    expected = whole(b"go\r\n" + raw + b"\r\n")
    assert secret.encode() not in expected
    for cut in range(1, len(raw)):
        ch = recorded(b"g", b"o", b"\r\n", raw[:cut], LATE, raw[cut:] + b"\r\n")
        assert b"".join(ch.rec_out) == expected, f"cut at {cut}"


def test_the_body_of_a_private_key_whose_begin_line_was_cut_is_masked() -> None:
    body = [b"MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun",
            b"VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK"]
    ch = recorded(b"-----BEGIN RSA PRI", LATE, b"VATE KEY-----\n" + body[0] + b"\n",
                  body[1] + b"\n", b"-----END RSA PRIVATE KEY-----\n")
    record = b"".join(ch.rec_out)
    assert not any(line in record for line in body)
    assert record.count(b"*" * 64) == 2


def test_a_colour_sequence_cut_by_a_timed_release_does_not_hide_the_next_secret() -> None:
    # grep --color: ESC[01;31m before the match, cut where the timer fired.
    cases: list[list[bytes | float]] = [
        [b"\x1b[01;3", LATE, b"1m", AWS_ID.encode() + b"\x1b[m\r\n"],
        [b"match: \x1b[01;3", LATE, b"1m\x1b[K" + AWS_ID.encode() + b"\x1b[m\r\n"]]
    for steps in cases:
        ch = recorded(*steps)
        for copy in (ch.user, ch.rec_out):
            assert AWS_ID.encode() not in b"".join(copy), steps
            assert b"*" * len(AWS_ID) in b"".join(copy)


def test_a_cut_escape_sequence_is_held_for_the_next_chunk_not_timed_again() -> None:
    ch = Channel(info())
    ch.out(b"text \x1b[01;3")
    ch.clock.advance(LATE)
    assert b"".join(ch.user) == b"text ", "the text went; the cut sequence shows nothing"
    assert ch.clock.pending() == [] or min(ch.clock.pending()) > 0.5, "no 1 ms timer loop"
    ch.out(b"1mred\x1b[m\r\n")
    assert b"".join(ch.user) == b"text \x1b[01;31mred\x1b[m\r\n"


def test_a_secret_corrected_with_backspace_is_masked_in_the_recorded_output() -> None:
    for erase in (b"\x08 \x08", b"\x08\x1b[K"):
        ch = Channel(info())
        ch.out(b"$ ")
        for key in b"export KEY=AKIAZ7QPRSX":
            ch.out(bytes([key]))
            ch.clock.advance(0.05)
        ch.out(erase)
        for key in b"TUVWXY2345":
            ch.out(bytes([key]))
            ch.clock.advance(0.05)
        ch.out(b"\r\n$ ")
        ch.clock.advance(5)
        record = b"".join(ch.rec_out)
        assert b"AKIAZ7QPRS" not in record and b"TUVWXY2345" not in record, record
        assert record == b"$ export KEY=" + b"*" * 10 + b"X" + erase + b"*" * 10 + b"\r\n$ "


def test_counts_are_the_recordings_once_each() -> None:
    ch = recorded(b"card 4111 1111 ", LATE, b"1111 1111\r\n", GH.encode() + b"\r\n")
    assert ch.factory.session_counts("s1") == {"card": 1, "github_token": 1}


@pytest.mark.parametrize("prompt", [
    "[sudo] contraseña para deploy: ", "[sudo] senha para deploy: ",
    "[sudo] пароль для deploy: ", "Пароль: ",
    "[sudo] deploy 的密码\uff1a",  # zh_CN: a full-width colon
    "[sudo] deploy のパスワード: ", "Wachtwoord: ", "Hasło: ", "[sudo] password for deploy: "])
def test_a_password_typed_at_a_translated_prompt_is_recorded_hidden(prompt: str) -> None:
    ch = Channel(info())
    ch.out(b"$ sudo ls\r\n" + prompt.encode())
    for key in b"Zq9vR2mZtL":
        ch.key(bytes([key]))
        ch.clock.advance(0.05)
    ch.key(b"\r")
    ch.out(b"\r\nfile1\r\n$ ")
    ch.clock.advance(5)
    assert b"".join(ch.rec_in) == b"*" * 10 + b"\r"
    assert ch.ctx.markers == ["input hidden: 10 keys"]


@pytest.mark.parametrize("pieces", [[b"\x1b[24;1H\x1b[?10", b"49l\x1b[23;0;0t"],
                                    [b"\x1b[24;1H\x1b[?", b"10", b"49l"],
                                    [b"\x1b", b"[?1049l"]])
def test_leaving_the_alternate_screen_in_pieces_turns_no_echo_detection_back_on(
        pieces: list[bytes]) -> None:
    ch = Channel(info())
    ch.out(b"\x1b[?1049h")  # vim
    ch.key(b":q\r")
    for piece in pieces:
        ch.out(piece)
        ch.clock.advance(LATE)
    ch.out(b"$ sudo ls\r\n[sudo] password for deploy: ")
    ch.key(b"Zq9vR2mZtL\r")
    ch.out(b"\r\nfile1\r\n$ ")
    ch.clock.advance(5)
    assert b"".join(ch.rec_in) == b":q\r" + b"*" * 10 + b"\r"


def test_mask_exec_masks_a_late_second_half_before_the_target_and_in_the_recording() -> None:
    ch = Channel(info(kind=ChannelKind.EXEC, pty=False, mask_exec=True))
    ch.pipeline.input.feed(b"DB_PASSWORD=", Stream.DATA)
    ch.clock.advance(LATE)
    ch.pipeline.input.feed(b"hunter22\n", Stream.DATA)
    ch.out(b"token " + GH[:12].encode())
    ch.clock.advance(LATE)
    ch.out(GH[12:].encode() + b"\n")
    ch.clock.advance(5)
    ch.pipeline.input.end()
    ch.pipeline.output.end()
    assert b"".join(ch.target) == b"DB_PASSWORD=********\n"
    assert b"".join(ch.rec_in) == b"DB_PASSWORD=********\n"
    assert b"".join(ch.rec_out) == b"token " + b"*" * len(GH) + b"\n"


PIECES = [v[1].encode() for v in POSITIVE] + [
    b"go", b"\r\n", b"$ ", b"\x1b[01;31m", b"\x1b[m", b"\x1b[K", b"plain text ", b"12 ",
    "üñí ".encode(), b"\x08 \x08", b"gh", b"AKIA"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=8),
       st.lists(st.tuples(st.integers(1, 400), st.booleans()), max_size=12))
def test_the_recording_is_the_whole_stream_masked_however_it_is_cut_and_timed(
        pieces: list[bytes], cuts: list[tuple[int, bool]]) -> None:
    stream = b"".join(pieces) + b"\r\n"
    ch = Channel(info())
    pos = 0
    for size, late in cuts:
        ch.out(stream[pos:pos + size])
        pos = min(len(stream), pos + size)
        if late:
            ch.clock.advance(LATE)
    ch.out(stream[pos:])
    ch.clock.advance(5)
    ch.pipeline.output.end()
    assert b"".join(ch.rec_out) == whole(stream)
