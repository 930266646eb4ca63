"""The fast paths of masking do exactly what the full path does.

- A chunk the Hyperscan prefilter finds nothing in (no escape, no control byte, no possible
  secret) skips stripping and RE2 (``Scanner.clean``).
- Escapes are stripped in blocks cut at ground points, and only blocks with a hit are mapped
  (``Stripped``); the hold-back point is mapped from a window that starts at a ground point.
- Counting without masking (``count_only``, exec channels) skips building the masked copy and
  scans a large chunk in cache-sized pieces.
- Card candidates are checked by a Luhn in C and RE2's extension is called directly.

Each is compared with the full path (every chunk stripped and scanned, one position map of the
whole chunk) over generated streams of secrets, escapes, controls, UTF-8 and chunk splits.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_masking_detectors import NEGATIVE, POSITIVE, SCANNER

from bastion.masking import escapes, stream, timed
from bastion.masking.engine import Scanner, luhn_ok, spans_of
from bastion.masking.escapes import EscapeMap, Stripped, ground, strip, suffix_raw_index
from bastion.masking.stream import StreamMasker
from bastion.masking.timed import ScanOnly, SharedState


class FullPathScanner(Scanner):
    """The same detectors, never taking the fast path."""

    def clean(self, raw: bytes) -> bool:
        return False


FULL = FullPathScanner()
PLAIN = b"the quick brown fox jumps over the lazy dog 0123 "
PIECES = [
    PLAIN * 25,  # longer than TAIL_WINDOW: only the end of a clean chunk is scanned
    PLAIN, b"\r\n", b" ", b"x", b"9", b"4111 1111 1111 1111", b"4111 1111", b" 1111 1111",
    b"ghp_", b"A1b2C3d4E5" * 4, b"AKIA", b"Z7QPRSTUVWXY2345", b"TOKEN=", b"s3cr3t",
    b"--password=", b"mysql -u r -p", b"https://u:", b"pw@h", b"Authorization: Bearer ",
    b"eyJhbGciOiJIUzI1NiJ9", b".", b"eyJzdWIiOiIxIn0", b"-----BEGIN RSA PRIVATE KEY-----\n",
    b"MIIEowIBAAKCAQEAx4\n", b"-----END RSA PRIVATE KEY-----\n", b"-----", b"BEGIN ",
    b"\x1b[31m", b"\x1b[0m", b"\x1b[2C", b"\x1b[1;3", b"\x1b", b"[", b"\x1b]0;title\x07",
    b"\x1b]2;a long title " + b"t" * 40 + b"\x1b\\", b"\x1bP" + b"q" * 30 + b"\x1b\\",
    b"\x1b\\", b"\x07", b"\x00", b"\x08", "é".encode(), "✓".encode(), "✓".encode()[:2],
    b"\xff",
]
pieces = st.lists(st.sampled_from(PIECES), min_size=1, max_size=16)
cuts = st.lists(st.integers(0, 3000), max_size=6)


def chunked(data: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({min(p, len(data)) for p in points})
    return [data[a:b] for a, b in zip([0, *marks], [*marks, len(data)], strict=True)]


def run(scanner: Scanner, chunks: list[bytes], *, count_only: bool = False
        ) -> tuple[list[bytes], list[bytes], dict[str, int]]:
    """What each push returned, what was held after it, and the counts."""
    masker = StreamMasker(scanner)
    masker.count_only = count_only
    outs, held = [], []
    for chunk in chunks:
        outs.append(masker.push(chunk))
        held.append(masker.pending)
    outs.append(masker.end())
    return outs, held, dict(masker.counts)


@settings(max_examples=1500, deadline=None)
@given(pieces, cuts, st.sampled_from([1, 5, 16, 64]))
def test_fast_paths_mask_exactly_like_the_full_path(parts: list[bytes], points: list[int],
                                                    block: int) -> None:
    chunks = chunked(b"".join(parts), points)
    with mock.patch.object(escapes, "BLOCK", 1 << 30):  # the reference: one map per chunk
        expected = run(FULL, chunks)
    with mock.patch.object(escapes, "BLOCK", block):
        assert run(SCANNER, chunks) == expected
        _, held, counts = run(SCANNER, chunks, count_only=True)
    if b"\x00" not in b"".join(parts):  # binary data is counted as it is (below)
        assert (held, counts) == expected[1:], "counting only holds and counts the same"


KEY_BLOCK = (b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\n"
             b"-----END OPENSSH PRIVATE KEY-----\n")


def test_binary_data_is_counted_without_stripping_at_every_cut() -> None:
    """A file transfer's bytes (NULs and lone ESCs throughout) are counted as they are: every
    secret written out whole in them is counted once wherever the stream cuts it, and the
    escape stripping never runs (it was a third of an scp -O upload's CPU)."""
    noise = bytes(range(256)) * 3  # every byte value, ESC and NUL included
    data = noise + KEY_BLOCK + noise + b"AKIAZ7QPRSTUVWXY2345 " + noise + b"ghp_" \
        + b"A1b2C3d4E5" * 4 + b" " + noise
    for cut in range(0, len(data) + 1, 7):
        _, _, counts = run(SCANNER, [data[:cut], data[cut:]], count_only=True)
        assert counts == {"private_key": 1, "aws_access_key_id": 1, "github_token": 1}, cut
    stripped: list[int] = []

    def spy(raw: bytes, block: int | None = None) -> Stripped:
        stripped.append(len(raw))
        return Stripped(raw, block)

    with mock.patch.object(stream, "Stripped", side_effect=spy):
        _, _, counts = run(SCANNER, [data[:4000], data[4000:]], count_only=True)
    assert sum(counts.values()) == 3
    assert sum(stripped) < 256, stripped  # at most the held tail, when the stream ends


def test_terminal_text_is_still_stripped_when_counting() -> None:
    """Without a NUL, exec output may be a terminal's text: a secret split by colour codes
    is counted."""
    data = b"key: \x1b[31mAKIAZ7QP\x1b[0mRSTUVWXY2345\r\n"
    _, _, counts = run(SCANNER, [data], count_only=True)
    assert counts == {"aws_access_key_id": 1}


def test_plain_bulk_output_takes_the_fast_path() -> None:
    """Plain text never gets stripped (Stripped is not even built) and passes unchanged."""
    data = PLAIN * 40000  # 2 MB, as the relay hands bulk output over
    masker = StreamMasker(SCANNER)
    with mock.patch.object(stream, "Stripped", side_effect=AssertionError("full path")):
        out = masker.push(data[:1_000_000]) + masker.push(data[1_000_000:]) + masker.end()
    assert out == data
    assert SCANNER.clean(data)


@pytest.mark.parametrize("context", [b"mysql -u root -h db.example.com ", b"Authorization: ",
                                     b"aws_secret_access_key = abc", b"https://user:",
                                     b"ghp_" + b"a1" * 10, b"4111 1111 1111 111"])
def test_a_long_hold_back_at_the_end_of_a_large_clean_chunk(context: bytes) -> None:
    """What may start a secret at the end of a clean chunk is held as on the full path, for
    every cut of a line that keeps a secret's context open for a while."""
    data = PLAIN * 25 + context + b"still the same line " * 5 + b"-pS3cret --password=pw\r\n"
    for cut in range(len(data) - 200, len(data) + 1):
        chunks = [data[:cut], data[cut:]]
        assert run(SCANNER, chunks) == run(FULL, chunks), cut


@pytest.mark.parametrize("index", range(len(POSITIVE)))
def test_a_chunk_with_a_secret_is_never_clean(index: int) -> None:
    text = POSITIVE[index][1].encode()
    assert not SCANNER.clean(text)
    assert not SCANNER.clean(PLAIN * 50 + text + PLAIN * 50)


@pytest.mark.parametrize("sequence", [b"\x1b[31m", b"\x1b]0;t\x07", b"\x1b", b"\x00", b"\x08",
                                      b"\x7f", b"\x1bP1$r\x1b\\"])
def test_a_chunk_with_an_escape_or_control_is_never_clean(sequence: bytes) -> None:
    assert not SCANNER.clean(PLAIN + sequence + PLAIN)


@pytest.mark.parametrize("text", NEGATIVE)
def test_look_alikes_pass_unchanged_on_either_path(text: str) -> None:
    data = text.encode()
    assert run(SCANNER, [data]) == run(FULL, [data])


escape_text = st.lists(st.sampled_from([*PIECES[-20:], b"ab", b" ", b"\\", b"P", b"]"]),
                       max_size=20)


@settings(max_examples=800, deadline=None)
@given(escape_text)
def test_ground_points_split_the_stripping_exactly(parts: list[bytes]) -> None:
    data = b"".join(parts)
    whole = strip(data)
    for at in range(len(data) + 1):
        point = ground(data, at)
        assert at <= point <= len(data)
        assert strip(data[:point]) + strip(data[point:]) == whole, (at, point)


@settings(max_examples=500, deadline=None)
@given(escape_text, st.sampled_from([1, 2, 3, 7, 16]), st.data())
def test_block_maps_equal_the_whole_map(parts: list[bytes], block: int, data: Any) -> None:
    raw = b"".join(parts)
    whole, blocks = EscapeMap(raw), Stripped(raw, block)
    assert blocks.visible == strip(raw)
    size = len(blocks.visible)
    for visible in range(size + 1):
        assert blocks.raw_index(visible) == whole.raw_index(visible)
    start = data.draw(st.integers(0, size))
    end = data.draw(st.integers(start, size))
    assert blocks.raw_segments(start, end) == whole.raw_segments(start, end)
    for tail in range(size + 1):
        assert suffix_raw_index(raw, tail) == (whole.raw_index(size - tail) if tail else len(raw))


def _luhn_reference(digits: bytes) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = (char - 48) * (2 if index % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


@given(st.text(alphabet="0123456789", min_size=1, max_size=25))
def test_luhn_in_c_equals_the_digit_loop(digits: str) -> None:
    assert luhn_ok(digits.encode()) == _luhn_reference(digits.encode())


class _PublicOnly:
    """google-re2's public API only (another build without the extension object)."""

    def __init__(self, regex: Any) -> None:
        self.match, self.search, self.groups = regex.match, regex.search, regex.groups


@pytest.mark.parametrize("anchored", [False, True])
def test_spans_through_the_extension_equal_the_public_api(anchored: bool) -> None:
    regex = SCANNER.regex
    fast, public = spans_of(regex, anchored=anchored), spans_of(_PublicOnly(regex),
                                                               anchored=anchored)
    assert getattr(regex, "_regexp", None) is not None, "google-re2 changed: see spans_of"
    for _, text, _, _ in POSITIVE:
        data = text.encode()
        for pos in range(len(data) + 1):
            assert fast(data, pos, len(data)) == public(data, pos, len(data))


@settings(max_examples=800, deadline=None)
@given(pieces, cuts, st.sampled_from([1, 3, 16, 200]))
def test_exec_counting_in_pieces_counts_like_whole_chunks(parts: list[bytes], points: list[int],
                                                          piece: int) -> None:
    """ScanOnly scans a large chunk in pieces (cache-sized); the counts do not change."""
    chunks = chunked(b"".join(parts), points)

    def counts(size: int) -> dict[str, int]:
        shared = SharedState()
        stage = ScanOnly(SCANNER, shared)
        passed: list[bytes] = []
        stage.emit = lambda data, _stream: passed.append(data)
        stage.emit_end = lambda: None
        with mock.patch.object(timed, "SCAN_PIECE", size):
            for chunk in chunks:
                stage.feed(chunk, 0)
            stage.end()
        assert passed == chunks, "every byte passes unchanged"
        return dict(shared.counts)

    if b"\x00" not in b"".join(parts):  # binary: counted as it is from the first NUL on,
        assert counts(piece) == counts(1 << 30)  # so where that falls may matter (see above)
