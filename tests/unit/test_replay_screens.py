"""Keyframe seeking gives exactly the screen a linear replay gives, at any moment; drawing
writes only the player's own sequences."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.errors import ReplayError
from bastion.relay import channels
from bastion.replay.cast import MAX_COLUMNS, MAX_ROWS, Cast, Event, read_cast
from bastion.replay.render import draw_rows, status_line
from bastion.replay.screens import Emulator, Timeline, text_rows

PIECES = ["hello ", "\r\n", "\x1b[31mred\x1b[0m", "\x1b[2J", "\x1b[H", "\x1b[5;10H*",
          "\x1b[?1049h", "\x1b[?1049l", "\x1b]0;title\x07", "\x1b[1;3", "4m", "日本",
          "\x1b7", "\x1b8", "\x1b[3;20r", "\x1bM", "\x1b(0q\x1b(B", "x" * 90, "\x1b[K",
          "\x1b]52;c;", "AAAA\x07", "\t|", "\x1b[2P", "\x1b[4h ins \x1b[4l"]


def _linear(cast: Cast, count: int) -> Emulator:
    emu = Emulator(cast.width, cast.height)
    for event in cast.events[:count]:
        emu.apply(event)
    return emu


def _state(emu: Emulator) -> tuple[object, ...]:
    screen = emu.screen
    return (text_rows(screen), screen.cursor.x, screen.cursor.y, screen.columns, screen.lines,
            [[screen.buffer[y][x] for x in range(screen.columns)] for y in range(screen.lines)])


events_strategy = st.lists(
    st.tuples(st.floats(min_value=0, max_value=3, allow_nan=False),
              st.one_of(st.sampled_from(PIECES).map(lambda p: ("o", p)),
                        st.sampled_from(["40x10", "80x24", "20x5"]).map(lambda r: ("r", r)),
                        st.just(("m", "command: ls")))),
    min_size=1, max_size=120)


@settings(max_examples=60, deadline=None)
@given(events_strategy, st.lists(st.floats(min_value=0, max_value=400, allow_nan=False),
                                 min_size=1, max_size=6))
def test_seek_equals_linear_replay(raw: list[tuple[float, tuple[str, str]]],
                                   moments: list[float]) -> None:
    t = 0.0
    events = []
    for gap, (code, data) in raw:
        t += gap
        events.append(Event(t, code, data))
    cast = Cast("test", 30, 8, {}, events)
    timeline = Timeline(cast, every_seconds=1.0, every_bytes=64)
    for moment in moments:  # out of order on purpose: seeks go back and forth
        emu, count = timeline.emulator_at(moment)
        assert count == sum(1 for e in events if e.t <= moment)
        assert _state(emu) == _state(_linear(cast, count))


def test_restored_keyframes_are_independent() -> None:
    events = [Event(float(i), "o", f"line {i}\r\n") for i in range(50)]
    cast = Cast("test", 20, 5, {}, events)
    timeline = Timeline(cast, every_seconds=5.0)
    first, _ = timeline.emulator_at(20)
    first.apply(Event(21, "o", "\x1b[2JCHANGED"))
    again, _ = timeline.emulator_at(20)
    assert again.lines() == _linear(cast, 21).lines()
    assert "CHANGED" not in "".join(again.lines())


def test_screen_text_holds_no_control_characters() -> None:
    cast = Cast("t", 20, 3, {}, [Event(0, "o", "a\x1b]0;x\x07b\x9b6nc\x90q\x9cd")])
    emu, _ = Timeline(cast).emulator_at(1)
    assert emu.lines()[0] == "abcd"


def test_drawing_writes_only_our_own_sequences() -> None:
    hostile = ("\x1b[31mred\x1b]52;c;AAAA\x07\x1bP$qm\x1b\\\x9b6n\x1b[6n\x1b[>c"
               "\x1b[1;44mbold-on-blue\x1b[38;2;1;2;3mtc\x1b[?1000h 日本 \u200b\u0085")
    cast = Cast("t", 40, 4, {}, [Event(0, "o", hostile)])
    emu, _ = Timeline(cast).emulator_at(1)
    drawn = draw_rows(emu.screen, range(4), 40, 4) + status_line(5, 40, "status")
    without_ours = re.sub(r"\x1b\[(\d+;\d+H|[0-9;]*m|K)", "", drawn)
    assert "\x1b" not in without_ours and not any("\x80" <= c <= "\x9f" for c in drawn)
    assert "red" in without_ours and "bold-on-blue" in without_ours
    assert "\x1b[0;1;31;44m" in drawn or "\x1b[0;1;44m" in drawn


@pytest.mark.parametrize(("extra", "plain"), [
    ("\x1b[1;3A", "\x1b[1A"), ("\x1b[2;5B", "\x1b[2B"), ("\x1b[3;1;1C", "\x1b[3C"),
    ("\x1b[1;2D", "\x1b[1D"), ("\x1b[2;5;9H", "\x1b[2;5H"), ("\x1b[1;2;3;4;5K", "\x1b[1K"),
    ("\x1b[2;7;1r", "\x1b[2;7r"), ("\x1b[1;2P", "\x1b[1P"), ("\x1b[1;2L", "\x1b[1L"),
    ("\x1b[9999J", ""), ("\x1b[9999;0K", "")])
def test_parameters_a_command_does_not_use_are_ignored(extra: str, plain: str) -> None:
    # Before: pyte passed every parameter on and its method raised TypeError (or, for an
    # unknown erase, UnboundLocalError): a recording holding ESC[1;3A could not be replayed.
    screens = []
    for sequence in (extra, plain):
        emu = Emulator(20, 6)
        emu.apply(Event(0, "o", "one\r\ntwo\r\nthree\r\nfour" + sequence + "X"))
        screens.append(_state(emu))
    assert screens[0] == screens[1]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["", "?", ">", "=", "!", " "]),
                          st.lists(st.integers(min_value=0, max_value=99999), max_size=6),
                          st.characters(min_codepoint=0x40, max_codepoint=0x7E)),
                min_size=1, max_size=12))
def test_any_csi_sequence_replays(sequences: list[tuple[str, list[int], str]]) -> None:
    data = "".join(f"\x1b[{prefix}{';'.join(map(str, params))}{final}x"
                   for prefix, params, final in sequences)
    emu = Emulator(30, 8)
    emu.apply(Event(0, "o", "ab\r\ncd" + data))
    assert all(line.isprintable() for line in emu.lines())


def test_screen_size_is_capped_at_the_relays_clamp(tmp_path: Path) -> None:
    assert (MAX_COLUMNS, MAX_ROWS) == (channels.MAX_COLUMNS, channels.MAX_ROWS)
    path = tmp_path / "1-shell.cast"
    path.write_text('{"version": 2, "width": 100000, "height": 100000}\n')
    with pytest.raises(ReplayError, match="width must be a number from 1 to 2000"):
        read_cast(path)
    path.write_text('{"version": 2, "width": 80, "height": 24}\n[1, "r", "100000x100000"]\n')
    with pytest.raises(ReplayError, match="out of range"):
        read_cast(path)


def test_keyframes_on_a_full_large_screen_stay_in_proportion() -> None:
    fill = "\x1b[2K\n" * 100  # every cell of a 2000x100 screen, in 500 bytes
    events = [Event(0.0, "o", fill)] + [Event(5.0 * i, "o", "x") for i in range(1, 30)]
    timeline = Timeline(Cast("t", MAX_COLUMNS, 100, {}, events))
    timeline.index_until(len(events))
    assert len(timeline._keyframes) <= 2
    assert "x" in "".join(timeline.emulator_at(1000.0)[0].lines())
