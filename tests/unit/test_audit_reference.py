"""docs/audit.md is held to the code: every event written somewhere is documented, with its fields.

The events are collected from the source with ast: every ``.emit("name", field=...)`` call, the
channel relay's ``.audit("name", ...)`` (which adds the channel's context fields), a forward's
``.audit("name", ...)`` (which adds the forward's), the transfer log's ``.audit("op", ...)`` and
``.record(op, path, status, ...)`` (events ``<protocol>.<op>``, with the operation's entry and the
channel's context) and the replay command's ``_audit(config, "name", ...)``. A ``**expression``
expands to the keys of the dict literal the function in EXPANSIONS returns; ``**extra`` of a
helper expands to the keywords its callers in the same file pass. An event name built at run time
(an f-string, or a transfer operation held in a variable) must be listed in DYNAMIC_NAMES.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "bastion"
DOC = ROOT / "docs" / "audit.md"

# A ``**expression`` in an audit call -> (class, method) whose returned dict literal it is.
EXPANSIONS = {
    "auth.audit_fields()": ("Authorization", "audit_fields"),
    "self.authorization.audit_fields()": ("Authorization", "audit_fields"),
    "binding.audit_fields()": ("KeyBinding", "audit_fields"),
    "b.audit_fields()": ("KeyBinding", "audit_fields"),
    "primary.audit_fields()": ("Identity", "audit_fields"),
    "self._fields(request)": ("ApprovalService", "_fields"),
    "self._fields(decided)": ("ApprovalService", "_fields"),
    # sftp_stage's ``finished(summary)`` is handed TransferLog.summary()
    "summary": ("TransferLog", "summary"),
}

# Event names built at run time: (file under bastion/, enclosing function) -> every name the
# call can write (read from the code around it).
DYNAMIC_NAMES = {
    # f"approval.{state.value}": the wait ends CANCELLED or EXPIRED, a decision APPROVED or DENIED
    ("approvals/service.py", "wait"): ["approval.cancelled", "approval.expired"],
    ("approvals/service.py", "_decide"): ["approval.approved", "approval.denied"],
    # self.log.record(op, ...) with op a variable; status is never "denied" there
    ("relay/sftp_stage.py", "deny"): ["sftp.request"],
    # f"{program}.denied" for an scp or rsync command the transfer rules cannot judge
    ("relay/scp_stage.py", "_unreadable"): ["scp.denied", "rsync.denied"],
    ("relay/sftp_stage.py", "_reply"): [
        f"sftp.{op}" for op in ("setstat", "remove", "mkdir", "rmdir", "rename", "symlink",
                                "hardlink", "copy", "extended")],
}

# Files whose ``log`` is a TransferLog, and its protocol (the event prefix).
TRANSFER_PROTOCOLS = {"relay/scp_stage.py": "scp", "relay/sftp_stage.py": "sftp"}


def _trees() -> dict[Path, ast.Module]:
    return {path: ast.parse(path.read_text(encoding="utf-8"), str(path))
            for path in sorted(PACKAGE.rglob("*.py"))}


def _method(trees: dict[Path, ast.Module], cls_name: str, name: str) -> ast.FunctionDef:
    found = [fn for tree in trees.values() for cls in ast.walk(tree)
             if isinstance(cls, ast.ClassDef) and cls.name == cls_name
             for fn in cls.body if isinstance(fn, ast.FunctionDef) and fn.name == name]
    assert len(found) == 1, f"one {cls_name}.{name}"
    return found[0]


def _keys(node: ast.Dict) -> set[str]:
    return {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}


def _returned_keys(trees: dict[Path, ast.Module], cls_name: str, name: str) -> set[str]:
    returned = [n.value for n in ast.walk(_method(trees, cls_name, name))
                if isinstance(n, ast.Return) and isinstance(n.value, ast.Dict)]
    assert len(returned) == 1, f"{cls_name}.{name} returns a dict literal"
    return _keys(returned[0])


def _emitted_keywords(trees: dict[Path, ast.Module], cls_name: str) -> set[str]:
    """The fields a class's ``audit`` wrapper adds to every event it writes."""
    fn = _method(trees, cls_name, "audit")
    call = next(n for n in ast.walk(fn) if isinstance(n, ast.Call)
                and isinstance(n.func, ast.Attribute) and n.func.attr == "emit")
    return {k.arg for k in call.keywords if k.arg is not None}


def _entry_keys(trees: dict[Path, ast.Module]) -> set[str]:
    """The keys of TransferLog.record's entry that its audit event carries (all but ``t``)."""
    fn = _method(trees, "TransferLog", "record")
    entry = next(n.value for n in ast.walk(fn) if isinstance(n, ast.AnnAssign)
                 and isinstance(n.target, ast.Name) and n.target.id == "entry")
    assert isinstance(entry, ast.Dict)
    return _keys(entry) - {"t"}


def _names(node: ast.expr) -> list[str] | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        body, orelse = _names(node.body), _names(node.orelse)
        return body + orelse if body is not None and orelse is not None else None
    return None


def _enclosing(tree: ast.Module) -> dict[ast.AST, ast.FunctionDef | ast.AsyncFunctionDef]:
    """Each node's innermost enclosing function (ast.walk visits outer functions first)."""
    owner: dict[ast.AST, ast.FunctionDef | ast.AsyncFunctionDef] = {}
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(fn):
                owner[node] = fn
    return owner


