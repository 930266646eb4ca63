"""The command rules ``bastion demo`` ships: one of each action, for people and scripts to try.

Written into the demo's bastion.toml as ``[[commands]]`` tables and ``[command_control]``;
``DEMO_COMMAND_SUMMARY`` is what the demo banner can print about them.
"""

from __future__ import annotations

from typing import Any

DEMO_UNRESOLVED = "approve"  # a command the bastion cannot check waits for an approver

DEMO_COMMAND_RULES: tuple[dict[str, Any], ...] = (
    {"name": "no-recursive-force-rm", "action": "deny", "command": "rm",
     "options": ["-r", "-f"],
     "message": "rm with both -r and -f is not allowed through this bastion"},
    {"name": "no-power-off", "action": "deny", "command": "shutdown|reboot|halt|poweroff",
     "message": "powering a host off or rebooting it is not allowed through this bastion"},
    {"name": "no-systemctl-power-off", "action": "deny", "command": "systemctl",
     "args": ["poweroff|reboot|halt|kexec|poweroff.target|reboot.target|halt.target"
              "|kexec.target"],
     "message": "powering a host off or rebooting it is not allowed through this bastion"},
    {"name": "no-runlevel-0-6", "action": "deny", "command": "init|telinit",
     "args": ["0|6"],
     "message": "powering a host off or rebooting it is not allowed through this bastion"},
    {"name": "approve-service-stop", "action": "approve", "command": "systemctl",
     "args": ["stop|restart"],
     "message": "stopping or restarting a service needs an approver"},
    {"name": "warn-sudo", "action": "warn", "command": "sudo",
     "message": "sudo is recorded and reported"},
)

DEMO_COMMAND_SUMMARY = (
    "deny: rm with -r and -f; shutdown, reboot, halt, poweroff, systemctl poweroff/reboot/halt,"
    " init 0/6",
    "approve: systemctl stop/restart, and commands the bastion cannot check "
    "($(...) as a command, curl | sh)",
    "warn: sudo",
)


def demo_command_sections() -> dict[str, Any]:
    """The config sections (``commands`` and ``command_control``) with the demo rules."""
    return {"commands": [dict(rule) for rule in DEMO_COMMAND_RULES],
            "command_control": {"unresolved": DEMO_UNRESOLVED}}
