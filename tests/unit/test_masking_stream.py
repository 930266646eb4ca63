"""The stream masker: every split of every vector, escapes inside secrets, hold-back bounds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_masking_detectors import NEGATIVE, POSITIVE, SCANNER

from bastion.masking.escapes import strip
from bastion.masking.stream import (
    KEY_MAX_BYTES,
    KEY_MAX_LINES,
    MAX_HOLD,
    UNTERMINATED_KEY,
    StreamMasker,
)

VECTORS = [text.encode() for _, text, _, _ in POSITIVE]
SECRETS = [secret.encode() for _, _, secret, _ in POSITIVE]


def whole(data: bytes) -> bytes:
    return StreamMasker(SCANNER).mask_all(data)


def streamed(*chunks: bytes) -> bytes:
    masker = StreamMasker(SCANNER)
    return b"".join(masker.push(c) for c in chunks) + masker.end()


@pytest.mark.parametrize("index", range(len(VECTORS)))
def test_every_split_position_masks_like_the_whole(index: int) -> None:
    data, secret = VECTORS[index], SECRETS[index]
    expected = whole(data)
    assert secret not in expected
    for cut in range(len(data) + 1):
        assert streamed(data[:cut], data[cut:]) == expected, cut


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(range(len(VECTORS))), st.lists(st.integers(0, 400), max_size=4),
       st.sampled_from([b"", b"log line\r\n", "ünïcode ✓ ".encode(), b"\x1b[0m$ "]))
def test_any_chunking_with_context_masks_the_secret(index: int, cuts: list[int],
                                                     prefix: bytes) -> None:
    data = prefix + VECTORS[index] + b"\r\n" + prefix
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    out = streamed(*chunks)
    assert out == whole(data)
    assert SECRETS[index] not in out
    out.decode("utf-8")  # still valid UTF-8


def _colour(secret: bytes) -> bytes:
    """The secret with an SGR colour change and a cursor move inside it."""
    third = max(1, len(secret) // 3)
    return (b"\x1b[1;31m" + secret[:third] + b"\x1b[0m" + secret[third:2 * third] + b"\x1b[2C"
            + secret[2 * third:] + b"\x1b[m")


@pytest.mark.parametrize("index", range(len(VECTORS)))
def test_escapes_inside_a_secret_neither_hide_it_nor_get_broken(index: int) -> None:
    data = VECTORS[index].replace(SECRETS[index], _colour(SECRETS[index]))
    expected = whole(data)
    assert SECRETS[index] not in strip(expected), "masked on the visible text"
    for seq in (b"\x1b[1;31m", b"\x1b[0m", b"\x1b[2C", b"\x1b[m"):
        assert seq in expected, "escape sequences pass unchanged"
    assert len(strip(expected).decode()) == len(strip(data).decode()), "width kept"
    for cut in range(len(data) + 1):
        assert streamed(data[:cut], data[cut:]) == expected, cut


@pytest.mark.parametrize("text", NEGATIVE)
def test_look_alikes_stream_through_unchanged(text: str) -> None:
    data = text.encode()
    for cut in range(len(data) + 1):
        assert streamed(data[:cut], data[cut:]) == data


@pytest.mark.parametrize("data", [
    b"HTTP_AUTHORIZATION=Bearer abc.def-ghi\r\n",
    b"  MY_AWS_SECRET_ACCESS_KEY: abcdEFGHijklMNOPqrstUVWX/yz0123456789+ab\r\n",
])
def test_a_secret_glued_to_a_word_is_held_across_any_split(data: bytes) -> None:
    """These detectors need no word boundary before their context word, so neither does
    what is held back at a chunk's end (it did: split there, the secret went through)."""
    expected = whole(data)
    assert expected != data
    for cut in range(len(data) + 1):
        assert streamed(data[:cut], data[cut:]) == expected, cut


@pytest.mark.parametrize("data", [
    b"Authorization: Bearer\r\n  abc.def-ghi\r\n",
    b"aws_secret_access_key:\r\n  abcdEFGHijklMNOPqrstUVWX/yz0123456789+ab\r\n",
    b"$ run --password\r\n S3cr3t\r\n",
    b"$ sshpass\r\n -p S3cr3t ssh host\r\n",
])
def test_a_value_on_the_next_line_is_held_across_any_split(data: bytes) -> None:
    """The blanks these patterns allow between a context word and the value include line
    ends; what is held back at a chunk's end stopped at the line end (the value went
    through when a chunk ended there)."""
    expected = whole(data)
    assert expected != data
    for cut in range(len(data) + 1):
        assert streamed(data[:cut], data[cut:]) == expected, cut


