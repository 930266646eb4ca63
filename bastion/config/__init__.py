"""Configuration: one TOML file parsed once into frozen dataclasses."""

from bastion.config.load import check_files, load_config, parse_config
from bastion.config.model import (
    AccessRule,
    Config,
    LocalUser,
    PathsConfig,
    ServerConfig,
    Target,
    VaultConfig,
)

__all__ = [
    "AccessRule",
    "Config",
    "LocalUser",
    "PathsConfig",
    "ServerConfig",
    "Target",
    "VaultConfig",
    "check_files",
    "load_config",
    "parse_config",
]