def _callers_keywords(tree: ast.Module, fn_name: str) -> set[str]:
    """The keywords passed at every call of ``fn_name`` (a function or method) in one file."""
    found: set[str] = set()
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        func = call.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name == fn_name:
            assert all(k.arg is not None for k in call.keywords), ast.unparse(call)
            found |= {k.arg for k in call.keywords if k.arg is not None}
    return found


def events_in_code() -> dict[str, set[str]]:
    trees = _trees()
    channel = _emitted_keywords(trees, "ChannelRelay")
    forward = _emitted_keywords(trees, "Forward")
    entry = _entry_keys(trees)
    events: dict[str, set[str]] = defaultdict(set)
    for path, tree in trees.items():
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "relay/transfer_log.py":
            continue  # TransferLog's own calls: modelled where scp and sftp call it
        owner = _enclosing(tree)
        protocol = TRANSFER_PROTOCOLS.get(rel)
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            func = call.func
            args = list(call.args)
            fn = owner.get(call)
            where = (rel, fn.name if fn is not None else "")
            receiver = ast.unparse(func.value) if isinstance(func, ast.Attribute) else ""
            fields: set[str] = set()
            prefix = ""
            if isinstance(func, ast.Attribute) and func.attr == "emit":
                pass
            elif protocol and receiver in ("log", "self.log") and func.attr in ("audit", "record"):
                fields, prefix = set(channel), protocol + "."
                if func.attr == "record":
                    fields |= entry
                    status = args[2] if len(args) > 2 else None
                    event = next((k.value for k in call.keywords if k.arg == "event"), None)
                    if isinstance(status, ast.Constant) and status.value == "denied":
                        args = [ast.Constant("denied")]
                    elif event is not None:
                        args = [event]
            elif isinstance(func, ast.Attribute) and func.attr == "audit":
                fields = set(forward if rel == "relay/forwarding.py" else channel)
            elif isinstance(func, ast.Name) and func.id == "_audit" and len(args) >= 2:
                args = args[1:]
            else:
                continue
            names = _names(args[0]) if args else None
            if names is None and (isinstance(args[0], ast.JoinedStr) or prefix):
                assert where in DYNAMIC_NAMES, (
                    f"{path}:{call.lineno}: an event name built at run time: list its values "
                    "in DYNAMIC_NAMES")
                names = [n.removeprefix(prefix) for n in DYNAMIC_NAMES[where]]
            if names is None:
                continue  # emit(data, stream) of the pipeline, or a wrapper passing a name on
            for keyword in call.keywords:
                if keyword.arg is not None:
                    if not (prefix and keyword.arg == "event"):
                        fields.add(keyword.arg)
                    continue
                fields |= _expansion(trees, tree, keyword.value, fn, f"{path}:{call.lineno}")
            for name in names:
                events[prefix + name] |= fields
    return dict(events)


def _expansion(trees: dict[Path, ast.Module], tree: ast.Module, value: ast.expr,
               fn: ast.FunctionDef | ast.AsyncFunctionDef | None, where: str) -> set[str]:
    """The keys a ``**value`` in an audit call adds."""
    source = ast.unparse(value)
    if source in EXPANSIONS:
        return _returned_keys(trees, *EXPANSIONS[source])
    if (isinstance(value, ast.DictComp) and len(value.generators) == 1
            and isinstance(value.generators[0].iter, ast.Call)
            and isinstance(value.generators[0].iter.func, ast.Attribute)):
        # {k: v for k, v in d.items() if k != "x"}: d's keys but "x"
        comp = value.generators[0]
        assert isinstance(comp.iter, ast.Call) and isinstance(comp.iter.func, ast.Attribute)
        dropped = {c.comparators[0].value for c in comp.ifs
                   if isinstance(c, ast.Compare) and isinstance(c.ops[0], ast.NotEq)
                   and isinstance(c.comparators[0], ast.Constant)}
        assert len(dropped) == len(comp.ifs), f"{where}: only `if k != 'x'` filters understood"
        return _expansion(trees, tree, comp.iter.func.value, fn, where) - dropped
    if (fn is not None and fn.args.kwarg is not None and isinstance(value, ast.Name)
            and value.id == fn.args.kwarg.arg):
        return _callers_keywords(tree, fn.name)  # **extra: what the helper's callers pass
    raise AssertionError(f"{where}: **{source} in an audit event: add it to EXPANSIONS")


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
                 "login.device_failure", "binding.revoked", "approval.requested",
                 "approval.approved", "approval.expired", "forward.close", "scp.denied",
                 "sftp.close", "sftp.rename", "sftp.summary"):
        assert name in code, name
    assert {"target", "login", "rule"} <= code["session.start"]
    assert {"channel", "session", "exit_status"} <= code["channel.exit"]
    assert {"id", "command", "approver"} <= code["approval.approved"]
    assert {"dest", "bytes_up", "channel"} & code["forward.close"] == {"dest", "bytes_up"}
    assert {"channel", "path", "status", "to"} <= code["sftp.rename"]
    assert "open" not in code  # the transfer log's audit("open") is sftp.open / scp.open


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
