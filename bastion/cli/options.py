"""Options shared by several commands; a module of its own so command modules need not import
``main`` (which imports them to register them)."""

from __future__ import annotations

import os

import click

DEFAULT_CONFIG = "/etc/bastion/bastion.toml"

config_option = click.option(
    "--config", "-c", "config_path", metavar="FILE",
    default=lambda: os.environ.get("BASTION_CONFIG", DEFAULT_CONFIG), show_default=DEFAULT_CONFIG,
    help="bastion.toml to use (or $BASTION_CONFIG).")
