"""Find people, cards, certificates and workflows; the facts shown on their pages.

Every query is driven by an indexed column (schema.py names the index per
search key) and paginated with ``LIMIT`` + 1, so a page costs the same at a
thousand certificates as at a million.  Names and mail addresses are the
directory's: the SQL store knows logins only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sqlalchemy import or_, select
from sqlalchemy.engine import Connection, Engine, RowMapping

from ..audit.pending import chain_pending
from ..db.schema import audit_log, certificate, token, workflow, workflow_attribute
from ..errors import DirectoryError, NotFound

if TYPE_CHECKING:
    from ..directory.base import Directory, DirectoryUser

PAGE_SIZE = 25
MAX_PAGE = 10_000  # deeper than any operator reads; bounds OFFSET
_T = TypeVar("_T")


@dataclass(frozen=True)
class Page(Generic[_T]):
    items: Sequence[_T]
    number: int  # 1-based
    has_next: bool

    @property
    def has_previous(self) -> bool:
        return self.number > 1


def page_number(text: str | None) -> int:
    try:
        number = int(text or "1")
    except ValueError:
        return 1
    return min(max(number, 1), MAX_PAGE)


def paged(conn: Connection, query: Any, number: int, size: int = PAGE_SIZE) -> Page[RowMapping]:
    rows = conn.execute(query.limit(size + 1).offset((number - 1) * size)).mappings().all()
    return Page(rows[:size], number, len(rows) > size)


# --- what the search box understands -------------------------------------------------

KINDS = ("person", "card", "certificate", "workflow")


@dataclass(frozen=True)
class PersonHit:
    login: str
    name: str
    mail: str
    in_directory: bool


def find_people(db: Engine, directory: Directory | None, text: str, *, limit: int = PAGE_SIZE) -> list[PersonHit]:
    """The directory's matches (login, name, mail), plus a login the store knows but the directory no longer does."""
    hits: dict[str, PersonHit] = {}
    if directory is not None:
        try:
            for user in directory.find_people(text, limit=limit):
                hits[user.login] = _hit(user)
        except DirectoryError:
            pass  # the store still answers for logins; the page says the directory failed
    text = text.strip()
    if text and text not in hits:
        with db.connect() as conn:
            known = conn.execute(select(certificate.c.owner).where(certificate.c.owner == text).limit(1)).first() \
                or conn.execute(select(token.c.owner).where(token.c.owner == text).limit(1)).first() \
                or conn.execute(select(workflow.c.creator).where(workflow.c.creator == text).limit(1)).first()
        if known is not None:
            hits[text] = PersonHit(text, "", "", False)
    return list(hits.values())


def _hit(user: DirectoryUser) -> PersonHit:
    return PersonHit(user.login, user.get("cn") or "", user.get("mail") or "", True)


def person_entry(directory: Directory | None, login: str) -> DirectoryUser | None:
    if directory is None:
        return None
    try:
        return directory.find_person(login)
    except DirectoryError:
        return None


def cards_of(db: Engine, login: str) -> list[RowMapping]:
    with db.connect() as conn:
        return list(conn.execute(select(token).where(token.c.owner == login).order_by(token.c.id)).mappings())


def certificates_of(db: Engine, login: str, number: int = 1) -> Page[RowMapping]:
    query = select(*_cert_columns()).where(certificate.c.owner == login).order_by(certificate.c.id.desc())
    with db.connect() as conn:
        return paged(conn, query, number)


def workflows_of(db: Engine, login: str, number: int = 1) -> Page[RowMapping]:
    """Started by the person, or about them (search attribute ``owner``)."""
    about = select(workflow_attribute.c.workflow_id).where(workflow_attribute.c.attr_key == "owner",
                                                          workflow_attribute.c.attr_value == login)
    query = select(*_wf_columns()).where(or_(workflow.c.creator == login, workflow.c.id.in_(about))) \
        .order_by(workflow.c.id.desc())
    with db.connect() as conn:
        return paged(conn, query, number)


def find_certificate_row(db: Engine, serial: str) -> RowMapping | None:
    """The certificate with this serial (lowercase hex, whatever issuer): the search box's exact match."""
    with db.connect() as conn:
        return conn.execute(select(*_cert_columns()).where(certificate.c.serial == serial).limit(1)).mappings().first()


def find_card(db: Engine, serial: str) -> RowMapping:
    with db.connect() as conn:
        row = conn.execute(select(token).where(token.c.serial == serial)).mappings().first()
    if row is None:
        raise NotFound(f"no card with serial {serial[:128]} is registered")
    return row


def card_certificates(db: Engine, card_id: int) -> list[RowMapping]:
    with db.connect() as conn:
        return list(conn.execute(select(*_cert_columns()).where(certificate.c.token_id == card_id)
                                 .order_by(certificate.c.id.desc()).limit(200)).mappings())


def card_links(db: Engine, card: RowMapping) -> dict[str, Any]:
    """A temporary card's permanent card and its certificates' end; a permanent card's temporary cards."""
    from ..personalization import temporary

    with db.connect() as conn:
        links: dict[str, Any] = {"stand_ins": temporary.stand_ins(conn, int(card["id"]))}
        if card["kind"] == "temporary":
            links["valid_until"] = temporary.valid_until(conn, int(card["id"]))
            links["stands_in_for"] = conn.execute(select(token.c.serial).where(
                token.c.id == card["stands_in_for"])).scalar()
    return links


def card_history(db: Engine, serial: str) -> list[RowMapping]:
    """The card's audit rows (registered, status changes, released) and its workflows, newest first."""
    chain_pending(db, only_if_any=True)  # a change committed a moment ago is shown too
    with db.connect() as conn:
        audit = conn.execute(select(audit_log.c.id, audit_log.c.logged_at, audit_log.c.actor, audit_log.c.role_name,
                                    audit_log.c.event, audit_log.c.outcome, audit_log.c.details)
                             .where(audit_log.c.target == serial).order_by(audit_log.c.id.desc()).limit(200))
        return list(audit.mappings())


def card_workflows(db: Engine, serial: str) -> list[RowMapping]:
    about = select(workflow_attribute.c.workflow_id).where(workflow_attribute.c.attr_key == "token_serial",
                                                          workflow_attribute.c.attr_value == serial)
    with db.connect() as conn:
        return list(conn.execute(select(*_wf_columns()).where(workflow.c.id.in_(about))
                                 .order_by(workflow.c.id.desc()).limit(200)).mappings())


def find_workflows(db: Engine, *, state: str | None = None, proc_state: str | None = None,
                   wf_type: str | None = None, number: int = 1) -> Page[RowMapping]:
    query = select(*_wf_columns()).order_by(workflow.c.id.desc())
    if state:
        query = query.where(workflow.c.state == state)
    if proc_state:
        query = query.where(workflow.c.proc_state == proc_state)
    if wf_type:
        query = query.where(workflow.c.wf_type == wf_type)
    with db.connect() as conn:
        return paged(conn, query, number)


def _cert_columns() -> tuple[Any, ...]:
    c = certificate.c
    return (c.id, c.serial, c.subject, c.status, c.revocation_reason, c.not_before, c.not_after, c.owner,
            c.profile, c.token_id)


def _wf_columns() -> tuple[Any, ...]:
    w = workflow.c
    return (w.id, w.wf_type, w.state, w.proc_state, w.creator, w.last_error, w.created_at, w.updated_at)
