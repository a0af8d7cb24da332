"""Text from the server or the card, made safe to print on the user's terminal.

A server (or a card's label) is not trusted to write to the terminal: an
escape sequence can recolour or clear the screen, set the window title or
fake a ``done`` line, a carriage return can overwrite what was printed, and
a bidi override (U+202E) can make text read backwards.  Every line the agent
prints goes through :func:`printable` (progress lines, the failure message,
the result lines on stdout, log records), so nothing can slip past one call
site that forgot.

Control characters are not dropped but shown escaped (``\\x1b``, ``\\u202e``):
the user and an administrator reading a bug report can still see that the
server sent something odd, and the ``[`` of an ESC sequence that follows the
escaped ESC is harmless text.
"""

from __future__ import annotations

import unicodedata

# Cc: C0 controls, DEL, C1 controls (CSI U+009B, OSC U+009D …); Cf: format
# characters (bidi overrides and isolates, zero-width characters); Zl, Zp:
# line and paragraph separators; Cs: lone surrogates (undecodable bytes).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def printable(text: object, *, multiline: bool = False) -> str:
    """``text`` with every control, format and separator character escaped.

    ``multiline`` keeps plain ``\\n`` (for text that is meant to span lines,
    such as a traceback); a lone ``\\r`` is escaped either way, so one line
    can never overwrite another.  A tab becomes a space.
    """
    value = str(text)
    if value.isascii() and value.isprintable():
        return value  # the usual case: nothing to look at
    out: list[str] = []
    for char in value:
        if char == "\n" and multiline:
            out.append(char)
        elif char == "\t":
            out.append(" ")
        elif unicodedata.category(char) in _UNSAFE_CATEGORIES:
            point = ord(char)
            if point < 0x100:
                out.append(f"\\x{point:02x}")
            else:
                out.append(f"\\u{point:04x}" if point < 0x10000 else f"\\U{point:08x}")
        else:
            out.append(char)
    return "".join(out)
