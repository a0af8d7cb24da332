"""The agent's part of personalization: report the card, then do the server's tasks.

The server decides what is left to do (``GET /api/v1/task``, or the
``next_task`` an action's answer carries); the agent only executes one task
at a time and never keeps its own plan.  That is what makes
a rerun after any interruption safe: a key that was generated but never
certified is found on the card and used again, a certificate already on the
card only needs its receipt, and the server never issues twice.

The server is trusted with the plan, not with the card: a task may only
make the agent reuse, or write a certificate for, a key this workflow's runs
generated (:class:`~openxpki_py_token.state.CreatedKeys`), and nothing the
agent did not write is deleted, except in a key slot that the card profile
gives to this PKI.  Waiting is bounded by ``--timeout`` on a monotonic
clock, never by a count of the server's answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .api_client import ApiClient
from .card import Card, CardInfo
from .card_profiles import CardProfile, choose_profile
from .card_tasks import check_route, generate_key, install_certificate
from .credentials import DerivedCredentials, ask_server
from .errors import (
    WHOLE_CARD_CODES,
    EnrollmentFailed,
    EnrollmentStopped,
    ProtocolError,
    ServerRefused,
    TokenError,
)
from .piv_card import PivCard
from .progress import Progress
from .session import answer_text as _text
from .session import open_session
from .state import CreatedKeys, EnrollmentSession, StateStore

log = logging.getLogger("openxpki_py_token")

# The server's retry_after is honoured within these bounds (seconds).
_MIN_WAIT, _MAX_WAIT = 0.2, 60.0
_AUTH_CODES = frozenset({"auth.token_invalid", "auth.token_expired", "auth.token_missing"})


@dataclass(frozen=True)
class IssuedCertificate:
    """One entry of the ``done`` task."""

    cert_type: str
    serial: str
    subject: str = ""
    not_after: str = ""
    #: ``installed``, or ``kept`` for a still valid certificate from before.
    status: str = ""


# Card errors that mean "this card cannot do this step" (not "something broke"):
# reported to the server, which skips the certificate type or fails, per policy.
CARD_UNABLE_CODES = (frozenset({"token.cannot_sign", "token.key_unsupported", "token.cannot_attest"})
                     | WHOLE_CARD_CODES)


class TokenAgent:
    """Runs one enrollment: ``TokenAgent(...).enroll(code)``."""

    def __init__(self, api: ApiClient, card: Card | PivCard, store: StateStore, *,
                 profile_name: str = "auto", timeout: float = 900.0,
                 progress: Progress | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.card = card
        self.store = store
        self.profile_name = profile_name
        self.timeout = timeout
        self.progress = progress or Progress()
        self._sleep = sleep
        self._clock = clock
        self._created: CreatedKeys | None = None

    def enroll(self, code: str) -> list[IssuedCertificate]:
        code = code.strip()
        # Codes are case-insensitive and their dashes optional: a rerun typed
        # differently must still find the saved session.
        state_key = "".join(ch for ch in code.upper() if ch.isalnum())
        with self.card:
            info = self.card.info
            assert info is not None
            self.progress.step(f"card found: {info.describe()}")
            profile = choose_profile(self.profile_name, (info.label, info.model, info.manufacturer))
            log.info("card profile %s", profile.name)
            check_route(profile, self.card)
            # Check the PINs before the one-time code is spent: a typo must not
            # cost the user a new code.  Admin credentials from the server are
            # released only for a confirmed card: they are checked at first use.
            self.card.login("user")
            if profile.needs_so_pin and not self.card.credentials.from_server(profile.route):
                self.card.login("so")
            session = self._authenticate(code, state_key)
            self.card.credentials.server = self._derived_credentials
            self._created = self.store.load_created_keys(session.server, session.workflow_id, info.serial)
            try:
                announced, task = self._report_card(info, profile)
                issued = self._run_tasks(profile, announced, task)
                self._finish_card()
            except ServerRefused as exc:
                # The saved session is of no use any more: a rerun needs a new code.
                # The key record outlives it (a new code continues the workflow)
                # unless the workflow itself is over.
                if exc.code in _AUTH_CODES or isinstance(exc, EnrollmentFailed):
                    self.store.forget(session.server, state_key)
                if isinstance(exc, EnrollmentFailed):
                    self.store.forget_created_keys(session.server, session.workflow_id)
                raise
        self.store.forget(session.server, state_key)
        self.store.forget_created_keys(session.server, session.workflow_id)
        return issued

    def _derived_credentials(self) -> DerivedCredentials | None:
        return ask_server(self.api, self._card_serial())

    def _finish_card(self) -> None:
        """What a card needs once all its certificates are on it (PIV: CHUID, management key)."""
        if self.card.admin_replaced:
            self.progress.step("the card's factory admin credentials were replaced by per-card ones that only "
                               "your PKI can derive")
        escrow = self.card.finish()
        if isinstance(self.card, PivCard):
            self.progress.step("new CHUID and CCC written (the card's PC/SC identity changed)")
        if escrow is not None:
            self.progress.step(f"new PIV management key set and saved to {escrow}: hand this file to "
                               "your PKI administrator for escrow, then delete it (without the key the "
                               "card cannot be personalized again)")

    # --- the session ------------------------------------------------------------------------

    def _authenticate(self, code: str, state_key: str) -> EnrollmentSession:
        return open_session(self.api, self.store, self.progress, code, state_key)

    def _card_serial(self) -> str:
        """The card this run works on, named with every CSR and receipt (the server refuses a swap)."""
        assert self.card.info is not None, "the card is opened before any task"
        return self.card.info.serial

    def _report_card(self, info: CardInfo, profile: CardProfile) -> tuple[bool, dict[str, Any] | None]:
        """POST /token; whether the user still has to confirm the card, and the next task if the answer has it."""
        body: dict[str, Any] = {
            "serial": info.serial, "manufacturer": info.manufacturer, "model": info.model,
            "label": info.label, "card_profile": profile.name,
        }
        if profile.slots:
            # The server plans the certificate types by these (which slot can
            # sign a CSR, which keys it makes) before the user's time is spent.
            body["key_slots"] = [slot.as_api() for slot in profile.capabilities()]
        answer = self.api.post("token", body)
        status = _text(answer.body, "status", "token")
        if status == "awaiting_confirmation":
            self.progress.step("waiting for you to confirm the card and the phrase in the browser…")
            return True, answer.next_task()
        if status != "confirmed":
            raise ProtocolError(f"the server answered the card report with status {status!r}")
        return False, answer.next_task()

    # --- the task loop ----------------------------------------------------------------------

    def _run_tasks(self, profile: CardProfile, announced_confirmation: bool,
                   carried: dict[str, Any] | None = None) -> list[IssuedCertificate]:
        """Do the server's tasks until done; ``carried`` is a task the last answer brought along.

        The answers to POST /token, /csr and /receipt carry the next task
        (``next_task``): it is done without asking GET /task.  An older server
        sends none; then, and after every wait, the agent asks.
        """
        deadline = self._clock() + self.timeout
        # The first wait after "confirm the card in the browser" says the same again.
        shown: str | None = None
        quiet = announced_confirmation
        while True:
            if self._clock() >= deadline:
                # Also ends a server that hands out work forever.
                raise self._stopped(shown or "the server had more tasks")
            task = carried if carried is not None else self.api.get("task").body
            carried = None
            kind = _text(task, "task", "task")
            if kind == "wait":
                reason = str(task.get("reason") or "the server is busy")
                if not quiet and reason != shown:
                    self.progress.step(f"waiting: {reason}…")
                quiet, shown = False, reason
                self._wait(task, deadline, reason)
                continue
            quiet, shown = False, None
            if kind == "generate_key":
                # "CSR sent; waiting for approval" already said what the next waits are for.
                try:
                    shown, carried = generate_key(self, task, profile)
                except TokenError as exc:
                    if exc.code not in CARD_UNABLE_CODES:
                        raise
                    self._report_unable(task, exc)
                    if exc.code in WHOLE_CARD_CODES:
                        raise  # the server has ended the personalization; the user reads why here too
            elif kind == "install_certificate":
                carried = install_certificate(self, task, profile)
            elif kind == "import_key":
                from .key_import import import_escrowed_key

                carried = import_escrowed_key(self, task, profile)
            elif kind == "done":
                return self._done(task)
            elif kind == "failed":
                raise EnrollmentFailed(str(task.get("message") or "the personalization failed"),
                                       code=str(task.get("code") or "task.failed"))
            else:
                raise ProtocolError(f"the server asked for task {kind!r}, which this agent does not "
                                    "know: update openxpki-py-token")

    def _report_unable(self, task: dict[str, Any], exc: TokenError) -> None:
        """Tell the server this card cannot do the step, so it skips the type (or fails) instead of waiting.

        A server that predates ``/api/v1/unable`` gets the old behaviour: the agent stops with the card's error.
        """
        cert_type = _text(task, "cert_type", "generate_key")
        try:
            self.api.post("unable", {"cert_type": cert_type, "code": exc.code, "reason": exc.message,
                                     "token_serial": self._card_serial()})
        except (ServerRefused, ProtocolError) as refused:
            if getattr(refused, "status", 0) == 404 or isinstance(refused, ProtocolError):
                raise exc from None
            raise
        if exc.code not in WHOLE_CARD_CODES:
            self.progress.step(f"{cert_type}: this card cannot do it ({exc.code}); the server leaves it out")

    def _wait(self, task: dict[str, Any], deadline: float, reason: str) -> None:
        """Sleep as the server asks, but never past the deadline (then one last poll)."""
        retry_after = task.get("retry_after", 1)
        if not isinstance(retry_after, (int, float)) or isinstance(retry_after, bool):
            retry_after = 1
        delay = min(max(float(retry_after), _MIN_WAIT), _MAX_WAIT)
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise self._stopped(reason)
        self._sleep(min(delay, remaining))

    def _stopped(self, reason: str) -> EnrollmentStopped:
        return EnrollmentStopped(
            f"stopped waiting after {self.timeout:.0f} s ({reason}); run the same command "
            "again to continue (if the code's session has expired, reload the web page for "
            "a new code)")

    def _done(self, task: dict[str, Any]) -> list[IssuedCertificate]:
        listed = task.get("certificates")
        if not isinstance(listed, list):
            raise ProtocolError("the server's done task has no certificate list")
        issued = [IssuedCertificate(**{name: str(c.get(name) or "") for name in
                                       ("cert_type", "serial", "subject", "not_after", "status")})
                  for c in listed if isinstance(c, dict)]
        for left_out in task.get("skipped") or []:
            if isinstance(left_out, dict):
                self.progress.step(f"not on this card: {left_out.get('cert_type')} "
                                   f"({left_out.get('reason') or 'the server left it out'})")
        self.progress.step(f"done: {len(issued)} certificate{'s' if len(issued) != 1 else ''} on the card")
        return issued

    def _created_keys(self) -> CreatedKeys:
        assert self._created is not None, "loaded after the enrollment code is traded"
        return self._created
