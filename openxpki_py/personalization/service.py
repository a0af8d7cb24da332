"""A user's personalization as the pages see it: start or resume it, what
the user may do next, and the user's own steps (confirm the card and the
agent's pairing phrase, cancel, withdraw a request waiting for approval, a
new enrollment code, discard an unused one).

Nothing here knows HTTP: a workflow that is not the caller's is "not found"
(:class:`~openxpki_py.errors.NotFound`), a step that no longer fits is an
:class:`~openxpki_py.errors.UnexpectedStep`; the web layer maps both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .. import roles
from ..audit import append_audit
from ..db.certstore import owned_certificate_der, owned_certificates
from ..db.engine import read_only
from ..errors import NotFound, UnexpectedStep
from .enrollment import (
    AgentCredential,
    confirm_pairing,
    live_pairing,
    new_enrollment_code,
    revoke_workflow_access,
)
from .tasks import WF_TYPE, Progress, page_progress

USER_ROLE = roles.USER
PAGE_ACTIONS = ("confirm_token", "reject_token", "cancel")
# A new agent run after the card was confirmed (a new code): yes, it shows
# this phrase, so it may act; or no, it is not mine, so its credential ends.
AGENT_ACTIONS = ("confirm_agent", "reject_agent")
CARD_STATES = ("LOOKUP", "WAIT_FOR_TOKEN", "CONFIRM_TOKEN")
WITHDRAW = "withdraw"  # on the issuance child waiting for approval: cancels the personalization
# Where the page offers an enrollment code: before a card was found, and
# while the agent still has work to do (to replace an agent that stopped).
CODE_STATES = ("WAIT_FOR_TOKEN", "WAIT_FOR_CSR", "ISSUING", "WAIT_FOR_INSTALL")


@dataclass(frozen=True)
class CertificateRow:
    cert_type: str
    status: str
    serial: str
    subject: str
    not_before: datetime
    not_after: datetime


@dataclass(frozen=True)
class PersonalizationPage:
    """Everything the page shows about one personalization, derived from the workflow."""

    workflow: Any
    progress: Progress
    certificates: list[CertificateRow]
    code_offered: bool
    actions: list[str]
    #: The live agent run whose phrase the user is asked about; None when there is nothing to ask.
    pairing: AgentCredential | None = None


class PersonalizationService:
    """The personalization workflow, the certificate store and the policy, for one user at a time."""

    def __init__(self, *, engine: Any, db: Any, policy: Any) -> None:
        self.engine = engine
        self.db = db
        self.policy = policy

    def open_or_start(self, login: str) -> Any:
        """The person's unfinished personalization, or a new one: one per person, the database says so.

        ``login`` is the canonical person (auth.person); concurrent /token
        requests, reloads and a crash mid-start all find the same workflow.
        """
        # one_open_per_creator in the YAML.  Its row only: the caller redirects to the page, which reads the rest.
        return self.engine.summary(self.engine.launch(WF_TYPE, actor=login, role=USER_ROLE))

    def own(self, wf_id: int, login: str) -> Any:
        """The user's own personalization; anyone else's is "not found", never "forbidden"."""
        # Row and context: neither page nor steps look at history or search attributes.
        wf = self.engine.current(wf_id)  # UnknownWorkflow is a NotFound too
        _check_owner(wf, wf_id, login)
        return wf

    def _check_own(self, wf_id: int, login: str) -> None:
        """:meth:`own` where only the answer counts: reads the row alone."""
        _check_owner(self.engine.summary(wf_id), wf_id, login)

    def certificates(self, wf: Any) -> list[CertificateRow]:
        """The certificates the personalization issued, as the store has them."""
        entries = [e for e in wf.context.get("certificates") or [] if e.get("serial")]
        if not entries:
            return []
        with read_only(self.db) as conn:
            rows = owned_certificates(conn, [e["serial"] for e in entries], wf.creator)
        return [CertificateRow(e["type"], e["status"], e["serial"], rows[e["serial"]]["subject"],
                               rows[e["serial"]]["not_before"], rows[e["serial"]]["not_after"])
                for e in entries if e["serial"] in rows]

    def pairing(self, wf: Any) -> AgentCredential | None:
        """The agent run the page asks about: live and not yet confirmed (one agent at a time)."""
        if wf.state not in CODE_STATES and wf.state != "CONFIRM_TOKEN":
            return None
        with read_only(self.db) as conn:
            agent = live_pairing(conn, wf.id, now=datetime.now(timezone.utc))
        return agent if agent is not None and not agent.confirmed else None

    def agent_marker(self, wf: Any) -> str:
        """Changes when an agent redeems a code or is confirmed: the live page then reloads."""
        return agent_marker_of(self.pairing(wf))

    def page(self, wf: Any) -> PersonalizationPage:
        children: Sequence[Any] = self.engine.children(wf.id) if wf.state == "ISSUING" else ()
        progress = page_progress(wf, children)
        offered = {a.name for a in wf.available_actions(USER_ROLE)}
        pairing = self.pairing(wf)
        actions = [a for a in PAGE_ACTIONS if a in offered]
        card = wf.context.get("token") or {}
        if "confirm_token" in actions and (pairing is None or pairing.credential_id != card.get("agent")):
            actions.remove("confirm_token")  # the agent that found the card is gone: nothing to confirm
        if pairing is not None and wf.state not in CARD_STATES:
            actions = [*AGENT_ACTIONS, *actions]
        elif pairing is not None and wf.state == "WAIT_FOR_TOKEN":
            actions = ["reject_agent", *actions]
        return PersonalizationPage(
            workflow=wf, progress=progress,
            certificates=self.certificates(wf) if wf.state == "SUCCESS" else [],
            code_offered=wf.state in CODE_STATES,
            actions=actions + ([WITHDRAW] if progress.phase == "approval" else []),
            pairing=pairing,
        )

    def new_code(self, wf_id: int, login: str) -> tuple[Any, str | None]:
        """A new one-time code (earlier codes and agents stop working); None where no agent has work.

        Also after the card was confirmed: an agent whose credential ran out
        (a long approval, a reboot) continues with a new code; the server
        then insists on the same card.
        """
        wf = self.own(wf_id, login)
        if wf.state not in CODE_STATES:
            return wf, None
        with self.db.begin() as conn:
            code = new_enrollment_code(conn, workflow_id=wf_id, login=login, limits=self.policy.enrollment,
                                       now=datetime.now(timezone.utc))
        return wf, code

    def discard_codes(self, wf_id: int, login: str) -> None:
        """The page that showed a code was left: its unused codes end (agents already running stay)."""
        self._check_own(wf_id, login)
        with self.db.begin() as conn:
            revoke_workflow_access(conn, wf_id, now=datetime.now(timezone.utc), credentials=False)

    def act(self, wf_id: int, login: str, action: str, *, role: str, version: int, agent: int | None = None) -> None:
        """One of the user's own steps on the page, decided on the version (and agent) the user saw."""
        self._check_own(wf_id, login)
        if action == WITHDRAW:
            self.withdraw(wf_id, login, role=role)
            return
        if action in AGENT_ACTIONS:
            self.answer_agent(wf_id, login, agent, accept=action == "confirm_agent")
            return
        if action not in PAGE_ACTIONS:
            raise UnexpectedStep(f"{action!r} is not a step the personalization page offers")
        inputs: dict[str, Any] = {"reason": "cancelled by the user"} if action == "cancel" else {}
        if action == "confirm_token":
            if agent is None:
                raise UnexpectedStep("the form does not say which agent's phrase you saw; reload the page")
            inputs = {"agent": agent}
        self.engine.act(wf_id, action, actor=login, role=role, inputs=inputs, expected_version=version)

    def answer_agent(self, wf_id: int, login: str, agent: int | None, *, accept: bool) -> None:
        """Yes or no to the phrase of a new agent run (after the card was confirmed).

        Only the agent whose phrase the page showed is answered for: if
        another one redeemed a code meanwhile, the user is asked again.
        """
        wf = self.own(wf_id, login)
        now = datetime.now(timezone.utc)
        with self.db.begin() as conn:
            live = live_pairing(conn, wf_id, now=now)
            if live is None or agent is None or live.credential_id != agent or live.confirmed:
                raise UnexpectedStep("that agent has stopped or was replaced; reload the page",
                                     code="agent.replaced")
            if not accept:
                revoke_workflow_access(conn, wf_id, now=now)
                append_audit(conn, actor=login, event="enroll.agent_refused", target=f"workflow:{wf_id}",
                             details={"phrase": live.phrase})
                return
            if wf.state in CARD_STATES:
                raise UnexpectedStep("confirm the card together with the phrase; reload the page")
            confirm_pairing(conn, wf_id, agent, now=now)
            append_audit(conn, actor=login, event="enroll.agent_confirmed", target=f"workflow:{wf_id}",
                         details={"phrase": live.phrase})

    def withdraw(self, wf_id: int, login: str, *, role: str) -> None:
        """Waiting for an approval nobody gives: take the request back, which fails the personalization."""
        wf = self.own(wf_id, login)
        if wf.state != "ISSUING":
            raise UnexpectedStep("there is no request waiting for approval any more; reload the page")
        child_id = wf.context["certificates"][wf.context["current"]]["child_id"]
        self.engine.act(child_id, WITHDRAW, actor=login, role=role)

    def certificate_der(self, wf_id: int, serial: str, login: str) -> bytes:
        """One certificate this personalization issued to the user."""
        wf = self.own(wf_id, login)
        if serial not in {c.serial for c in self.certificates(wf)}:
            raise NotFound(f"personalization {wf_id} issued no certificate {serial}")
        with read_only(self.db) as conn:
            return owned_certificate_der(conn, serial, login)



def agent_marker_of(pairing: AgentCredential | None) -> str:
    """:meth:`PersonalizationService.agent_marker` for a pairing already read (the page has it)."""
    return f"{pairing.credential_id}" if pairing is not None else ""


def _check_owner(wf: Any, wf_id: int, login: str) -> None:
    if wf.wf_type != WF_TYPE or wf.creator != login:  # not yours: do not even confirm it exists
        raise NotFound(f"workflow {wf_id} is not a personalization of {login}")