@pytest.mark.parametrize("title", [b"\x1b]2;build 42 done\x1b\\", b"\x1bPq#0;2;0;0;0\x1b\\"])
def test_a_string_escape_cut_in_its_terminator_is_held_whole(title: bytes) -> None:
    """An OSC or DCS string cut between the ESC and the backslash of its terminator is held
    from its start, not read as text (which hid a card after it from the \\b check)."""
    data = title + b"4111 1111 1111 1111\r\n"
    expected = whole(data)
    assert b"4111 1111 1111" not in expected
    for cut in range(len(data) + 1):
        assert streamed(data[:cut], data[cut:]) == expected, cut
    assert streamed(*[data[i:i + 1] for i in range(len(data))]) == expected


def test_hold_back_is_bounded_in_bytes() -> None:
    masker = StreamMasker(SCANNER)
    out = masker.push(b"Authorization: Bearer ")  # a context word: the line is held
    assert out == b""
    out += masker.push(b"x" * (MAX_HOLD + 100))
    assert len(masker.pending) <= MAX_HOLD
    assert out.startswith(b"Authorization: Bearer ****")


def test_plain_text_is_not_held() -> None:
    masker = StreamMasker(SCANNER)
    assert masker.push(b"total 48\r\ndrwxr-xr-x 2 root root 4096 .\r\n") == (
        b"total 48\r\ndrwxr-xr-x 2 root root 4096 .\r\n")
    assert masker.push(b"$ ") == b"$ "
    assert masker.push(b"l") == b"l"


def test_a_cut_escape_or_utf8_character_is_held_until_complete() -> None:
    masker = StreamMasker(SCANNER)
    assert masker.push(b"ok \x1b[3") == b"ok "
    assert masker.push(b"1mred\x1b[0m ") == b"\x1b[31mred\x1b[0m "
    assert masker.push("x ✓".encode()[:-1]) == b"x "
    assert masker.push("✓".encode()[-1:] + b" ") == "✓ ".encode()


def test_private_key_across_many_chunks() -> None:
    body = b"".join(b"%064x\n" % (i * 7919) for i in range(40))
    data = (b"$ cat id_rsa\n-----BEGIN RSA PRIVATE KEY-----\n" + body
            + b"-----END RSA PRIVATE KEY-----\n$ echo after\nafter\n")
    masker = StreamMasker(SCANNER)
    out = b"".join(masker.push(data[i:i + 37]) for i in range(0, len(data), 37)) + masker.end()
    assert out == whole(data)
    assert b"%064x" % 7919 not in out and b"-----END RSA PRIVATE KEY-----\n$ echo after" in out
    assert out.count(b"\n") == data.count(b"\n")
    assert masker.counts["private_key"] == 1


def test_unterminated_private_key_fails_closed_then_resets() -> None:
    masker = StreamMasker(SCANNER)
    line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=\n"
    out = masker.push(b"-----BEGIN OPENSSH PRIVATE KEY-----\n")
    while masker.in_key:
        out += masker.push(line)
    out += masker.push(b"visible again\n") + masker.end()
    assert line not in out
    assert out.endswith(b"visible again\n")
    masked_lines = out.count(b"*" * (len(line) - 1) + b"\n")
    assert masked_lines >= min(KEY_MAX_LINES, KEY_MAX_BYTES // len(line)), "all up to the bound"
    assert masker.counts[UNTERMINATED_KEY] == 1


def test_counts_per_detector() -> None:
    masker = StreamMasker(SCANNER)
    masker.mask_all(b"4111 1111 1111 1111 and 5500005555555559 and AKIAZ7QPRSTUVWXY2345\n")
    assert dict(masker.counts) == {"card": 2, "aws_access_key_id": 1}


PIECES = [b"ghp_", b"A" * 10, b"4111 1111 1111 1111", b" ", b"\r\n", b"\x1b[31m", b"\x1b[0m",
          b"\x1b[2C", b"AKIA", b"Z7QPRSTUVWXY2345", b"-----BEGIN RSA PRIVATE KEY-----\n",
          b"-----END RSA PRIVATE KEY-----\n", b"abc", "é".encode(), b"\xff", b"--password=",
          b"x", b"eyJhbGciOiJIUzI1NiJ9", b".", b"eyJzdWIiOiIxIn0", b"https://u:", b"pw@h",
          b"\x00", b"\x1b", b"[", b"mysql -u r -p", b"TOKEN=", b"9", b"\x1b]0;title\x07",
          b"\x1b]2;title\x1b\\", b"\\", b"xAuthorization: Bearer "]


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=14), st.integers(0, 600))
def test_any_text_split_anywhere_masks_like_the_whole(pieces: list[bytes], cut: int) -> None:
    data = b"".join(pieces)
    cut = min(cut, len(data))
    assert streamed(data[:cut], data[cut:]) == whole(data)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=14))
def test_fast_strip_equals_the_escape_map(pieces: list[bytes]) -> None:
    from bastion.masking.escapes import ESCAPE, EscapeMap
    data = b"".join(pieces)
    visible = strip(data)
    assert visible == ESCAPE.sub(b"", data)
    emap = EscapeMap(data)
    assert len(data) - (emap.removed_after[-1] if emap.removed_after else 0) == len(visible)
