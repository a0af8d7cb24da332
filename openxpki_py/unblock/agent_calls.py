"""What the owner's token agent may do in a PIN unblock: report the card, receive its credential once, report.

The agent pairs like a personalization's (:mod:`openxpki_py.personalization.enrollment`):
a one-time code from the owner's page, a bearer credential bound to this
workflow, a phrase the owner confirms in the browser together with the card.
Only then, only in ``UNBLOCKING``, only for the card the unblock names and
only once per workflow is the unblock credential released (PIV: the PUK, not
the management key; OpenPGP: the admin PIN).  Every release and refusal is audited
(``card.unblock_credential``) with the card and the kind, never the value;
nothing of it is stored.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from ..audit import append_audit
from ..audit.pending import count_audit
from ..crypto.card_admin import CardAdminCredentials
from ..db.schema import token
from ..errors import NotPermitted, OpenXPKIError, UnexpectedStep
from ..personalization.agent_calls import AGENT_ROLE, AgentUnconfirmed, CardMismatch
from ..personalization.card_credentials import CardCredentialsOff, lock_releases
from ..personalization.enrollment import AgentCredential
from ..workflow.errors import ActionNotAvailable
from .activities import UNBLOCK_KINDS, WF_TYPE

RELEASED = "card.unblock_credential"
CARD_STATES = ("WAIT_FOR_CARD", "CONFIRM_CARD")


class UnblockCredentialRefused(NotPermitted):
    """This agent may not have the card's unblock credential (now, or at all)."""

    code = "unblock.credential_refused"


class UnblockCredentialUsed(UnblockCredentialRefused):
    """The unblock already released its credential once: a new attempt is a new unblock."""

    code = "unblock.credential_used"


class PinUnblockCalls:
    """The agent's side of ``pin_unblock``; ``card_admin`` gives the CardAdminSecret (or None) when asked."""

    def __init__(self, *, db: Any, engine: Any, card_admin: Any) -> None:
        self.db = db
        self.engine = engine
        self.card_admin = card_admin

    def _view(self, agent: AgentCredential) -> Any:
        view = self.engine.get(agent.workflow_id)
        if view.wf_type != WF_TYPE:
            raise UnexpectedStep("this agent session is not for a PIN unblock; run the command the unblock page "
                                 "shows", code="workflow.type")
        return view

    def _execute(self, agent: AgentCredential, action: str, inputs: dict[str, Any]) -> Any:
        try:
            return self.engine.execute(agent.workflow_id, action, actor=agent.login, role=AGENT_ROLE, inputs=inputs)
        except ActionNotAvailable as exc:
            raise UnexpectedStep(exc.message) from exc

    def report_card(self, agent: AgentCredential, serial: str, card_profile: str) -> str:
        """``awaiting_confirmation`` until the owner confirmed the card and this agent's phrase, then ``confirmed``.

        A repeated report (the agent polls with it) changes nothing.
        """
        view = self._view(agent)
        if serial != view.context["token_serial"]:
            raise CardMismatch(f"this PIN unblock is for card {view.context['token_serial']}; insert that card")
        card = view.context.get("card") or {}
        if card.get("agent") == agent.credential_id:
            return "confirmed" if card.get("confirmed") and agent.confirmed else "awaiting_confirmation"
        if view.state not in CARD_STATES:
            raise UnexpectedStep(f"this PIN unblock is past the card step ({view.state}); start a new one",
                                 code="unblock.state")
        self._execute(agent, "report_card", {"serial": serial, "agent": agent.credential_id,
                                             "card_profile": card_profile})
        return "awaiting_confirmation"

    def credential(self, agent: AgentCredential, *, token_serial: str) -> CardAdminCredentials:
        """The card's unblock credential, once, for the confirmed agent of the confirmed card (audited)."""
        secret = self.card_admin() if self.card_admin is not None else None
        if secret is None:
            raise CardCredentialsOff("this server does not derive card admin credentials: the help desk cannot "
                                     "unblock a PIN")
        refusal: OpenXPKIError | None = None
        try:
            view = self._view(agent)  # read before the write transaction (SQLite's BEGIN IMMEDIATE holds the file)
        except UnexpectedStep as exc:
            view, refusal = None, exc
        with self.db.begin() as conn:
            try:
                if refusal is not None:
                    raise refusal
                card_type = self._check_release(conn, view, agent, token_serial)
            except (UnblockCredentialRefused, UnexpectedStep, AgentUnconfirmed) as exc:
                append_audit(conn, actor=agent.login, event=RELEASED, outcome="refused",
                             target=f"workflow:{agent.workflow_id}", details={"card": token_serial, "code": exc.code})
                refusal = exc  # committed with its audit row
            else:
                kind = UNBLOCK_KINDS[card_type]
                value = secret.card_admin_credentials(card_type, token_serial).values[kind]
                append_audit(conn, actor=agent.login, event=RELEASED, target=f"workflow:{agent.workflow_id}",
                             details={"card": token_serial, "card_type": card_type, "kinds": [kind]})
                return CardAdminCredentials(card_type, token_serial, {kind: value})
        assert refusal is not None
        raise refusal

    @staticmethod
    def _check_release(conn: Connection, view: Any, agent: AgentCredential, token_serial: str) -> str:
        if token_serial != view.context["token_serial"]:
            raise CardMismatch(f"this PIN unblock is for card {view.context['token_serial']}; insert that card")
        card = view.context.get("card") or {}
        if not agent.confirmed or card.get("agent") != agent.credential_id or not card.get("confirmed"):
            raise AgentUnconfirmed("confirm this card and this agent's phrase on the unblock page first")
        # The state as of now, under the workflow's lock (count and record as one: two requests at once
        # cannot both be the first); the view was read before, and the unblock may have been cancelled since.
        if (state := lock_releases(conn, view.id)) != "UNBLOCKING":
            raise UnexpectedStep(f"this PIN unblock is not unblocking now ({state})", code="unblock.state")
        # Checked again now, not only at the start, and locked till the release commits: a card reported
        # lost or handed to someone else since, or meanwhile, gets no unblock.
        card_row = conn.execute(select(token.c.owner, token.c.status).where(token.c.serial == token_serial)
                                .with_for_update()).first()
        if card_row is None or card_row.owner != agent.login or view.context.get("owner") != agent.login \
                or card_row.status != "active":
            raise UnblockCredentialRefused(f"card {token_serial} is no longer an active card of {agent.login}",
                                           code="unblock.card_inactive")
        if count_audit(conn, event=RELEASED, target=f"workflow:{view.id}"):
            raise UnblockCredentialUsed("this PIN unblock released the card's credential already; if the card did "
                                        "not take it, start a new PIN unblock")
        return str(card["card_profile"])

    def result(self, agent: AgentCredential, *, token_serial: str, outcome: str, code: str | None) -> str:
        """What the card did with the credential; the unblock ends (UNBLOCKED or FAILED) and the session with it."""
        view = self._view(agent)
        if token_serial != view.context["token_serial"]:
            raise CardMismatch(f"this PIN unblock is for card {view.context['token_serial']}")
        if not agent.confirmed:
            raise AgentUnconfirmed("confirm this card and this agent's phrase on the unblock page first")
        inputs: dict[str, Any] = {"outcome": outcome, **({"code": code} if code else {})}
        return str(self._execute(agent, "report_result", inputs).state)
