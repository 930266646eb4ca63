"""``[state]``: the URL is checked (and never echoed), and ``bastion migrate`` / the schema
check at start behave as documented on both backends (a real throwaway PostgreSQL)."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import asyncssh
import psycopg
import pytest
import tomli_w

from bastion.config import load_config
from bastion.demo.postgres import ThrowawayPostgres
from bastion.errors import ConfigError, StateError
from bastion.state.backends import open_state
from bastion.state.db import MIGRATIONS

KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()


def write_config(directory: Path, state: dict[str, object] | None) -> Path:
    document: dict[str, object] = {
        "paths": {"state_dir": str(directory / "state")},
        "vault": {"key_file": "vault.key"},
        "targets": [{"name": "web01", "host": "127.0.0.1", "host_key": KEY}],
    }
    if state is not None:
        document["state"] = state
    path = directory / "bastion.toml"
    path.write_text(tomli_w.dumps(document), encoding="utf-8")
    return path


def migrate(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bastion", "migrate", "--config", str(config),
                           *args], capture_output=True, text=True, timeout=120)


def test_default_is_sqlite(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, None))
    assert config.state.backend == "sqlite" and config.state.url is None


@pytest.mark.parametrize(("state", "message"), [
    ({"url": "mysql://root:hunter2@db/x"}, "expected a postgresql:// URL"),
    ({"url": "postgresql://a@b/c", "url_env": "X"}, "either url or url_env"),
    ({"url_env": "BASTION_TEST_UNSET_URL"}, "it is unset"),
    ({"url": "postgresql://a@b/c", "pool_size": 0}, "pool_size"),
    ({"url": "postgresql://a@b/c", "dsn": "x"}, "dsn"),
])
def test_bad_state_section(tmp_path: Path, state: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        load_config(write_config(tmp_path, state))
    assert "hunter2" not in str(error.value)  # a password in a wrong URL is not echoed
    assert "bastion.toml:" in str(error.value)


def test_url_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_TEST_STATE_URL", "postgresql://u:pw@db.example:5433/b")
    config = load_config(write_config(tmp_path, {"url_env": "BASTION_TEST_STATE_URL"}))
    assert config.state.backend == "postgresql"
    assert config.state.url is not None and "pw" not in repr(config.state)


def test_unreachable_postgresql_is_one_line(tmp_path: Path) -> None:
    from bastion.demo.procs import free_port

    url = f"postgresql://bastion:secret-pw@127.0.0.1:{free_port()}/nothing"
    path = write_config(tmp_path, {"url": url, "connect_timeout": "2s"})
    with pytest.raises(StateError, match="cannot connect to state database") as error:
        open_state(load_config(path))
    assert "secret-pw" not in str(error.value)
    result = migrate(path)
    assert result.returncode != 0
    assert result.stderr.startswith("bastion: ") and "Traceback" not in result.stderr
    assert "secret-pw" not in result.stderr + result.stdout


def test_migrate_then_serve_check_on_postgresql(tmp_path: Path,
                                                postgres_cluster: ThrowawayPostgres) -> None:
    url = postgres_cluster.new_database()
    path = write_config(tmp_path, {"url": url})
    config = load_config(path)
    # A fresh database: the server side refuses it and says what to do.
    with pytest.raises(StateError, match=r"schema 0, this bastion needs \d+; run `bastion "
                                         r"migrate`"):
        open_state(config)
    check = migrate(path, "--check")
    assert check.returncode == 1 and "run `bastion migrate`" in check.stderr
    first = migrate(path)
    assert first.returncode == 0, first.stderr
    numbers = ", ".join(str(n) for n in range(1, len(MIGRATIONS) + 1))
    assert f"applied migrations {numbers}; schema {len(MIGRATIONS)}" in first.stdout
    assert "127.0.0.1" in first.stdout and "bastion@" not in first.stdout
    again = migrate(path)
    assert again.returncode == 0 and "up to date" in again.stdout
    assert migrate(path, "--check").returncode == 0
    db = open_state(config)  # now accepted
    assert db.schema_version == len(MIGRATIONS)
    db.close()
    # The tables are real PostgreSQL tables with 8-byte floats for timestamps.
    with psycopg.connect(url) as conn:
        kind = conn.execute("SELECT data_type FROM information_schema.columns WHERE "
                            "table_name = 'key_bindings' AND column_name = 'expires'").fetchone()
    assert kind == ("double precision",)


def test_sqlite_migrates_itself_and_migrate_reports_it(tmp_path: Path) -> None:
    path = write_config(tmp_path, None)
    first = migrate(path)
    assert first.returncode == 0, first.stderr
    assert f"schema {len(MIGRATIONS)}" in first.stdout
    assert migrate(path, "--check").returncode == 0
    db = open_state(load_config(path))
    assert db.backend == "sqlite" and db.schema_version == len(MIGRATIONS)
    db.close()


def test_serve_refuses_an_unmigrated_postgresql(tmp_path: Path,
                                                postgres_cluster: ThrowawayPostgres) -> None:
    path = write_config(tmp_path, {"url": postgres_cluster.new_database()})
    (tmp_path / "vault.key").write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    (tmp_path / "vault.key").chmod(0o600)
    serve = subprocess.run([sys.executable, "-m", "bastion", "serve", "--config", str(path)],
                           capture_output=True, text=True, timeout=120)
    assert serve.returncode != 0
    assert serve.stderr.strip().splitlines()[-1].startswith("bastion: state database ")
    assert "run `bastion migrate`" in serve.stderr and "Traceback" not in serve.stderr
