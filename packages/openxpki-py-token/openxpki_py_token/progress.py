"""Progress lines for the user, on stderr (stdout carries only the result)."""

from __future__ import annotations

import sys
from typing import TextIO

from .terminal import printable


class Progress:
    """One line per step; never given a PIN or a token to print."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    def step(self, text: str) -> None:
        # Steps quote the server and the card (reasons, labels, serials): one
        # line each, with nothing that could steer the terminal.
        stream = self._stream if self._stream is not None else sys.stderr
        print(printable(text), file=stream, flush=True)
