"""The demo's TOML writer: what it writes reads back identically with tomllib."""

from __future__ import annotations

import tomllib

import pytest

from bastion.demo import toml_writer


def test_round_trip_of_a_config_shaped_document() -> None:
    document = {
        "title": 'quotes " and \\ backslashes, tab\t, newline\n, del\x7f, ünïcode',
        "enabled": True,
        "count": 3,
        "ratio": 0.5,
        "server": {"listen": "127.0.0.1", "port": 2222, "host_keys": ["/a b/key", "/c"]},
        "nested": {"inner": {"deep": False}, "after": "plain keys come first"},
        "targets": [{"name": "web01", "port": 22}, {"name": "db01", "tags": ["x", "y"]}],
        "dotted.key": "needs quoting",
        "empty": [],
    }
    assert tomllib.loads(toml_writer.dumps(document)) == document


def test_none_values_are_left_out() -> None:
    assert tomllib.loads(toml_writer.dumps({"a": 1, "b": None})) == {"a": 1}


def test_unsupported_values_are_refused() -> None:
    with pytest.raises(TypeError):
        toml_writer.dumps({"a": object()})
    with pytest.raises(ValueError):
        toml_writer.dumps({"a": float("nan")})


def test_merge_merges_tables_and_replaces_lists() -> None:
    base = {"server": {"port": 1, "listen": "127.0.0.1"}, "users": [{"name": "a"}]}
    toml_writer.merge(base, {"server": {"port": 2}, "users": [{"name": "b"}],
                             "identity": {"issuer": "http://127.0.0.1:1"}})
    assert base == {"server": {"port": 2, "listen": "127.0.0.1"}, "users": [{"name": "b"}],
                    "identity": {"issuer": "http://127.0.0.1:1"}}
