"""Text from outside (IdP claims, user and file names, bucket keys, target text) made safe for
an operator's terminal: one helper every human-readable CLI output goes through.

An IdP display name such as ``"x\\x1b]52;c;...\\x07"`` would write the operator's clipboard, and
``"x\\nSHA256:... admin|root"`` would forge a row of ``bastion keys list``. ``printable`` keeps
printable text as it is and writes everything else visibly: ``\\n``, ``\\t``, ``\\r``, ``\\xNN``
for other C0/DEL/C1 controls and ``\\uNNNN`` for other non-printables (bidi overrides, line
separators), so one value is always one line with nothing for the terminal to interpret.
"""

from __future__ import annotations

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: object) -> str:
    """``text`` (any value, shown with ``str``) with every non-printable character escaped."""
    value = str(text)
    if value.isprintable():
        return value
    parts = []
    for ch in value:
        if ch.isprintable():
            parts.append(ch)
        elif ch in _NAMED:
            parts.append(_NAMED[ch])
        elif ord(ch) <= 0xFF:
            parts.append(f"\\x{ord(ch):02x}")
        elif ord(ch) <= 0xFFFF:
            parts.append(f"\\u{ord(ch):04x}")
        else:
            parts.append(f"\\U{ord(ch):08x}")
    return "".join(parts)


def printable_lines(text: str) -> str:
    """Several lines of our own text with outside values in it: each line made printable, the
    line breaks kept (for reports whose lines we wrote)."""
    return "\n".join(printable(line) for line in text.split("\n"))
