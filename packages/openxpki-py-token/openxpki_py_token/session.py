"""The agent's session with the server: a one-time code traded for a bearer credential bound to one workflow.

Shared by ``enroll`` and ``unblock``: the saved session of an interrupted
run is used while valid (the code works once); otherwise the code is traded,
with this run's pairing key, for a credential and the pairing phrase the
user compares with the web page's (:mod:`.pairing`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .api_client import ApiClient
from .errors import ProtocolError, ServerRefused, ServerUnreachable
from .pairing import NONCE_BYTES, decode_b64, new_agent_key, pairing_phrase, public_key_text
from .progress import Progress
from .state import EnrollmentSession, StateStore

log = logging.getLogger("openxpki_py_token")


def open_session(api: ApiClient, store: StateStore, progress: Progress, code: str, state_key: str, *,
                 what: str = "personalization") -> EnrollmentSession:
    """The run's session: the saved one for this code while valid, else the code traded for a new one.

    ``what`` names the workflow in the progress lines ("personalization", "PIN unblock").
    """
    server = api.base_url
    saved = store.load(server, state_key)
    if saved is not None and saved.is_valid():
        progress.step(f"continuing the {what} for {saved.user} (workflow {saved.workflow_id})")
        show_phrase(progress, saved.phrase)
        api.access_token = saved.access_token
        return saved
    # This run's pairing key: the page shows the phrase derived from it,
    # and the user confirms there that it is the one printed here.
    pairing_key = new_agent_key()
    try:
        # Not idempotent: tried again only when the server certainly did not
        # handle it (see ApiClient.call); a lost answer would burn the code.
        answer = api.post("enroll", {"code": code, "agent_key": public_key_text(pairing_key)},
                          idempotent=False)
    except ServerUnreachable as exc:
        raise ServerUnreachable(f"{exc.message} (if the next run says the code was used, reload "
                                f"the {what} page for a new code)", code=exc.code) from None
    except ServerRefused as exc:
        if exc.code == "enroll.code_used" and saved is not None:
            raise ServerRefused(
                f"{exc.message} (an earlier run used it, and its session has expired)",
                code=exc.code, status=exc.status) from None
        raise
    body = answer.body
    token_type = answer_text(body, "token_type", "enroll")
    if token_type.lower() != "bearer":
        raise ProtocolError(f"the server issued a {token_type!r} token; this agent speaks Bearer")
    workflow_id = answer_integer(body, "workflow_id", "enroll")
    try:
        nonce = decode_b64(answer_text(body, "pairing_nonce", "enroll"), size=NONCE_BYTES)
    except ValueError:
        raise ProtocolError("the server's pairing_nonce is not 16 bytes of base64url") from None
    # Computed here, from this run's own key: the words printed are never just the server's.
    phrase = pairing_phrase(workflow_id, nonce, pairing_key.public_key())
    if body.get("pairing_phrase") not in (None, phrase):
        raise ProtocolError("the server's pairing phrase is not the one derived from this agent's key; "
                            "stopped (is something between you and the server?)")
    session = EnrollmentSession(
        server=server,
        workflow_id=workflow_id,
        user=answer_text(body, "user", "enroll"),
        access_token=answer_text(body, "access_token", "enroll"),
        expires_at=time.time() + answer_integer(body, "expires_in", "enroll"),
        phrase=phrase,
    )
    store.save(state_key, session)
    api.access_token = session.access_token
    log.info("enrolled as %s, workflow %d", session.user, session.workflow_id)
    show_phrase(progress, phrase)
    return session


def show_phrase(progress: Progress, phrase: str) -> None:
    if phrase:
        progress.step(f"pairing phrase: {phrase}")
        progress.step("  confirm on the web page only if it shows these same words")


def answer_text(body: dict[str, Any], name: str, where: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"the server's {where} answer has no {name!r}")
    return value


def answer_integer(body: dict[str, Any], name: str, where: str) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"the server's {where} answer has no whole number {name!r}")
    return value
