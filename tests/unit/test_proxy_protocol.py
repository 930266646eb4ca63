"""PROXY protocol v2 parsing: well-formed headers of every family, and malformed, truncated and
hostile ones refused with one line; reading takes exactly the header off a real socket."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.errors import ProxyHeaderError
from bastion.server.proxy import (
    MAX_LENGTH,
    SIGNATURE,
    Command,
    ProxyHeader,
    looks_like_header,
    parse_header,
    read_header,
    trusted,
)


def header(command: int = 1, family: int = 1, transport: int = 1, body: bytes | None = None,
           version: int = 2) -> bytes:
    if body is None:
        body = (ipaddress.IPv4Address("127.0.0.2").packed + ipaddress.IPv4Address(
            "127.0.0.1").packed + struct.pack("!HH", 51000, 2222))
    return (SIGNATURE + bytes([version << 4 | command, family << 4 | transport])
            + struct.pack("!H", len(body)) + body)


def test_ipv4_proxy() -> None:
    parsed = parse_header(header())
    assert parsed.command is Command.PROXY
    assert parsed.source == ("127.0.0.2", 51000)
    assert parsed.destination == ("127.0.0.1", 2222)
    assert parsed.length == 16 + 12


def test_ipv6_with_tlvs_and_mapped_ipv4() -> None:
    body = (ipaddress.IPv6Address("::ffff:10.1.2.3").packed + ipaddress.IPv6Address("::1").packed
            + struct.pack("!HH", 40000, 22) + b"\x04\x00\x01x")  # a TLV, ignored
    parsed = parse_header(header(family=2, body=body))
    assert parsed.source == ("10.1.2.3", 40000) and parsed.destination == ("::1", 22)
    body6 = ipaddress.IPv6Address("2001:db8::7").packed * 2 + struct.pack("!HH", 1, 2)
    assert parse_header(header(family=2, body=body6)).source == ("2001:db8::7", 1)


def test_local_and_unspec_mean_the_socket_address() -> None:
    assert parse_header(header(command=0, family=0, transport=0, body=b"")).source is None
    local = parse_header(header(command=0))  # LOCAL with addresses: they are ignored
    assert local.command is Command.LOCAL and local.source is None
    assert parse_header(header(family=0, transport=0, body=b"")).source is None


@pytest.mark.parametrize(("data", "message"), [
    (b"SSH-2.0-OpenSSH_9.2\r\n" + b"\0" * 8, "no PROXY v2 header"),
    (b"PROXY TCP4 127.0.0.2 127.0.0.1 5 6\r\n", "no PROXY v2 header"),  # v1 text: not accepted
    (header()[:10], "truncated"),
    (header()[:20], "truncated"),
    (header(version=1), "version 1, expected 2"),
    (header(command=7), "command 7 is unknown"),
    (header(family=3, body=b"\0" * 216), "unix socket"),
    (header(family=9), "family 9 is unknown"),
    (header(transport=2), "not for a stream"),
    (header(body=b"\0" * 11), "too short for IPv4"),
    (header(family=2, body=b"\0" * 20), "too short for IPv6"),
    (header() + b"SSH-2.0-x", "length does not match"),
    (SIGNATURE + b"\x21\x11" + struct.pack("!H", MAX_LENGTH + 1), "too long"),
    (SIGNATURE + b"\x21\x11\xff\xff", "too long"),
])
def test_malformed_headers_refused(data: bytes, message: str) -> None:
    with pytest.raises(ProxyHeaderError, match=message) as error:
        parse_header(data)
    assert "\n" not in str(error.value)


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_refuse_cleanly(data: bytes) -> None:
    for candidate in (data, SIGNATURE + data):
        try:
            parsed = parse_header(candidate)
        except ProxyHeaderError:
            continue
        assert parsed.length == len(candidate)


def test_trusted_networks() -> None:
    nets = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.0.0/8"))
    assert trusted("127.0.0.1", nets) and trusted("10.9.9.9", nets)
    assert trusted("::ffff:127.0.0.1", nets)
    assert not trusted("127.0.0.2", nets) and not trusted("::1", nets)
    assert not trusted("not-an-address", nets)


def test_read_takes_exactly_the_header_off_a_socket() -> None:
    async def scenario() -> tuple[ProxyHeader, bytes, bool]:
        left, right = socket.socketpair()
        left.setblocking(False)
        ssh = b"SSH-2.0-OpenSSH_9.2\r\n"
        right.sendall(header() + ssh)  # one segment: the SSH bytes come right behind
        peeked = looks_like_header(left)
        parsed = await read_header(left)
        rest = await asyncio.get_running_loop().sock_recv(left, 100)
        left.close()
        right.close()
        return parsed, rest, peeked

    parsed, rest, peeked = asyncio.run(scenario())
    assert peeked
    assert parsed.source == ("127.0.0.2", 51000)
    assert rest == b"SSH-2.0-OpenSSH_9.2\r\n"


@pytest.mark.parametrize("sent", [b"", header()[:14], b"SSH-2.0-OpenSSH_9.2\r\n"])
def test_read_refuses_silence_truncation_and_plain_ssh(sent: bytes) -> None:
    async def scenario() -> None:
        left, right = socket.socketpair()
        left.setblocking(False)
        right.sendall(sent)
        if sent:
            right.shutdown(socket.SHUT_WR)
        try:
            await read_header(left, timeout=0.5)
        finally:
            left.close()
            right.close()

    with pytest.raises(ProxyHeaderError):
        asyncio.run(scenario())
