"""The built-in detectors: what each one matches, what part of the match is masked, and the tail
of a possible, still incomplete match that a stream must hold back until the next chunk.

Patterns are RE2 syntax on bytes (linear time, no backreferences or lookaround). Each pattern has
at most one group named ``secret``: that part is masked; without it the whole match is. The
``tail`` pattern ends at ``$`` and matches the longest suffix of the text that could still grow
into a match; it is what a stream holds back (briefly) so a secret split across two chunks is
still seen whole. The hold-back is bounded by the stream (``MAX_HOLD`` bytes, a timer).

Large bounded repeats (``{1,256}``) are avoided: RE2 copies the repeated item n times into the
program, and a program that size made its DFA run out of memory and fall back to the NFA, ten
times slower. ``\b`` costs too (no literal-prefix acceleration) but keeps look-alikes out.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class Validator(enum.Enum):
    """A check run on a candidate after its pattern matched."""

    NONE = "none"
    LUHN = "luhn"  # payment card check digit
    JWT = "jwt"  # header is base64url JSON with "alg"


class Replacement(enum.Enum):
    """How a masked value is shown: always one ``*`` per character, so widths are kept."""

    STARS = "stars"  # every character but whitespace
    LAST4 = "last4"  # all but the last four digits/characters (separators stay)


@dataclass(frozen=True)
class Detector:
    """One kind of secret."""

    name: str
    pattern: str
    tail: str  # end-anchored pattern of a possible incomplete match (hold-back)
    validator: Validator = Validator.NONE
    replacement: Replacement = Replacement.STARS
    allow_example: bool = False  # AWS documentation keys (...EXAMPLE, ...EXAMPLEKEY) stay visible


PRIVATE_KEY = "private_key"


def partials(word: str, *, ignore_case: bool = False) -> str:
    """A pattern for every proper, non-empty prefix of ``word`` (``g(?:h(?:p)?)?`` for ghp_)."""
    out = ""
    for char in reversed(word[1:-1] if len(word) > 1 else ""):
        out = f"(?:{re.escape(char)}{out})?"
    body = re.escape(word[0]) + out
    return f"(?i:{body})" if ignore_case else body


def _prefixed(*literals: str, body: str, boundary: bool = True, ignore_case: bool = False) -> str:
    """Tail of a token starting with one of ``literals``: a partial literal, or literal + body."""
    lead = r"\b" if boundary else ""
    alts = []
    for literal in literals:
        lit = re.escape(literal)
        if ignore_case:
            lit = f"(?i:{lit})"
        alts.append(f"{lead}{partials(literal, ignore_case=ignore_case)}$")
        alts.append(f"{lead}{lit}{body}$")
    return "|".join(alts)




def _value(group: str) -> str:
    """A command-line value: quoted, or up to the next blank; the group is what is masked."""
    return rf"""(?P<{group}>'[^'\r\n]+'|"[^"\r\n]+"|[^\s'"]+)"""

_LINE_REST = r"[^\r\n]*"  # a context word was seen: hold the rest of the line
# The start of a command-line value (quoted, or up to the next blank).
_VALUE_START = r"""(?:'[^'\r\n]*|"[^"\r\n]*|[^\s'"]*)"""


def _across_lines(words: str, gap: int, value: str) -> str:
    """Tail of a pattern whose blanks between a context word and the value may be line ends:
    the word, up to ``gap`` bytes of anything (the longest run of quotes, blanks, ``:``/``=``
    and scheme word the pattern allows there), then the value so far. A tail that stopped at the
    line end, where its pattern did not, let the value through when a chunk ended there."""
    return f"{words}[\\s\\S]{{0,{gap}}}{value}$"
_ENV_WORDS = ("token", "password", "passwd", "secret", "api_key", "apikey", "access_key",
              "private_key")

