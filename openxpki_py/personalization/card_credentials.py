"""Handing a card's admin credentials to the agent that personalizes it, and to no one else.

The values come from :meth:`~openxpki_py.crypto.card_admin.CardAdminSecret.card_admin_credentials`
(derived in the HSM).  They are released only to an agent whose pairing the
user confirmed, for the card the user confirmed in the browser, while that
personalization is under way, and at most ``card_admin.max_releases`` times
per personalization (an interrupted agent asks again when rerun).  Every
release and every refusal is audited with the card's serial and the kinds
released, never the values; nothing of them is stored.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection

from ..audit import append_audit
from ..audit.pending import count_audit
from ..crypto.card_admin import CARD_KINDS, CardAdminCredentials, CardAdminSecret
from ..errors import NotFound, NotPermitted, UnexpectedStep
from ..workflow.store import lock_workflow

RELEASED = "card.admin_credentials"
#: Personalization states in which the card is confirmed and its keys are being made.
RELEASE_STATES = ("PLAN", "NEXT", "WAIT_FOR_CSR", "ISSUING", "WAIT_FOR_INSTALL")


class CardCredentialsOff(NotFound):
    """This server does not derive card admin credentials (``card_admin.enabled`` is false)."""

    code = "card.admin_credentials_off"


class CardCredentialsRefused(NotPermitted):
    """The agent may not have this card's admin credentials (now, or at all)."""

    code = "card.admin_credentials_refused"


class CardCredentialsExhausted(CardCredentialsRefused):
    """The personalization already received the card's credentials as often as allowed."""

    code = "card.admin_credentials_limit"


def releases_so_far(conn: Connection, workflow_id: int) -> int:
    """How often this workflow released a card's admin credentials (the audit trail is the count).

    Call :func:`lock_releases` first when the count decides a release.
    """
    return count_audit(conn, event=RELEASED, target=f"workflow:{workflow_id}")


def lock_releases(conn: Connection, workflow_id: int) -> str:
    """Until ``conn`` commits, nobody else counts or records this workflow's releases; its state as of now.

    Two requests at once must not both count the same releases and both
    release once more.  The workflow's row is the lock (FOR UPDATE); SQLite
    needs none, its write transactions run one at a time.  The state comes
    from that row, read under the lock: the caller's view was read before,
    and the workflow may have been cancelled or failed since.
    """
    return str(lock_workflow(conn, workflow_id)["state"])


def check_release(view: Any, token_serial: str | None) -> tuple[str, str]:
    """``(card_type, serial)`` when the workflow may receive its card's credentials now, else a refusal."""
    token = view.context.get("token") or {}
    if not token.get("confirmed"):
        raise UnexpectedStep("the card's admin credentials are released only after you confirmed the card "
                             "in the browser", code="card.admin_credentials_unconfirmed")
    if token_serial is None or token_serial != token.get("serial"):
        raise CardCredentialsRefused(f"this personalization is for card {token.get('serial')}; its admin "
                                     "credentials are released only for that card")
    if view.state not in RELEASE_STATES:
        raise UnexpectedStep(f"the personalization is not making keys now ({view.state}); the card's admin "
                             "credentials are released only while it does", code="card.admin_credentials_state")
    card_type = str(token.get("card_profile") or "generic")
    if card_type not in CARD_KINDS:
        raise CardCredentialsRefused(f"a {card_type!r} card has no admin credentials this PKI derives",
                                     code="card.admin_credentials_unsupported")
    return card_type, str(token["serial"])


def release_card_credentials(conn: Connection, secret: CardAdminSecret | None, view: Any, *, login: str,
                             token_serial: str | None, max_releases: int) -> CardAdminCredentials:
    """The card's admin credentials for the agent of ``view`` (a confirmed personalization), audited.

    Runs in the caller's transaction: the audit row that counts the release
    commits with it, and a refusal is audited too (the caller commits it).
    """
    target = f"workflow:{view.id}"
    if secret is None:
        raise CardCredentialsOff("this server does not derive card admin credentials; use the agent's "
                                 "--management-key-file/--so-pin-file options")
    try:
        card_type, serial = check_release(view, token_serial)
        # Count and record as one: two requests cannot both be the last allowed.
        if (state := lock_releases(conn, view.id)) not in RELEASE_STATES:
            raise UnexpectedStep(f"the personalization is not making keys now ({state}); the card's admin "
                                 "credentials are released only while it does", code="card.admin_credentials_state")
        if releases_so_far(conn, view.id) >= max_releases:
            raise CardCredentialsExhausted(
                f"this personalization received the card's admin credentials {max_releases} times already; "
                "start a new personalization in the browser")
    except (CardCredentialsRefused, UnexpectedStep) as exc:
        append_audit(conn, actor=login, event=RELEASED, outcome="refused", target=target,
                     details={"card": token_serial, "code": exc.code})
        raise
    credentials = secret.card_admin_credentials(card_type, serial)
    append_audit(conn, actor=login, event=RELEASED, target=target,
                 details={"card": serial, "card_type": card_type, "kinds": sorted(credentials.values)})
    return credentials
