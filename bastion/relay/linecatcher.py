"""What command line a shell holds when the user presses Enter, read before the Enter goes on.

Two sources, kept apart so that each can be checked against the other:

- ``TypedLine``: a small line-editor model fed with the user's keystrokes (insert, backspace,
  cursor keys, Ctrl-A/E/B/F/U/K/W/Y/D). It is exact while only such keys were used; a key whose
  effect depends on the shell's state (Tab, history arrows, Ctrl-R, Alt-keys) makes it
  *uncertain*. It is the only source when the terminal shows no echo (``stty -echo``).
- the screen: the target's output since the line's prompt, rendered into a fresh pyte screen at
  Enter time, read from where the prompt ended to the end of the input (wrapped rows joined).
  This is what editing, history recall, Ctrl-R and completion really left in the shell.

pyte costs about 0.3 MB/s, so it never sees the output stream: ``OutputTail.feed`` only keeps
the chunk in a bounded deque (O(1) Python per chunk, no copy); whether a full-screen program
switched to the alternate screen is searched for (C-level) only when a key is typed. Only when a
line is judged is the tail from the prompt's row on rendered, capped at ``RENDER_CAP`` bytes.
The keys and the keystroke model are in linekeys.py.

Limits: in the alternate screen (vim, less, top; ``ESC[?1049h``/``?47h``/``?1047h``) keystrokes
are recorded but not taken as command lines; a prompt the screen cannot find again (a program
that rewrites the whole screen) leaves the typed line as the only source.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

import pyte

from bastion.relay.linekeys import Key, KeyKind, KeyReader, TypedLine
from bastion.replay.terminal import TolerantScreen

__all__ = ["Key", "KeyKind", "KeyReader", "LineCatcher", "LineReading", "OutputTail",
           "ScreenLine", "TypedLine", "read_screen_line"]

TAIL_CAP = 32 * 1024  # newest output bytes kept (the prompt and the line are in the last ones)
SMALL_CHUNK = 256  # echo-sized chunks are joined so that the tail holds few objects
RENDER_CAP = 16 * 1024  # at most this much output is rendered to read one line
MIN_ROWS = 48  # rows of the reading screen: a wrapped line or a completion list fits
_ALT_ON = (b"\x1b[?1049h", b"\x1b[?1047h", b"\x1b[?47h")
_ALT_OFF = (b"\x1b[?1049l", b"\x1b[?1047l", b"\x1b[?47l")
_SEARCH_PROMPT = re.compile(r"\((?:failed )?(?:reverse-)?i-search\)`.*?': ")


class OutputTail:
    """The target's newest output, bounded; O(1) Python work and no copying per chunk.

    Chunks are kept by reference in a deque (bytes are immutable) until ``cap`` bytes newer
    than them arrived. Mode switches (alternate screen, bracketed paste) are looked for only
    when a key is typed (``scan``), over the output since the last scan, with C-level searches.
    """

    def __init__(self, cap: int = TAIL_CAP) -> None:
        self._cap = cap
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self.end = 0  # absolute offset (bytes of output ever seen) just past the newest byte
        self._scanned = 0  # output before this offset was searched for mode switches
        self.alternate = False  # a full-screen program holds the terminal
        self.bracketed_paste = False  # the program asked for pastes in ESC[200~ ... ESC[201~

    @property
    def start(self) -> int:
        """Absolute offset of the oldest output byte kept."""
        return self.end - self._size

    def feed(self, data: bytes) -> None:
        """Keep ``data`` (by reference); drop chunks older than the newest ``cap`` bytes."""
        chunks = self._chunks
        if len(data) < SMALL_CHUNK and chunks and len(chunks[-1]) < SMALL_CHUNK:
            chunks[-1] += data  # keystroke echo: a few bytes at a time, kept as one object
        else:
            chunks.append(data)
        self._size += len(data)
        self.end += len(data)
        while self._size - len(chunks[0]) >= self._cap:
            self._size -= len(chunks.popleft())

    def scan(self) -> None:
        """Note mode switches in the output since the last scan (called when a key is typed).

        If output went unseen (more than ``cap`` bytes since the last key), a switch in it is
        unknown: then the modes fall back to off (keys judged as lines, pastes as typing), the
        safe side, unless the kept output shows a newer switch.
        """
        lost = self._scanned < self.start
        data = self.since(self._scanned)
        self._scanned = self.end
        # ESC first: a memchr; the three-byte search alone stops at every "?" of plain text
        # (0.69 against 0.013 ms/MB, as in masking/noecho.py).
        if b"\x1b" not in data or b"\x1b[?" not in data:
            if lost:
                self.alternate = self.bracketed_paste = False
            return
        on = max(data.rfind(s) for s in _ALT_ON)
        off = max(data.rfind(s) for s in _ALT_OFF)
        if on != off:
            self.alternate = on > off
        elif lost:
            self.alternate = False
        on, off = data.rfind(b"\x1b[?2004h"), data.rfind(b"\x1b[?2004l")
        if on != off:
            self.bracketed_paste = on > off
        elif lost:
            self.bracketed_paste = False

    def since(self, offset: int) -> bytes:
        """Output from absolute ``offset`` on (from the oldest kept byte if it is gone)."""
        want = self.end - max(offset, self.start)
        if want <= 0:
            return b""
        # Only the newest chunks that hold output from ``offset`` on are joined.
        parts, got = [], 0
        for chunk in reversed(self._chunks):
            parts.append(chunk)
            got += len(chunk)
            if got >= want:
                break
        data = b"".join(reversed(parts))
        return data[len(data) - want:]

    def forget_before(self, offset: int) -> None:
        """Drop whole chunks older than absolute ``offset`` (the line's prompt row onward)."""
        chunks = self._chunks
        while chunks and self.start + len(chunks[0]) <= offset:
            self._size -= len(chunks.popleft())

    def row_start(self, offset: int) -> int:
        """Absolute offset of the start of the output row holding ``offset`` (after its LF)."""
        first = max(self.start, offset - RENDER_CAP)
        window = self.since(first)[:offset - first]
        lf = window.rfind(b"\n")
        return first + lf + 1 if lf >= 0 else first


@dataclass(frozen=True)
class ScreenLine:
    """What the rendered screen shows after the prompt; ``found`` is False if no prompt was seen."""

    text: str
    found: bool
    prompt: str = ""  # what stood before the line on its row (a shell prompt, "Password: ")


def read_screen_line(tail: OutputTail, row_offset: int, mark: int, width: int,
                     height: int) -> ScreenLine:
    """Render the output from ``row_offset`` (start of the prompt's row) and read the input line.

    ``mark`` is the output offset when the line's first key was typed: the cursor there is where
    the prompt ended. The prompt is looked for again at Enter (a completion list or Ctrl-L
    redraws it lower or higher) by its text; Ctrl-R's search prompt is recognized too.
    """
    rows = max(height, MIN_ROWS)
    screen = TolerantScreen(max(width, 2), rows)  # the target's output may hold anything
    stream = pyte.ByteStream(screen)
    before = tail.since(row_offset)
    split = max(0, min(len(before), mark - max(row_offset, tail.start)))
    head, rest = before[:split], before[split:]
    if len(rest) > RENDER_CAP:
        head, rest = b"", rest[-RENDER_CAP:]
    stream.feed(head)
    prompt_row, prompt_col = screen.cursor.y, screen.cursor.x
    prompt = _cells(screen, prompt_row, 0, prompt_col)
    stream.feed(rest)
    cy = screen.cursor.y
    start: tuple[int, int] | None = None
    # The newest row that still begins with the prompt: after Ctrl-C, a completion list or
    # Ctrl-L the shell drew the prompt again lower (or higher) than where the line began.
    for row in range(cy, -1, -1):
        if _cells(screen, row, 0, prompt_col) == prompt and (prompt.strip() or row == prompt_row):
            start = (row, prompt_col)
            break
    for row in range(cy, (start[0] if start else 0) - 1, -1):
        match = _SEARCH_PROMPT.search(_cells(screen, row, 0, screen.columns))
        if match:  # Ctrl-R replaced the prompt with its own; the line follows it
            start = (row, match.end())
            break
    if start is None:
        return ScreenLine("", False, prompt)
    row, col = start
    last = max(cy, row)
    while last + 1 < rows and _cells(screen, last + 1, 0, screen.columns).strip():
        last += 1
    parts = [_cells(screen, row, col, screen.columns)]
    parts += [_cells(screen, r, 0, screen.columns) for r in range(row + 1, last + 1)]
    return ScreenLine("".join(parts).rstrip(), True, prompt)


def _cells(screen: pyte.Screen, row: int, first: int, last: int) -> str:
    """The characters of ``row`` in columns ``first`` to ``last`` (exclusive)."""
    line = screen.buffer[row]
    return "".join(line[x].data for x in range(first, min(last, screen.columns)))


@dataclass(frozen=True)
class LineReading:
    """Both readings of the line at Enter; ``candidates`` are the texts to judge."""

    screen: ScreenLine | None  # None: no prompt mark (nothing typed, or output lost)
    typed: str
    typed_certain: bool

    @property
    def echoed(self) -> bool:
        """Whether the screen shows the line (False: no echo, as under ``stty -echo``)."""
        return self.screen is not None and self.screen.found and bool(self.screen.text.strip())

    @property
    def candidates(self) -> tuple[str, ...]:
        """The distinct line texts to judge; the strictest verdict of them applies.

        The screen's text when it shows the line; the typed text while the keystroke model is
        exact, or when there is no echo to read (then it is all there is).
        """
        out: list[str] = []
        if self.echoed and self.screen is not None:
            text = self.screen.text
            # Keys typed before the prompt was drawn make the reading start before the prompt:
            # "$ ls" (or just "$ " under ``stty -echo``) where the exact keystrokes say "ls".
            # Only then, and only while the keystroke model is exact, is the screen set aside.
            if not (self.typed_certain and _prompt_then_typed(text, self.typed)):
                out.append(text)
        if (self.typed_certain or not out) and self.typed not in out:
            out.append(self.typed)
        return tuple(out)

    @property
    def shown(self) -> str:
        """The one text to record: what the screen shows, else what was typed."""
        return self.candidates[0]


def _prompt_then_typed(text: str, typed: str) -> bool:
    """Whether ``text`` is a prompt followed by (the start of) ``typed``: "$ ", "$ rm -r"..."""
    for index, char in enumerate(text[:200]):
        if char in "$#>%" and typed.startswith(text[index + 1:].lstrip(" ")):
            return True
    return False


class LineCatcher:
    """Tracks one terminal's current command line from both directions (pure: no I/O, no time).

    Input: ``keys()`` splits a chunk into keys; ``typed_key()`` is called for every key that is
    forwarded (it remembers where the prompt ended at the line's first key). Output: ``output()``
    for every chunk (O(1)). At Enter: ``read()``, then ``end_line()``.
    """

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.tail = OutputTail()
        self.reader = KeyReader()
        self.typed = TypedLine()
        self._mark: int | None = None  # output offset when the line's first key was typed
        self._row: int = 0  # output offset where the prompt's row began

    @property
    def alternate(self) -> bool:
        """A full-screen program holds the terminal: keys are not command lines.

        Call ``scan_output`` first: the modes are read from the output only when keys come.
        """
        return self.tail.alternate

    def scan_output(self) -> None:
        """Read mode switches from the output since the last key (once per input chunk)."""
        self.tail.scan()

    def output(self, data: bytes) -> None:
        """The target sent ``data`` to the terminal."""
        self.tail.feed(data)

    def resize(self, width: int, height: int) -> None:
        """The terminal changed size."""
        self.width, self.height = width, height

    def keys(self, data: bytes) -> list[Key]:
        """The keys in an input chunk."""
        return list(self.reader.keys(data))

    def typed_key(self, key: Key) -> None:
        """A key (not Enter) goes to the target: update the typed line; mark the prompt's end."""
        if self._mark is None:
            self._mark = self.tail.end
            self._row = self.tail.row_start(self._mark)
            self.tail.forget_before(self._row)
        if key.kind is KeyKind.CONTROL and key.text == "\x03":
            self.typed.reset()  # the screen mark stays: the shell decides what Ctrl-C did
            self.typed.used = True
        else:
            self.typed.apply(key)

    @property
    def line_started(self) -> bool:
        """Whether any key of the current line was typed."""
        return self._mark is not None

    def read(self) -> LineReading:
        """Both readings of the current line (renders the tail once: call at Enter only)."""
        screen = None
        if self._mark is not None and self._row >= self.tail.start:
            screen = read_screen_line(self.tail, self._row, self._mark, self.width, self.height)
        return LineReading(screen, self.typed.text, self.typed.certain)

    def end_line(self) -> None:
        """The line was run or dropped: the next key starts a new one."""
        self._mark = None
        self.typed.reset()
