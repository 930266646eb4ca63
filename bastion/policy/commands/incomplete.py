"""Whether bash would ask for more input after a text: the line catcher waits for the rest."""

from __future__ import annotations

from tree_sitter import Parser

from bastion.policy.commands import limits
from bastion.policy.commands.normalize import LANGUAGE
from bastion.policy.commands.words import ascii_view, node_text


def line_is_incomplete(text: str) -> bool:
    """Whether bash would ask for more input (PS2) after this text, rather than run it.

    True for a trailing backslash, an open quote, ``$(``, ``{``, ``if`` without ``fi``, a
    trailing ``|``/``&&``/``||``, a heredoc without its end marker. Bash runs nothing of such a
    text until it is complete, so a line catcher can forward the Enter and check the whole
    text once it is. A heuristic over the syntax tree: a syntax error that does not reach the
    end of the text (``rm x )``) counts as complete (and unparseable).
    """
    if len(text) > limits.MAX_LINE:
        return False
    stripped = text.rstrip(" \t\r\n")
    trailing = len(text.rstrip("\n")) - len(text.rstrip("\n").rstrip("\\"))
    if trailing % 2 == 1:
        return True
    root = Parser(LANGUAGE).parse(ascii_view(text)).root_node
    if not root.has_error:
        return False
    end = len(stripped)
    stack, errors = [root], 0
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            errors += 1
            if node.end_byte < end:
                return False
            if node.type == "ERROR" and node_text(node, text).strip() in (")", "}", ";;"):
                return False
        elif node.has_error:
            stack.extend(node.children)
        if errors > limits.MAX_NODES:
            return False
    return errors > 0
