"""A stand-in ``ssh`` for ``scp -O -S``: runs the scp command locally behind the scp stages.

scp calls its ssh program as ``PROG [options] HOST COMMAND``; this runs COMMAND (``scp -t ...``
or ``scp -f ...``) with ``sh -c`` and relays the two streams through the stages that
``ExecTransferFactory`` builds for it, as the bastion does. ``SCP_RELAY_RULES`` names a JSON list of
``[[transfers]]`` rules; audit events go to ``SCP_RELAY_AUDIT``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from bastion.config.model import Config, PathsConfig, ServerConfig, TransferRule, VaultConfig
from bastion.relay.pipeline import ChannelKind
from bastion.relay.scp_stage import ExecTransferFactory
from harness.sftp_relay import FileContext, _tuples, channel_info, run_relay


def main() -> int:
    command = sys.argv[-1]
    rules = json.loads(Path(os.environ["SCP_RELAY_RULES"]).read_text(encoding="utf-8"))
    config = Config(source=Path("test.toml"), server=ServerConfig(),
                    paths=PathsConfig(Path("s"), Path("r"), None),
                    vault=VaultConfig(path=Path("v"), key_file=Path("k")),
                    transfers=tuple(TransferRule(**_tuples(r)) for r in rules))
    info = channel_info(ChannelKind.EXEC, command)
    ctx = FileContext(info, Path(os.environ["SCP_RELAY_AUDIT"]))
    stages = ExecTransferFactory(config)(info, ctx)
    return run_relay(["sh", "-c", command], info, ctx, stages)


if __name__ == "__main__":
    sys.exit(main())
