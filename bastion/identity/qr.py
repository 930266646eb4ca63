"""QR codes drawn with text: two modules per character cell using Unicode half blocks."""

from __future__ import annotations

import qrcode
import qrcode.constants

_BLOCKS = {(False, False): " ", (True, False): "\u2580", (False, True): "\u2584",
           (True, True): "\u2588"}


def qr_lines(text: str, border: int = 2) -> list[str]:
    """The QR code of ``text`` as lines for a dark-on-light or light-on-dark terminal.

    Dark modules are drawn as the background (spaces) and light ones as blocks, so the code
    reads correctly on the usual light-text-on-dark terminal; the border is the quiet zone.
    """
    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_L, border=border)
    qr.add_data(text)
    qr.make(fit=True)
    matrix: list[list[bool]] = [[not cell for cell in row] for row in qr.get_matrix()]
    if len(matrix) % 2:
        matrix.append([False] * len(matrix[0]))
    return ["".join(_BLOCKS[(top, bottom)] for top, bottom in zip(upper, lower, strict=True))
            for upper, lower in zip(matrix[0::2], matrix[1::2], strict=True)]


def qr_text(text: str) -> str:
    """``qr_lines`` joined with newlines."""
    return "\n".join(qr_lines(text)) + "\n"
