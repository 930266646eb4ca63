"""The demo's bastion.toml, written with tomli-w, says exactly what the demo merged together."""

from __future__ import annotations

import tomllib

import pytest

from bastion.demo.stack import DemoStack

pytestmark = pytest.mark.e2e


def test_written_config_reads_back_as_the_merged_sections(demo_stack: DemoStack) -> None:
    written = tomllib.loads(demo_stack.config_path.read_text(encoding="utf-8"))
    assert written == demo_stack.config
    # Sections merged by separate steps all arrive, arrays of tables included.
    assert {"server", "paths", "vault", "targets", "users", "access", "identity",
            "evidence", "storage"} <= set(written)
    assert [t["name"] for t in written["targets"]] == list(demo_stack.target_names)
    assert demo_stack.loaded_config is not None
    assert demo_stack.loaded_config.server.port == demo_stack.bastion_port
