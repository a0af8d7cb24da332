"""The card's PINs: from a file, an environment variable, or asked for.

A PIN is read when the card first needs it (the SO PIN only if the card's
profile asks for it) and kept in memory for this run only: the OpenSC
re-initialisation after key generation needs a second login.  It is never
printed, logged, or written to the state file.
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from .card_profiles import Login
from .errors import ConfigError, UsageError
from .secret import SecretRef

PIN_NAMES: dict[Login, str] = {"user": "PIN", "so": "SO (admin) PIN"}
_OPTIONS: dict[Login, str] = {"user": "--pin-file/--pin-env", "so": "--so-pin-file/--so-pin-env"}


@dataclass
class CardPins:
    """Where each PIN comes from; ``prompt`` is used when no source was given."""

    user: SecretRef | None = None
    so: SecretRef | None = None
    prompt: Callable[[str], str] | None = None
    _known: dict[Login, str] = field(default_factory=dict, repr=False)

    @classmethod
    def interactive(cls, user: SecretRef | None, so: SecretRef | None) -> CardPins:
        """Asks on the terminal, and only if there is one (never reads a PIN from a pipe)."""
        return cls(user=user, so=so, prompt=terminal_prompt())

    def get(self, role: Login, card: str) -> str:
        if role in self._known:
            return self._known[role]
        source = self.user if role == "user" else self.so
        if source is not None:
            try:
                pin = source.reveal()
            except ConfigError as exc:
                raise UsageError(exc.message) from None
        elif self.prompt is not None:
            pin = self.prompt(f"{PIN_NAMES[role]} of {card}: ")
        else:
            raise UsageError(f"the card needs its {PIN_NAMES[role]} and there is no terminal to ask "
                             f"for it: pass {_OPTIONS[role]}")
        if not pin:
            raise UsageError(f"the {PIN_NAMES[role]} is empty")
        self._known[role] = pin
        return pin

    def forget(self, role: Login) -> None:
        """Drop a refused PIN: it must not be tried again."""
        self._known.pop(role, None)


def new_pin(source: SecretRef | None, prompt: Callable[[str], str] | None, *, card: str,
            lengths: tuple[int, int] = (6, 8)) -> str:
    """A new user PIN for the card: from ``source``, else typed twice on the terminal; never sent anywhere.

    PIV cards take 6 to 8 characters (SP 800-73-4); the check is here, before
    the one-time code or the card's PUK is spent on a PIN the card would refuse.
    """
    if source is not None:
        try:
            pin = source.reveal()
        except ConfigError as exc:
            raise UsageError(exc.message) from None
    elif prompt is not None:
        pin = prompt(f"new PIN for {card}: ")
        if prompt(f"new PIN for {card} again: ") != pin:
            raise UsageError("the two new PINs differ; nothing was changed, run again")
    else:
        raise UsageError("the new PIN is needed and there is no terminal to ask for it: pass "
                         "--new-pin-file/--new-pin-env")
    low, high = lengths
    if not low <= len(pin) <= high or not pin.isascii() or not pin.isprintable():
        raise UsageError(f"the new PIN must be {low} to {high} characters (letters, digits, punctuation); "
                         "nothing was changed")
    return pin


def terminal_prompt() -> Callable[[str], str] | None:
    """Asks on the terminal, and only if there is one (never reads a PIN from a pipe)."""
    return _ask_terminal if sys.stdin is not None and sys.stdin.isatty() else None


def _ask_terminal(prompt: str) -> str:
    return getpass.getpass(prompt)
