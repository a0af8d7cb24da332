"""What the token agent may do, as calls on the user's personalization.

The agent has no SSO session: it trades the one-time enrollment code for a
bearer credential bound to one workflow, and then acts *as the workflow's
user* through the workflow's manual actions.  The code is a bearer secret,
so a credential may only report a card until the user confirmed its pairing
phrase in the browser (:mod:`.enrollment`); after that it may act.  Calls an interrupted agent
repeats (card report, CSR, receipt) answer the same way twice and never act
twice.  Refusals are the project's errors (with their stable codes); the
web layer (:mod:`openxpki_py.web.api`) maps them to HTTP statuses.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from openxpki_py_token.capabilities import CardCapabilities

from .. import roles
from ..crypto.card_admin import CardAdminCredentials
from ..crypto.csr import public_key_fingerprint
from ..db.engine import read_only
from ..errors import AuthError, OpenXPKIError, PolicyViolation, UnexpectedStep
from ..workflow.errors import ActionNotAvailable
from .card_credentials import CardCredentialsRefused, release_card_credentials
from .enrollment import AgentCredential, AgentGrant, EnrollmentRefused, check_credential, redeem_code
from .tasks import CONFIRM_CARD_TASK, FINAL_FAILURE, WF_TYPE, agent_task

AGENT_ROLE = roles.USER
CARD_FIELDS = (("model", "model"), ("manufacturer", "manufacturer"),
               ("token_label", "label"))  # workflow field ← what the agent reports


class CardMismatch(UnexpectedStep):
    """The agent works on another card than the one the user confirmed (swapped mid-way)."""

    code = "token.mismatch"


class AgentUnconfirmed(AuthError):
    """The user has not confirmed this agent's pairing phrase in the browser (yet)."""

    code = "agent.unconfirmed"


class IssuanceFailed(PolicyViolation):
    """The CSR was taken, but no certificate came of it (rejected, or the CA refused)."""

    code = "issuance.failed"


@dataclass(frozen=True)
class AgentAnswer:
    """An action's status, and the agent's next task as the action left the workflow.

    ``next_task`` is what ``GET /api/v1/task`` would answer right now
    (docs/api.md): the agent goes on with it instead of asking.  It comes
    from the workflow as the call last read it (the action's read-back, or
    the read that found a repeat), never from a read of its own; None: the
    agent asks.
    """

    status: str
    next_task: dict[str, Any] | None = None


@dataclass(frozen=True)
class CsrAnswer(AgentAnswer):
    """``issued`` with the serial, or ``pending`` with the reason it waits."""

    serial: str | None = None
    reason: str | None = None


