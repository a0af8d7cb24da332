"""A PIN unblock as the pages see it: start it (owner or operator), the owner's code, confirm, cancel.

Only the card's registered owner sees an unblock's page, gets its code and
confirms the card: an operator who started it for them cannot run the
agent in their name.  Anyone else's unblock is "not found".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .. import roles
from ..errors import NotFound, UnexpectedStep
from ..personalization.enrollment import AgentCredential, live_pairing, new_enrollment_code
from .activities import WF_TYPE
from .agent_calls import CARD_STATES

FINAL_PROC_STATES = ("finished", "failed")


@dataclass(frozen=True)
class UnblockPage:
    workflow: Any
    code_offered: bool
    #: The agent that reported the card, whose phrase the owner is asked to confirm; None otherwise.
    pairing: AgentCredential | None
    failure: str | None


class PinUnblockService:
    """The ``pin_unblock`` workflow for the pages; ``limits`` are the enrollment code limits."""

    def __init__(self, *, engine: Any, db: Any, limits: Any) -> None:
        self.engine = engine
        self.db = db
        self.limits = limits

    def open_for_card(self, serial: str) -> Any | None:
        found = [s for s in self.engine.search(wf_type=WF_TYPE, token_serial=serial, limit=20)
                 if s.proc_state not in FINAL_PROC_STATES]
        return self.engine.get(found[0].id) if found else None

    def start(self, serial: str, *, actor: str, role: str, reason: str | None = None) -> Any:
        """The card's open unblock (if the caller may see it), else a new one; a refusal ends it as REFUSED."""
        current = self.open_for_card(serial)
        if current is not None and (role != roles.USER or current.context.get("owner") == actor):
            return current
        context = {"token_serial": serial, **({"reason": reason} if reason else {})}
        return self.engine.start(WF_TYPE, actor=actor, role=role, context=context)

    def own(self, wf_id: int, login: str) -> Any:
        wf = self.engine.get(wf_id)
        if wf.wf_type != WF_TYPE or wf.context.get("owner") != login:
            raise NotFound(f"workflow {wf_id} is not a PIN unblock of a card of {login}")
        return wf

    def open_for_owner(self, login: str) -> list[Any]:
        return [s for s in self.engine.search(wf_type=WF_TYPE, owner=login, limit=20)
                if s.proc_state not in FINAL_PROC_STATES]

    def page(self, wf: Any) -> UnblockPage:
        pairing = None
        card = wf.context.get("card") or {}
        if wf.state == "CONFIRM_CARD":
            with self.db.connect() as conn:
                live = live_pairing(conn, wf.id, now=datetime.now(timezone.utc))
            pairing = live if live is not None and live.credential_id == card.get("agent") else None
        failure = (wf.context.get("failure") or {}).get("message")
        return UnblockPage(workflow=wf, code_offered=wf.state in CARD_STATES, pairing=pairing, failure=failure)

    def new_code(self, wf_id: int, login: str) -> tuple[Any, str | None]:
        wf = self.own(wf_id, login)
        if wf.state not in CARD_STATES:
            return wf, None
        with self.db.begin() as conn:
            code = new_enrollment_code(conn, workflow_id=wf_id, login=login, limits=self.limits,
                                       now=datetime.now(timezone.utc))
        return wf, code

    def act(self, wf_id: int, login: str, action: str, *, role: str, version: int, agent: int | None) -> None:
        """The owner's steps: confirm the card with the agent's phrase, or cancel."""
        self.own(wf_id, login)
        if action == "confirm_card":
            if agent is None:
                raise UnexpectedStep("the form does not say which agent's phrase you saw; reload the page")
            inputs: dict[str, Any] = {"agent": agent}
        elif action == "cancel":
            inputs = {"reason": "cancelled by the card's owner"}
        else:
            raise UnexpectedStep(f"{action!r} is not a step the unblock page offers")
        self.engine.execute(wf_id, action, actor=login, role=role, inputs=inputs, expected_version=version)