BUILTIN: tuple[Detector, ...] = (
    Detector(
        name=PRIVATE_KEY,
        pattern=r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----",
        tail=r"-{1,5}$|-----" + partials("BEGIN ") + "$|-----BEGIN [A-Z0-9 -]{0,60}$",
    ),
    Detector(
        name="card",
        pattern=r"\b[2-6](?:[0-9][ -]?){11,17}[0-9]\b",  # card numbers start with 2 to 6
        tail=r"\b[2-6][0-9 -]{0,24}$",
        validator=Validator.LUHN,
        replacement=Replacement.LAST4,
    ),
    Detector(
        name="aws_access_key_id",
        pattern=r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b",
        tail=r"\bA[A-Z0-9]{0,19}$",
        allow_example=True,
    ),
    Detector(
        name="aws_secret_access_key",
        pattern=(r"(?i:aws_secret_access_key|aws_secret_key|secret_access_key|secretaccesskey)"
                 r"""["']?\s{0,8}[:=]\s{0,8}["']?(?P<secret>[A-Za-z0-9/+]{40})"""
                 r"(?:[^A-Za-z0-9/+=]|$)"),
        # No \b in the pattern (MY_AWS_SECRET_ACCESS_KEY=...), so none in the tail: a tail
        # stricter than its pattern let a secret split across two chunks through.
        tail=_prefixed("aws_secret", "secret_access_key", "secretaccesskey", body=_LINE_REST,
                       ignore_case=True, boundary=False) + "|" + _across_lines(
            "(?i:aws_secret_access_key|aws_secret_key|secret_access_key|secretaccesskey)", 19,
            "[A-Za-z0-9/+]*"),
        allow_example=True,
    ),
    Detector(
        name="jwt",
        pattern=r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*",
        tail=_prefixed("eyJ", body=r"[A-Za-z0-9_.-]*"),
        validator=Validator.JWT,
    ),
    Detector(
        name="github_token",
        pattern=r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})\b",
        tail=(r"\bg(?:h(?:[pousr](?:_[A-Za-z0-9]*)?)?)?$|"
              + _prefixed("github_pat_", body=r"[A-Za-z0-9_]*")),
    ),
    Detector(
        name="gitlab_token",
        pattern=r"\bglpat-[A-Za-z0-9_-]{20,}",
        tail=_prefixed("glpat-", body=r"[A-Za-z0-9_-]*"),
    ),
    Detector(
        name="slack_token",
        pattern=r"\bxox[abposr]-[A-Za-z0-9-]{10,}",
        tail=r"\bx(?:o(?:x(?:[abposr](?:-[A-Za-z0-9-]*)?)?)?)?$",
    ),
    Detector(
        name="stripe_key",
        pattern=r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}",
        tail=r"\b[rs](?:k(?:_(?:[lt][a-z]{0,3}(?:_[A-Za-z0-9]*)?)?)?)?$",
    ),
    Detector(
        name="authorization_header",
        pattern=(r"""(?i:authorization)["']?\s{0,8}[:=]\s{0,8}["']?(?i:bearer|basic|token)"""
                 r"\s{1,8}(?P<secret>[A-Za-z0-9._~+/=-]+)"),
        tail=_prefixed("authorization", body=_LINE_REST, ignore_case=True, boundary=False)
        + "|" + _across_lines("(?i:authorization)", 33, "[A-Za-z0-9._~+/=-]*"),
    ),
    Detector(
        name="url_password",
        pattern=r"://[^\s:/@]+:(?P<secret>[^\s@/]+)@",
        tail=r"://[^\s@/]*$|:/?$",
    ),
    Detector(
        name="cli_password",
        pattern=(r"(?:\b(?:mysql|mysqldump|mysqladmin|mariadb|mariadb-dump)\b[^\r\n]*?"
                 r"\s-p" + _value("secret")
                 + r"|--(?:password|passwd)(?:=|\s{1,8})" + _value("secret2")
                 + r"|\bsshpass\s{1,8}-p\s{0,8}" + _value("secret3") + ")"),
        tail=(_prefixed("mysql", "mariadb", "sshpass", body=_LINE_REST)
              + "|" + _prefixed("--passw", body=_LINE_REST, boundary=False)
              + r"|\b(?:mysql|mysqldump|mysqladmin|mariadb|mariadb-dump)\b[^\r\n]*\s(?:-(?:p"
              + _VALUE_START + ")?)?$"
              + r"|--(?:password|passwd)\s{1,8}" + _VALUE_START + "$"
              + r"|\bsshpass\s{1,8}(?:-(?:p\s{0,8}" + _VALUE_START + ")?)?$"),
    ),
    Detector(
        name="env_secret",
        pattern=r"(?i:" + "|".join(_ENV_WORDS) + r")[A-Za-z0-9_]*=" + _value("secret"),
        tail=("|".join(f"{partials(w + '=', ignore_case=True)}$" for w in _ENV_WORDS)
              + r"|(?i:" + "|".join(_ENV_WORDS) + r")[A-Za-z0-9_]*(?:=\S*)?$"),
    ),
)

BUILTIN_NAMES = frozenset(d.name for d in BUILTIN)
