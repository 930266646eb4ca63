"""docs/audit.md is held to the code: every event written somewhere is documented, with its fields.

The events are collected from the source with ast: every ``.emit("name", field=...)`` call, the
channel relay's ``.audit("name", ...)`` (which adds the channel's context fields) and the replay
command's ``_audit(config, "name", ...)``; ``**x.audit_fields()`` expands to the keys that
method returns.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "bastion"
DOC = ROOT / "docs" / "audit.md"

# Which class's audit_fields() a ``**name.audit_fields()`` expansion calls.
EXPANSIONS = {"auth": "Authorization", "self.authorization": "Authorization",
              "binding": "KeyBinding", "b": "KeyBinding", "primary": "Identity"}


def _trees() -> dict[Path, ast.Module]:
    return {path: ast.parse(path.read_text(encoding="utf-8"), str(path))
            for path in sorted(PACKAGE.rglob("*.py"))}


def _audit_fields_by_class(trees: dict[Path, ast.Module]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for tree in trees.values():
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            for fn in cls.body:
                if isinstance(fn, ast.FunctionDef) and fn.name == "audit_fields":
                    returned = [n.value for n in ast.walk(fn)
                                if isinstance(n, ast.Return) and isinstance(n.value, ast.Dict)]
                    assert len(returned) == 1, f"{cls.name}.audit_fields returns a dict literal"
                    found[cls.name] = {k.value for k in returned[0].keys
                                       if isinstance(k, ast.Constant)}
    return found


def _channel_context(trees: dict[Path, ast.Module]) -> set[str]:
    """The fields ChannelRelay.audit adds to every event it writes."""
    tree = trees[PACKAGE / "relay" / "channel_relay.py"]
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "audit")
    call = next(n for n in ast.walk(fn) if isinstance(n, ast.Call)
                and isinstance(n.func, ast.Attribute) and n.func.attr == "emit")
    return {k.arg for k in call.keywords if k.arg is not None}


def _names(node: ast.expr) -> list[str] | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        body, orelse = _names(node.body), _names(node.orelse)
        return body + orelse if body is not None and orelse is not None else None
    return None


def events_in_code() -> dict[str, set[str]]:
    trees = _trees()
    by_class = _audit_fields_by_class(trees)
    context = _channel_context(trees)
    events: dict[str, set[str]] = defaultdict(set)
    for path, tree in trees.items():
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            func = call.func
            args = list(call.args)
            extra: set[str] = set()
            if isinstance(func, ast.Attribute) and func.attr == "emit":
                pass
            elif isinstance(func, ast.Attribute) and func.attr == "audit":
                extra = context
            elif isinstance(func, ast.Name) and func.id == "_audit" and len(args) >= 2:
                args = args[1:]
            else:
                continue
            names = _names(args[0]) if args else None
            if names is None:
                continue  # emit(data, stream) of the pipeline, or a wrapper passing a name on
            fields = set(extra)
            for keyword in call.keywords:
                if keyword.arg is not None:
                    fields.add(keyword.arg)
                    continue
                source = ast.unparse(keyword.value)
                owner = source.removesuffix(".audit_fields()")
                assert owner in EXPANSIONS, (
                    f"{path}:{call.lineno}: **{source} in an audit event: add it to EXPANSIONS")
                fields |= by_class[EXPANSIONS[owner]]
            for name in names:
                events[name] |= fields
    return dict(events)


def events_in_doc() -> dict[str, set[str]]:
    events: dict[str, set[str]] = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not re.fullmatch(r"`[a-z_.]+`", cells[0]):
            continue
        fields_text = re.sub(r"\([^)]*\)", "", cells[2])  # "(`publickey`, ...)" are values
        events[cells[0].strip("`")] = set(re.findall(r"`([a-z_]+)`", fields_text))
    return events


def test_the_collector_finds_the_events() -> None:
    code = events_in_code()
    # A sanity check of the collector itself: events written in several ways are all found.
    for name in ("session.start", "channel.exit", "replay.view", "totp.fail",
                 "login.device_failure", "binding.revoked"):
        assert name in code, name
    assert {"target", "login", "rule"} <= code["session.start"]
    assert {"channel", "session", "exit_status"} <= code["channel.exit"]


def test_every_event_in_the_code_is_documented_and_no_other() -> None:
    code, doc = events_in_code(), events_in_doc()
    assert sorted(code.keys() - doc.keys()) == [], "events written but not in docs/audit.md"
    assert sorted(doc.keys() - code.keys()) == [], "events in docs/audit.md never written"


def test_documented_fields_match_the_code() -> None:
    code, doc = events_in_code(), events_in_doc()
    wrong = {name: {"written, not documented": sorted(code[name] - doc[name]),
                    "documented, never written": sorted(doc[name] - code[name])}
             for name in code.keys() & doc.keys() if code[name] != doc[name]}
    assert wrong == {}