class TokenAgentCalls:
    """The agent's side of a personalization: credential, card, keys, certificates."""

    def __init__(self, *, db: Any, engine: Any, policy: Any, card_admin: Any = None,
                 max_card_admin_releases: int = 5, escrow: Any = None) -> None:
        self.db = db
        self.engine = engine
        self.policy = policy
        #: A callable giving the CardAdminSecret (or None): the HSM is touched only when asked.
        self.card_admin = card_admin
        self.max_card_admin_releases = max_card_admin_releases
        self.escrow = escrow  # openxpki_py.escrow.service.KeyEscrow, or None without an escrow key

    @staticmethod
    def _now() -> datetime:
        return datetime.now(timezone.utc)

    # --- the credential -----------------------------------------------------------

    def redeem(self, code: str, *, agent_key: str, client: str, sso_login: str | None) -> AgentGrant:
        """Trade the page's code for a credential; a refusal is committed before it is raised."""
        refusal: EnrollmentRefused | None = None
        with self.db.begin() as conn:
            try:
                return redeem_code(conn, code, agent_key=agent_key, client=client, limits=self.policy.enrollment,
                                   now=self._now(), sso_login=sso_login)
            except EnrollmentRefused as exc:
                refusal = exc  # commit: the failure counts towards the rate limit
        assert refusal is not None
        raise refusal

    def authenticate(self, credential: str, *, sso_login: str | None) -> AgentCredential:
        """Whom the credential acts for; the web server's own login, if any, must match."""
        with read_only(self.db) as conn:
            agent = check_credential(conn, credential, now=self._now())
        if sso_login is not None and sso_login != agent.login:
            raise AuthError("this credential belongs to another user", code="auth.wrong_user")
        return agent

    @staticmethod
    def _confirmed(agent: AgentCredential) -> None:
        """Keys and certificates only for an agent whose phrase the user confirmed in the browser."""
        if not agent.confirmed:
            raise AgentUnconfirmed(f"confirm this agent in your browser first: the personalization page must "
                                   f"show the phrase \"{agent.phrase}\"")

    # --- the workflow -------------------------------------------------------------

    def _view(self, workflow_id: int, token_serial: str | None = None) -> Any:
        view = self.engine.current(workflow_id)  # an agent's answers need no history or search attributes
        if view.wf_type != WF_TYPE:
            raise UnexpectedStep("this credential is not for a smartcard personalization", code="workflow.type")
        # Keys and certificates must go to the confirmed card: an agent that
        # names another card (swapped mid-way) is stopped before it acts.
        card = view.context.get("token") or {}
        if token_serial is not None and card.get("confirmed") and token_serial != card.get("serial"):
            raise CardMismatch(f"this personalization is for card {card['serial']}; insert that card")
        return view

    def _execute(self, workflow_id: int, login: str, action: str, inputs: Mapping[str, Any], *,
                 read_back: bool = True) -> Any:
        """Run the agent's action; the workflow afterwards (None without ``read_back``: nobody looks at it)."""
        try:
            self.engine.act(workflow_id, action, actor=login, role=AGENT_ROLE, inputs=dict(inputs))
        except ActionNotAvailable as exc:
            # For the agent, an action the state does not offer is a task it was not given.
            raise UnexpectedStep(exc.message) from exc
        return self.engine.current(workflow_id) if read_back else None

    def report_token(self, agent: AgentCredential, serial: str, card: Mapping[str, Any],
                     capabilities: CardCapabilities | None = None) -> AgentAnswer:
        """Bind the card to the personalization; ``awaiting_confirmation`` or ``confirmed``.

        ``capabilities`` (the card's profile and key slots, read from the
        report by the web layer) decide which certificate types it gets.

        ``confirmed`` only when both the card and this agent's phrase are.  The
        same card from a newer agent run is reported again, so that the page
        asks about the newer agent's phrase.
        """
        view = self._view(agent.workflow_id)
        token = view.context.get("token")
        if token is not None and token.get("confirmed"):
            if token["serial"] != serial:
                raise CardMismatch(f"this personalization is for card {token['serial']}; insert that card")
            return AgentAnswer("confirmed" if agent.confirmed else "awaiting_confirmation",
                               self._next_task(agent, view))
        if token is not None and token["serial"] == serial and token.get("agent") == agent.credential_id:
            return AgentAnswer("awaiting_confirmation", self._next_task(agent, view))
        if view.state not in ("WAIT_FOR_TOKEN", "CONFIRM_TOKEN"):
            raise UnexpectedStep(f"the personalization is past the card step ({view.state})")
        inputs: dict[str, Any] = {"serial": serial, "agent": agent.credential_id}
        for field_name, key in CARD_FIELDS:
            if isinstance(card.get(key), str) and card[key]:
                inputs[field_name] = card[key].strip()
        capabilities = capabilities or CardCapabilities()
        inputs["card_profile"] = capabilities.profile
        if capabilities.slots:
            inputs["key_slots"] = json.dumps(capabilities.as_api()["key_slots"], separators=(",", ":"))
        try:
            self._execute(agent.workflow_id, agent.login, "report_token", inputs, read_back=False)
        except OpenXPKIError:
            # The same card reported twice at once: the other report won the lock.
            view = self._view(agent.workflow_id)
            token = view.context.get("token")
            if token is None or token["serial"] != serial:
                raise
            return AgentAnswer("confirmed" if token["confirmed"] else "awaiting_confirmation",
                               self._next_task(agent, view))
        # report_token's one way on is CONFIRM_TOKEN (the workflow definition),
        # where the agent waits for the user: its task is known without reading it back.
        return AgentAnswer("awaiting_confirmation", dict(CONFIRM_CARD_TASK))

    def task(self, agent: AgentCredential) -> dict[str, Any]:
        return self._next_task(agent, self._view(agent.workflow_id))

    def _next_task(self, agent: AgentCredential, view: Any) -> dict[str, Any]:
        """The agent's task in ``view`` (its issuance children are read only while it issues)."""
        if not agent.confirmed and view.state not in ("LOOKUP", "WAIT_FOR_TOKEN", "CONFIRM_TOKEN", *FINAL_FAILURE):
            # A new code after the card was confirmed: the new agent waits for the user, like the first.
            return {"task": "wait", "retry_after": 1,
                    "reason": f"confirm this agent in your browser (phrase \"{agent.phrase}\")"}
        children = self.engine.children(view.id) if view.state == "ISSUING" else ()
        return agent_task(view, children)

    def submit_csr(self, agent: AgentCredential, *, cert_type: str, key_id: str, csr_pem: str,
                   token_serial: str | None, attestation: Mapping[str, str] | None = None) -> CsrAnswer:
        self._confirmed(agent)
        workflow_id, login = agent.workflow_id, agent.login
        view = self._view(workflow_id, token_serial)
        earlier = _same_csr(view, cert_type, csr_pem)
        if earlier is None:
            inputs: dict[str, Any] = {"cert_type": cert_type, "key_id": key_id, "csr": csr_pem}
            if attestation:
                inputs["attestation"] = dict(attestation)
            try:
                view = self._execute(workflow_id, login, "submit_csr", inputs)
            except OpenXPKIError:
                # The check above ran before the workflow's lock: an identical
                # post (the agent's retry) may have been accepted meanwhile.
                # Then this is a repeat, answered like one; else the refusal stands.
                view = self._view(workflow_id, token_serial)
                if _same_csr(view, cert_type, csr_pem) is None:
                    raise
            earlier = _same_csr(view, cert_type, csr_pem)
        if earlier is None:  # the CSR was accepted but the workflow moved on without it: failed
            task = agent_task(view)
            # The agent is told why with the refusal's own code (attestation.chain …), not a generic one.
            raise IssuanceFailed(task["message"], code=task.get("code") or IssuanceFailed.code)
        if earlier["status"] == "failed":
            raise IssuanceFailed(earlier.get("reason", "the certificate was not issued"))
        # The workflow as the CSR left it (read back by execute, or just read for a repeat).
        task = self._next_task(agent, view)
        if earlier["status"] in ("issued", "installed"):
            return CsrAnswer("issued", task, serial=earlier["serial"])
        return CsrAnswer("pending", task, reason=task.get("reason", "issuing"))

    def card_unable(self, agent: AgentCredential, *, cert_type: str, code: str, reason: str,
                    token_serial: str | None) -> None:
        """The card cannot do this type's step: the workflow skips it (or fails) instead of waiting forever.

        A repeated report for a type already skipped is answered, not recorded twice.
        """
        self._confirmed(agent)
        view = self._view(agent.workflow_id, token_serial)
        for entry in view.context.get("certificates") or []:
            if entry["type"] == cert_type and entry["status"] == "skipped":
                return
        self._execute(agent.workflow_id, agent.login, "report_card_unable",
                      {"cert_type": cert_type, "code": code, "reason": reason[:500]}, read_back=False)

    def card_credentials(self, agent: AgentCredential, *, token_serial: str | None) -> CardAdminCredentials:
        """The confirmed card's admin credentials, for this personalization's confirmed agent (audited)."""
        self._confirmed(agent)
        view = self._view(agent.workflow_id, token_serial)
        secret = self.card_admin() if self.card_admin is not None else None
        refusal: OpenXPKIError | None = None
        with self.db.begin() as conn:
            try:
                return release_card_credentials(conn, secret, view, login=agent.login, token_serial=token_serial,
                                                max_releases=self.max_card_admin_releases)
            except (CardCredentialsRefused, UnexpectedStep) as exc:
                refusal = exc  # commit: the refusal is audited
        assert refusal is not None
        raise refusal

    def escrowed_key(self, agent: AgentCredential, *, cert_type: str, agent_key: str,
                     token_serial: str | None, rsa_proof: str = "rsa-oaep") -> dict[str, Any]:
        """The current escrowed key, sealed for this agent run (openxpki_py.escrow.personalization)."""
        from ..escrow.personalization import deliver_to_agent, escrow_of

        self._confirmed(agent)
        if token_serial is None:
            raise UnexpectedStep("name the card (token_serial) the escrowed key is for", code="token.mismatch")
        view = self._view(agent.workflow_id, token_serial)
        with self.db.begin() as conn:
            return deliver_to_agent(view, escrow_of(self), conn, login=agent.login, cert_type=cert_type,
                                    agent_key=agent_key, rsa_proof=rsa_proof)

    def receipt(self, agent: AgentCredential, *, cert_type: str, serial: str, token_serial: str | None,
                key_proof: str | None = None) -> AgentAnswer:
        """The certificate is on the card; a repeated receipt is answered, not recorded twice."""
        self._confirmed(agent)
        workflow_id, login = agent.workflow_id, agent.login
        view = self._view(workflow_id, token_serial)
        if _installed(view, serial):
            return AgentAnswer("installed", self._next_task(agent, view))
        inputs = {"cert_type": cert_type, "certificate_serial": serial}
        if key_proof is not None:
            inputs["key_proof"] = key_proof
        try:
            # Read back: the next task (the next key, or done) replaces the agent's GET /task.
            view = self._execute(workflow_id, login, "confirm_install", inputs)
        except OpenXPKIError:
            # An identical receipt may have been recorded after the check above
            # (it ran outside the workflow's lock): that is a repeat, not a refusal.
            view = self._view(workflow_id, token_serial)
            if not _installed(view, serial):
                raise
        return AgentAnswer("installed", self._next_task(agent, view))


def _same_csr(view: Any, cert_type: str, csr_pem: str) -> dict[str, Any] | None:
    """The entry this very request was already accepted for (a repeated post), if any.

    The same key posted for another certificate type is not a repeat: the
    workflow refuses it (``csr.key_reused``).
    """
    try:
        fingerprint = public_key_fingerprint(x509.load_pem_x509_csr(csr_pem.encode("ascii")).public_key())
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm, x509.InvalidVersion):
        # Not parseable (a bad version too), or a key algorithm or curve
        # cryptography does not know: never accepted before, and the workflow's validators explain why.
        return None
    entries = view.context.get("certificates") or []
    return next((e for e in entries if e.get("csr_sha256") == fingerprint and e["type"] == cert_type), None)


def _installed(view: Any, serial: str) -> bool:
    """The card's receipt for certificate ``serial`` was recorded already."""
    return any(entry.get("serial") == serial.lower() and entry["status"] == "installed"
               for entry in view.context.get("certificates") or [])
