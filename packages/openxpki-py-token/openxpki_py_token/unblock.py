"""``openxpki-py-token unblock``: a blocked PIN reset on the card with the credential the server holds.

The owner asked on their page (or the help desk started it for them) and
got a one-time code there.  The agent reads the card, asks for the new PIN
(before the code is spent: a typo costs nothing), pairs with the page like
``enroll`` (:mod:`.session`), reports the card, and waits until the owner
confirmed card and phrase.  Then it receives the card's unblock credential
(PIV: the PUK; OpenPGP: the admin PIN), once, and resets the PIN on the card.  The new PIN never
leaves this computer; the credential is used for the one card command,
never printed, logged or saved, and dropped right after (Python cannot
overwrite a string in place: the reference goes, the memory is freed).  The
server hears only "unblocked" or "failed" with the card's error code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .api_client import ApiClient
from .credentials import DerivedCredentials
from .errors import EnrollmentStopped, ProtocolError, ServerRefused, TokenError
from .openpgp_unblock import OpenPgpUnblockCard
from .piv_card import PivCard
from .progress import Progress
from .session import answer_text, open_session
from .state import StateStore

log = logging.getLogger("openxpki_py_token")
_POLL = 1.0


class PinUnblocker:
    """One unblock: ``PinUnblocker(...).unblock(code)``; ``new_pin`` asks for (or reads) the new PIN."""

    def __init__(self, api: ApiClient, card: PivCard | OpenPgpUnblockCard, store: StateStore,
                 new_pin: Callable[[str], str], *,
                 timeout: float = 900.0, progress: Progress | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.card = card
        self.store = store
        self.new_pin = new_pin
        self.timeout = timeout
        self.progress = progress or Progress()
        self._sleep = sleep
        self._clock = clock

    def unblock(self, code: str) -> None:
        state_key = "".join(ch for ch in code.strip().upper() if ch.isalnum())
        with self.card:
            info = self.card.info
            assert info is not None
            self.progress.step(f"card found: {info.describe()}")
            if self.card.route == "piv" and info.manufacturer != "Yubico":
                # The server derives the PUK from a serial that stays; a CHUID GUID changes at every personalization.
                raise TokenError(f"{info.describe()} has no hardware serial, so the server cannot know its PUK; "
                                 "ask your PKI administrator", code="card.no_serial")
            pin = self.new_pin(info.describe())
            session = open_session(self.api, self.store, self.progress, code, state_key, what="PIN unblock")
            try:
                self._wait_for_confirmation(info.serial)
                self._reset(info.serial, pin)
            except ServerRefused as exc:
                if exc.code.startswith("auth."):
                    self.store.forget(session.server, state_key)
                raise
            self.store.forget(session.server, state_key)
        self.progress.step("done: the PIN is unblocked; use your new PIN from now on")

    def _wait_for_confirmation(self, serial: str) -> None:
        deadline = self._clock() + self.timeout
        body = {"serial": serial, "card_profile": self.card.route}
        announced = False
        while True:
            status = answer_text(self.api.post("pin-unblock/card", body).body, "status", "pin-unblock/card")
            if status == "confirmed":
                return
            if status != "awaiting_confirmation":
                raise ProtocolError(f"the server answered the card report with status {status!r}")
            if not announced:
                self.progress.step("waiting for you to confirm the card and the phrase in the browser…")
                announced = True
            if self._clock() >= deadline:
                raise EnrollmentStopped(f"stopped waiting after {self.timeout:.0f} s for the confirmation in the "
                                        "browser; run the same command again")
            self._sleep(_POLL)

    def _reset(self, serial: str, pin: str) -> None:
        """Ask for the credential (once: not repeated on a lost answer), use it, report, drop it."""
        answer = self.api.post("pin-unblock/credential", {"token_serial": serial}, idempotent=False)
        credentials: DerivedCredentials | None = DerivedCredentials.from_api(answer.body, serial=serial)
        assert credentials is not None
        # PIV: the PUK; OpenPGP: the admin PIN (PW3).
        puk = credentials.puk if self.card.route == "piv" else credentials.admin_pin
        if puk is None:
            raise ProtocolError(f"the server sent no unblock credential for this {self.card.route} card")
        log.info("received the card's unblock credential from the server")  # never the value
        try:
            self.progress.step("unblocking the PIN on the card…")
            self.card.unblock_pin(puk, pin)
        except TokenError as exc:
            self._report(serial, "failed", exc.code)
            raise
        finally:
            credentials = None
            puk = None
        self._report(serial, "unblocked", None)

    def _report(self, serial: str, outcome: str, code: str | None) -> None:
        body = {"token_serial": serial, "outcome": outcome, **({"code": code} if code else {})}
        try:
            self.api.post("pin-unblock/result", body)
        except ServerRefused as exc:
            # The card is what counts; the page then shows the unblock as unfinished until it times out.
            log.warning("the server did not take the result (%s): %s", exc.code, exc.message)
