"""Progress lines for the user, on stderr (stdout carries only the result)."""

from __future__ import annotations

import sys
from typing import TextIO


class Progress:
    """One line per step; never given a PIN or a token to print."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    def step(self, text: str) -> None:
        stream = self._stream if self._stream is not None else sys.stderr
        print(text, file=stream, flush=True)
