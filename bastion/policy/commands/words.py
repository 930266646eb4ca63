"""Shell words as bash hands them to a command: quotes and backslashes removed, $'...' decoded,
brace expansion applied (bounded), and what cannot be known before run time kept as written.

A word is first decoded from its syntax-tree nodes into *atoms*, runs of text each marked
unquoted, quoted or dynamic (an expansion or substitution, kept as its source text). Brace
expansion then works on unquoted characters only, exactly as bash does before any other
expansion (atoms are split into single characters only for a word with an unquoted ``{``),
and each resulting atom list becomes a ``Word``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

from tree_sitter import Node

from bastion.policy.commands.limits import MAX_BRACE_DEPTH, MAX_BRACE_WORDS, LimitExceeded


class Kind(enum.Enum):
    """How one atom of a word came to be."""

    PLAIN = 0  # an unquoted character: glob and brace syntax apply
    QUOTED = 1  # a quoted or backslash-escaped character: taken literally
    DYNAMIC = 2  # an unquoted expansion/substitution: its value (and word splitting) unknown
    DYNAMIC_QUOTED = 3  # a quoted expansion: value unknown, but one word


Atom = tuple[str, Kind]
GLOB_CHARS = frozenset("*?[")
_UNQUOTED_PARTS = re.compile(r"\\(.)|([^\\]+)|\\", re.DOTALL)
_UNESCAPED_BLANKS = re.compile(r"(?<!\\)[ \t\n]+")
_PLAIN_SPECIALS = re.compile(r"[\\{*?\[]")
_DOUBLE_QUOTED_PARTS = re.compile(r'\\([$`"\\\n])|([^\\]+)|\\')
_DYNAMIC_TYPES = frozenset({"simple_expansion", "expansion", "command_substitution",
                            "process_substitution", "arithmetic_expansion"})


@dataclass(frozen=True)
class Word:
    """One shell word after quote removal; ``text`` shows dynamic parts as written."""

    text: str
    literal: bool = True  # no expansion or substitution in it
    glob: bool = False  # an unquoted *, ? or [ in it (pathname expansion may change it)
    maybe_option: bool = False  # at run time it could start with "-" although its text may not
    maybe_many: bool = False  # word splitting may turn it into several words

    @classmethod
    def of(cls, text: str) -> Word:
        """A literal word."""
        return cls(text)


def decode_node(node: Node, src: str) -> list[Atom]:
    """The atoms of one word-like syntax node (a word, string, concatenation...).

    ``src`` is the parsed text; node offsets index it by character (see ``ascii_view``).
    """
    kind = node.type
    text = node_text(node, src)
    if kind in ("word", "number"):
        return _unquoted(text)
    if kind == "raw_string":
        return [(text[1:-1], Kind.QUOTED)]
    if kind == "ansi_c_string":
        return [(decode_ansi_c(text[2:-1]), Kind.QUOTED)]
    if kind in ("string", "translated_string"):
        return _double_quoted(node, src)
    if kind == "concatenation":
        atoms: list[Atom] = []
        for child in node.children:
            atoms.extend(decode_node(child, src))
        return atoms
    if kind == "brace_expression":
        return [(text, Kind.PLAIN)]
    if kind == "$":  # the "$" of a $"..." translated string: bash drops it
        return []
    # Expansions, substitutions and anything this module does not know: value unknown.
    return [(text, Kind.DYNAMIC)]


def node_text(node: Node, src: str) -> str:
    """The source text of ``node``."""
    return src[node.start_byte:node.end_byte]


def ascii_view(text: str) -> bytes:
    """What tree-sitter parses: ``text`` with every non-ASCII character replaced by ``%``.

    tree-sitter-bash 0.25's scanner can crash the process (a segfault, found by the property
    tests) on some non-ASCII input. Bash's grammar gives meaning only to ASCII characters
    (others are word characters, and so is ``%``), so the tree's shape is the same, and with
    one byte per character the node offsets index ``text`` itself: words are read from there.
    """
    if text.isascii() and "\x00" not in text:
        return text.encode("ascii")
    return bytes(ord(c) if 0 < ord(c) < 128 else 0x25 for c in text)


def _unquoted(text: str) -> list[Atom]:
    if "\\" not in text:
        return [(text, Kind.PLAIN)]
    atoms: list[Atom] = []
    for match in _UNQUOTED_PARTS.finditer(text):
        escaped, run = match.group(1), match.group(2)
        if run is not None:
            atoms.append((run, Kind.PLAIN))
        elif escaped is not None:
            if escaped != "\n":  # backslash-newline is a line continuation: both vanish
                atoms.append((escaped, Kind.QUOTED))
        else:
            atoms.append(("\\", Kind.PLAIN))  # a lone backslash at the end stays
    return atoms


def _double_quoted(node: Node, src: str) -> list[Atom]:
    """A "..." string: its plain text between the expansions, escapes as bash removes them."""
    atoms: list[Atom] = []
    pos = node.start_byte + (2 if src.startswith('$"', node.start_byte) else 1)
    end = max(pos, node.end_byte - 1)
    for child in node.children:
        if child.type not in _DYNAMIC_TYPES:
            continue  # string_content and quote tokens are read from the gaps below
        if child.start_byte > pos:
            atoms.extend(_in_double_quotes(src[pos:child.start_byte]))
        atoms.append((node_text(child, src), Kind.DYNAMIC_QUOTED))
        pos = child.end_byte
    if end > pos:
        atoms.extend(_in_double_quotes(src[pos:end]))
    return atoms


def _in_double_quotes(text: str) -> list[Atom]:
    atoms: list[Atom] = []
    for match in _DOUBLE_QUOTED_PARTS.finditer(text):
        escaped, run = match.group(1), match.group(2)
        if run is not None:
            atoms.append((run, Kind.QUOTED))
        elif escaped is not None:
            if escaped != "\n":
                atoms.append((escaped, Kind.QUOTED))
        else:
            atoms.append(("\\", Kind.QUOTED))  # other backslashes stay in double quotes
    return atoms


_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "e": "\x1b", "E": "\x1b", "f": "\f", "n": "\n",
                   "r": "\r", "t": "\t", "v": "\v", "\\": "\\", "'": "'", '"': '"', "?": "?"}


def decode_ansi_c(body: str) -> str:
    """The value of a ``$'...'`` string's body, as bash decodes it."""
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\" or i + 1 >= len(body):
            out.append(c)
            i += 1
            continue
        e = body[i + 1]
        i += 2
        if e in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[e])
        elif e in "01234567":
            digits = e + _take(body, i, "01234567", 2)
            i += len(digits) - 1
            out.append(chr(int(digits, 8) & 0xFF))
        elif e in "xuU":
            digits = _take(body, i, "0123456789abcdefABCDEF", {"x": 2, "u": 4, "U": 8}[e])
            i += len(digits)
            if digits:
                value = int(digits, 16)
                out.append(chr(value) if value <= 0x10FFFF else "\ufffd")
            else:
                out.append("\\" + e)
        elif e == "c" and i < len(body):
            out.append(chr(ord(body[i]) & 0x1F))
            i += 1
        else:
            out.append("\\" + e)
    return "".join(out).split("\x00", 1)[0]  # bash stops a $'...' value at a NUL


