"""The [masking] section and per-target masking keys: values and file:line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_config_errors import BASE

from bastion.config import load_config
from bastion.config.masking import BUILTIN_DETECTORS
from bastion.config.model import Config
from bastion.errors import ConfigError
from bastion.masking.detectors import BUILTIN_NAMES

TARGET_LINE = 'host = "127.0.0.1"\n'


def _load(tmp_path: Path, masking: str = "", target: str = "") -> Config:
    text = BASE.replace(TARGET_LINE, TARGET_LINE + target) + masking
    path = tmp_path / "bastion.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def _error(tmp_path: Path, masking: str = "", target: str = "") -> str:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, masking, target)
    return str(info.value)


def test_defaults_without_a_section(tmp_path: Path) -> None:
    config = _load(tmp_path)
    assert config.masking.enabled and config.masking.mask_user_output
    assert not config.masking.mask_exec
    assert config.target("web01").masking.masking_off == ()  # type: ignore[union-attr]


def test_full_section_and_target_overrides(tmp_path: Path) -> None:
    config = _load(tmp_path, masking="""
[masking]
mask_user_output = false
detectors_off = ["card"]
allow = ["AKIAZ7QPRSTUVWXY2345", "re:^sk_test_"]
hold_time = "2ms"

[[masking.detectors]]
name = "employee_id"
pattern = 'EMP-(?P<secret>[0-9]{6})'
validator = "none"
replacement = "last4"
""", target='masking_off = ["employee_id"]\nmask_exec = true\nmask_user_output = true\n')
    masking = config.masking
    assert not masking.mask_user_output and masking.detectors_off == ("card",)
    assert masking.detectors[0].name == "employee_id" and masking.hold_time == 0.002
    web = config.target("web01")
    assert web is not None
    assert web.masking.masking_off == ("employee_id",)
    assert web.masking.mask_exec is True and web.masking.mask_user_output is True


@pytest.mark.parametrize(("masking", "target", "expected"), [
    ('[masking]\ndetectors_off = ["cards"]\n', "", "masking.detectors_off: expected a list"),
    ("[masking]\nenabled = 1\n", "", "masking.enabled: expected true or false"),
    ("[masking]\nhold_time = \"1s\"\n", "", "masking.hold_time: expected a duration of at most"),
    ("[masking]\nallow = [\"re:(unclosed\"]\n", "", "masking.allow: expected a regex"),
    ("[masking]\nbogus = 1\n", "", "masking.bogus: expected no such key"),
    ("[[masking.detectors]]\nname = \"x\"\npattern = '(a)\\1'\n", "",
     "masking.detectors[0].pattern: expected a regex (RE2 syntax"),
    ("[[masking.detectors]]\nname = \"x\"\npattern = 'a(?=b)'\n", "",
     "masking.detectors[0].pattern: expected a regex (RE2 syntax"),
    ("[[masking.detectors]]\nname = \"x\"\npattern = 'a*'\n", "",
     "cannot match the empty string"),
    ("[[masking.detectors]]\nname = \"x\"\npattern = '(?P<id>a)'\n", "",
     "only named group is (?P<secret>...)"),
    ("[[masking.detectors]]\nname = \"card\"\npattern = 'a'\n", "",
     "masking.detectors[0].name: expected a name no other detector has"),
    ("[[masking.detectors]]\nname = \"x\"\npattern = 'a'\nvalidator = \"crc\"\n", "",
     "validator: expected \"none\" or \"luhn\""),
    ("", 'masking_off = ["nope"]\n', "targets[0].masking_off: expected detector names"),
    ("", "mask_exec = \"yes\"\n", "targets[0].mask_exec: expected true or false"),
])
def test_errors_name_file_line_and_key(tmp_path: Path, masking: str, target: str,
                                       expected: str) -> None:
    message = _error(tmp_path, masking, target)
    assert expected in message
    assert message.startswith(f"{tmp_path / 'bastion.toml'}:"), message
    assert message.split(":")[1].isdigit(), f"no line number in {message!r}"


def test_config_knows_every_builtin_detector() -> None:
    assert set(BUILTIN_DETECTORS) == BUILTIN_NAMES
