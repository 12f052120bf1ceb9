"""One sanitiser for every string a model supplies (names, producer, doc strings, reasons quoting
them) before it reaches a terminal, a CSV file or an HTML page.

- :func:`terminal`: C0/C1 control characters, DEL, and the Unicode format characters that reorder
  or hide text (bidi overrides, zero-width ones) are shown as visible escapes (``\\x1b``, ``\\n``,
  ``\\u202e``), so a name can neither start an ANSI/OSC escape sequence (colours, the window title,
  hyperlinks) nor fake a new output line. ``keep_newlines=True`` keeps ``\\n`` for messages whose
  line structure is our own (the model-supplied parts in them are escaped where they are built).
- :func:`csv_cell`: the OWASP rule against formula injection: a cell starting with ``=``, ``+``,
  ``-``, ``@``, a tab or a carriage return gets a leading ``'``; then :func:`terminal` (a CSV is
  read on terminals too; the csv module quotes what remains).
- :func:`html`: ``html.escape`` with quotes, after :func:`terminal`.
"""

from __future__ import annotations

import html as _html
import unicodedata

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _unsafe(ch: str) -> bool:
    """Control (Cc: C0, DEL, C1) and format (Cf: bidi overrides, zero-width) characters, the
    line/paragraph separators (Zl, Zp) some terminals honour, and lone surrogates (Cs: the bytes of a
    non-UTF-8 file name, which no terminal encoding can print)."""
    return unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs")


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def terminal(text: object, keep_newlines: bool = False) -> str:
    """``text`` with every unsafe character shown as a visible escape (a backslash is kept as is)."""
    s = str(text)
    if s.isprintable() and not any(_unsafe(c) for c in s):  # the common case, quickly
        return s
    return "".join(c if (c == "\n" and keep_newlines) or not _unsafe(c) else _escape(c) for c in s)


def csv_cell(value: object) -> object:
    """A CSV cell: numbers and None unchanged; text made terminal-safe and prefixed with ``'`` when a
    spreadsheet would read it as a formula."""
    if value is None or isinstance(value, (int, float)):
        return value
    s = str(value)
    if s.startswith(_FORMULA_START):
        s = "'" + s
    return terminal(s)


def html(text: object) -> str:
    """Text for an HTML page (element content or a quoted attribute value)."""
    return _html.escape(terminal(text), quote=True)