def _take(text: str, start: int, allowed: str, limit: int) -> str:
    end = start
    while end < len(text) and end - start < limit and text[end] in allowed:
        end += 1
    return text[start:end]


# -- brace expansion ------------------------------------------------------------------------

def expand_braces(atoms: list[Atom], budget: list[int], depth: int = 0) -> list[list[Atom]]:
    """Bash brace expansion of one word; ``budget`` holds how many more words may be made."""
    if depth > MAX_BRACE_DEPTH:
        raise LimitExceeded("too many brace expressions in one word")
    if not any(kind is Kind.PLAIN and "{" in text for text, kind in atoms):
        return [atoms]
    atoms = [(c, kind) for text, kind in atoms
             for c in (text if kind in (Kind.PLAIN, Kind.QUOTED) else (text,))]
    for start in range(len(atoms)):
        if atoms[start] != ("{", Kind.PLAIN):
            continue
        close, commas = _matching_brace(atoms, start)
        if close < 0:
            continue
        inner = atoms[start + 1:close]
        if commas:
            parts, prev = [], start + 1
            for comma in commas:
                parts.append(atoms[prev:comma])
                prev = comma + 1
            parts.append(atoms[prev:close])
        else:
            seq = _sequence("".join(c for c, _ in inner)) if all(
                k is Kind.PLAIN for _, k in inner) else None
            if seq is None:
                continue
            _spend(budget, len(seq))
            parts = [[(c, Kind.QUOTED) for c in item] for item in seq]
        prefix, suffix = atoms[:start], atoms[close + 1:]
        results: list[list[Atom]] = []
        tails = expand_braces(suffix, budget, depth + 1)
        for part in parts:
            for middle in expand_braces(part, budget, depth + 1):
                for tail in tails:
                    _spend(budget, 1)
                    results.append(prefix + middle + tail)
        return results
    return [atoms]


def _spend(budget: list[int], n: int) -> None:
    budget[0] -= n
    if budget[0] < 0:
        raise LimitExceeded(f"brace expansion makes more than {MAX_BRACE_WORDS} words")


