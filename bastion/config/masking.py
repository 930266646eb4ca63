"""The ``[masking]`` section and the per-target masking keys, validated at load.

Custom detector patterns are compiled here with RE2 (the engine bastion.masking uses), so a
pattern RE2 refuses (backreferences, lookaround) or one that matches the empty string is a
config error with its file and line, not a surprise at the first session.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import re2

from bastion.config.reader import Table

# The built-in detectors of bastion.masking.detectors (config sits below masking and cannot
# import it; a unit test holds the two lists equal).
BUILTIN_DETECTORS = (
    "private_key", "card", "aws_access_key_id", "aws_secret_access_key", "jwt", "github_token",
    "gitlab_token", "slack_token", "stripe_key", "authorization_header", "url_password",
    "cli_password", "env_secret",
)
DETECTOR_NAME = r"[a-z][a-z0-9_]{0,40}"
VALIDATORS = ("none", "luhn")
REPLACEMENTS = ("stars", "last4")
MAX_HOLD_TIME = 0.05  # the user's echo must never wait longer than this


@dataclass(frozen=True)
class CustomDetector:
    """A detector from the config: a regex, an optional check, how the mask looks."""

    name: str
    pattern: str
    validator: str = "none"  # "none" or "luhn"
    replacement: str = "stars"  # "stars" or "last4"


@dataclass(frozen=True)
class MaskingConfig:
    """What is masked, and where, for every target unless the target says otherwise."""

    enabled: bool = True
    mask_user_output: bool = True  # mask what the user sees on pty channels (always recorded)
    mask_exec: bool = False  # mask exec output and stdin too (alters what passes)
    detectors_off: tuple[str, ...] = ()
    detectors: tuple[CustomDetector, ...] = ()
    allow: tuple[str, ...] = ()  # literals, or "re:PATTERN"
    hold_time: float = 0.001  # longest wait of a possible secret's start for its next chunk


@dataclass(frozen=True)
class TargetMasking:
    """A target's overrides of ``[masking]``; None keeps the global setting."""

    masking_off: tuple[str, ...] = ()  # detector names switched off here, or ["*"] for all
    mask_user_output: bool | None = None
    mask_exec: bool | None = None


def _compile(t: Table, key: str, pattern: str, what: str) -> re2._Regexp[bytes]:
    opts = re2.Options()
    opts.log_errors = False
    try:
        return re2.compile(pattern.encode("utf-8"), opts)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise t.error(key, f"{what} (RE2 syntax: {reason})", pattern) from None


def parse_masking(t: Table) -> MaskingConfig:
    """Read ``[masking]``."""
    detectors = tuple(_detector(d) for d in t.tables("detectors"))
    names = [d.name for d in detectors]
    for index, name in enumerate(names):
        if name in BUILTIN_DETECTORS or name in names[:index]:
            raise Table({}, (*t.path, "detectors", index), t.source).error(
                "name", "a name no other detector has", name)
    known = "|".join(re.escape(n) for n in (*BUILTIN_DETECTORS, *names))
    allow = t.strings("allow", ())
    for entry in allow:
        if entry.startswith("re:"):
            _compile(t, "allow", entry[3:], 'a regex after "re:"')
        elif not entry:
            raise t.error("allow", "non-empty literals or \"re:PATTERN\" entries", entry)
    config = MaskingConfig(
        enabled=t.boolean("enabled", True),
        mask_user_output=t.boolean("mask_user_output", True),
        mask_exec=t.boolean("mask_exec", False),
        detectors_off=t.strings("detectors_off", (), pattern=known,
                                what=f"a list of detector names ({', '.join(BUILTIN_DETECTORS)}"
                                     " or a [[masking.detectors]] name)"),
        detectors=detectors,
        allow=allow,
        hold_time=t.duration("hold_time", 0.001),
    )
    if config.hold_time > MAX_HOLD_TIME:
        raise t.error("hold_time", f"a duration of at most {MAX_HOLD_TIME * 1000:.0f}ms",
                      config.hold_time)
    t.done()
    return config


def _detector(t: Table) -> CustomDetector:
    name = t.string("name", pattern=DETECTOR_NAME,
                    what="a detector name (lower case letters, digits, _)")
    pattern = t.string("pattern", what="a regex (RE2 syntax)")
    compiled = _compile(t, "pattern", pattern, "a regex")
    groups = [g.decode() if isinstance(g, bytes) else g for g in compiled.groupindex]
    if any(g != "secret" for g in groups):
        raise t.error("pattern", 'a regex whose only named group is (?P<secret>...)', pattern)
    if compiled.search(b"") is not None:
        raise t.error("pattern", "a regex that cannot match the empty string", pattern)
    detector = CustomDetector(
        name=name,
        pattern=pattern,
        validator=t.string("validator", "none", pattern="|".join(VALIDATORS),
                           what='"none" or "luhn"'),
        replacement=t.string("replacement", "stars", pattern="|".join(REPLACEMENTS),
                             what='"stars" or "last4"'),
    )
    t.done()
    return detector


def parse_target_masking(t: Table, masking: MaskingConfig | None = None) -> TargetMasking:
    """Read a target's ``masking_off``, ``mask_user_output`` and ``mask_exec`` (not ``done``)."""
    names = (*BUILTIN_DETECTORS, *(d.name for d in (masking.detectors if masking else ())))
    off = t.strings("masking_off", (), pattern=r"\*|" + DETECTOR_NAME,
                    what='a list of detector names or ["*"]')
    if masking is not None:
        for name in off:
            if name != "*" and name not in names:
                raise t.error("masking_off", f"detector names ({', '.join(names)}) or \"*\"",
                              name)
    return TargetMasking(
        masking_off=off,
        mask_user_output=t.boolean("mask_user_output") if t.has("mask_user_output") else None,
        mask_exec=t.boolean("mask_exec") if t.has("mask_exec") else None,
    )