def _matching_brace(atoms: list[Atom], start: int) -> tuple[int, list[int]]:
    depth, commas = 0, list[int]()
    for i in range(start, len(atoms)):
        atom = atoms[i]
        if atom[1] is not Kind.PLAIN:
            continue
        if atom[0] == "{":
            depth += 1
            if depth > MAX_BRACE_DEPTH:
                raise LimitExceeded("braces nested too deeply")
        elif atom[0] == "}":
            depth -= 1
            if depth == 0:
                return i, commas
        elif atom[0] == "," and depth == 1:
            commas.append(i)
    return -1, []


def _sequence(text: str) -> list[str] | None:
    parts = text.split("..")
    if len(parts) not in (2, 3):
        return None
    step_text = parts[2] if len(parts) == 3 else "1"
    try:
        step = abs(int(step_text)) or 1
    except ValueError:
        return None
    a, b = parts[0], parts[1]
    if _is_int(a) and _is_int(b):
        lo, hi = int(a), int(b)
        if abs(hi - lo) // step + 1 > MAX_BRACE_WORDS:
            raise LimitExceeded(f"brace expansion makes more than {MAX_BRACE_WORDS} words")
        width = max(len(a), len(b)) if ((a.lstrip("-").startswith("0") and len(a.lstrip("-")) > 1)
                                        or (b.lstrip("-").startswith("0")
                                        and len(b.lstrip("-")) > 1)) else 0
        values = range(lo, hi + 1, step) if lo <= hi else range(lo, hi - 1, -step)
        return [str(v).zfill(width) if width else str(v) for v in values]
    if len(a) == 1 and len(b) == 1 and a.isascii() and b.isascii() and a.isalpha() \
            and b.isalpha():
        lo, hi = ord(a), ord(b)
        values = range(lo, hi + 1, step) if lo <= hi else range(lo, hi - 1, -step)
        return [chr(v) for v in values]
    return None


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit() and text.count("-") <= 1 and not text.endswith("-")


def to_word(atoms: Sequence[Atom]) -> Word:
    """Build the ``Word`` of one (already brace-expanded) atom list."""
    atoms = [atom for atom in atoms if atom[0]]
    text = "".join(t for t, _ in atoms)
    kinds = {k for _, k in atoms}
    dynamic = Kind.DYNAMIC in kinds or Kind.DYNAMIC_QUOTED in kinds
    glob = any(k is Kind.PLAIN and not GLOB_CHARS.isdisjoint(t) for t, k in atoms)
    first_text, first_kind = atoms[0] if atoms else ("", Kind.QUOTED)
    unquoted_dynamic = Kind.DYNAMIC in kinds
    maybe_option = (unquoted_dynamic or first_kind is Kind.DYNAMIC_QUOTED
                    or (first_kind is Kind.PLAIN and first_text[0] in GLOB_CHARS))
    return Word(text=text, literal=not dynamic, glob=glob, maybe_option=maybe_option,
                maybe_many=unquoted_dynamic or glob)


def words_of(nodes: Sequence[Node], src: str, budget: list[int]) -> list[Word]:
    """The words of a command's word nodes (already grouped one group per shell word)."""
    words: list[Word] = []
    for group in group_touching(nodes):
        if len(group) == 1 and group[0].type in ("word", "number"):
            text = node_text(group[0], src)
            if not _PLAIN_SPECIALS.search(text) and not has_unescaped_blank(text):
                words.append(Word(text))  # the common case: nothing to remove or expand
                continue
            if has_unescaped_blank(text):  # a grammar slip (`time { { x; }; }`): split as bash
                for part in _UNESCAPED_BLANKS.split(text):
                    if part:
                        words.extend(_expanded(_unquoted(part), budget))
                continue
        atoms: list[Atom] = []
        for node in group:
            atoms.extend(decode_node(node, src))
        words.extend(_expanded(atoms, budget))
    return words


def _expanded(atoms: list[Atom], budget: list[int]) -> list[Word]:
    had_quotes = any(k is not Kind.PLAIN for _, k in atoms)
    # bash drops words that brace expansion left empty (unless they had quotes)
    return [to_word(expanded) for expanded in expand_braces(atoms, budget)
            if expanded or had_quotes]


def has_unescaped_blank(text: str) -> bool:
    """Whether an unquoted word's text holds a blank bash would split at."""
    return _UNESCAPED_BLANKS.search(text) is not None


def group_touching(nodes: Sequence[Node]) -> list[list[Node]]:
    """Nodes with no whitespace between them form one shell word (``$"x"``, ``a"b"c``)."""
    groups: list[list[Node]] = []
    for node in nodes:
        if groups and groups[-1][-1].end_byte == node.start_byte:
            groups[-1].append(node)
        else:
            groups.append([node])
    return groups


def join_words(words: Sequence[Word]) -> Word:
    """Words joined by spaces into one program text (``eval a b``, ``watch cmd args``)."""
    return Word(text=" ".join(w.text for w in words), literal=all(w.literal for w in words))
