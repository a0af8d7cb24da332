"""All SQL tables, as SQLAlchemy Core metadata.

The DDL files in ``sql/`` are generated from this module
(``openxpki-py db ddl``); a test fails when they are stale.  Column names
avoid words that Oracle reserves (``number``, ``user``, ``session`` …).
Booleans and JSON are avoided as native types so that Oracle 19c works.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from .types import JSONText, UTCDateTime

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

Id = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER only


def _id() -> Column[int]:
    # IDENTITY: PostgreSQL and Oracle 12c+ generate ids without sequences to manage.
    return Column("id", Id, Identity(), primary_key=True)

# --- CA and certificates -----------------------------------------------------

ca_certificate = Table(
    "ca_certificate",
    metadata,
    _id(),
    Column("subject", String(1024), nullable=False),
    Column("key_identifier", String(128), nullable=False, unique=True),  # SKI, hex
    Column("not_before", UTCDateTime, nullable=False),
    Column("not_after", UTCDateTime, nullable=False),
    Column("status", String(16), nullable=False),  # pending (CSR out) | active | retired
    Column("csr_der", LargeBinary),  # when the root is external: our CSR
    Column("der", LargeBinary),  # null until imported when the root is external
    Column("created_at", UTCDateTime, nullable=False),
)

token = Table(
    "token",
    metadata,
    _id(),
    Column("serial", String(128), nullable=False, unique=True),
    Column("model", String(128)),
    Column("manufacturer", String(128)),
    Column("owner", String(256), index=True),
    Column("status", String(16), nullable=False),  # a state of console/lifecycle.yaml: active | suspended | …
    Column("first_seen", UTCDateTime, nullable=False),
    Column("last_seen", UTCDateTime, nullable=False),
    # permanent | temporary: a temporary card stands in for a forgotten one, with short-lived certificates
    Column("kind", String(16), nullable=False, default="permanent"),
    Column("stands_in_for", Id, ForeignKey("token.id")),  # a temporary card's permanent card
    # a temporary card's end, fixed when it is registered: its certificates never outlive it
    Column("temporary_until", UTCDateTime),
)

csr = Table(
    "csr",
    metadata,
    _id(),
    Column("public_key_sha256", String(64), nullable=False, index=True),
    Column("profile", String(64), nullable=False),
    Column("requester", String(256), nullable=False),
    Column("workflow_id", BigInteger),
    Column("der", LargeBinary, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
)

certificate = Table(
    "certificate",
    metadata,
    _id(),
    Column("serial", String(64), nullable=False),  # lowercase hex, no leading zeros
    Column("issuer", String(1024), nullable=False),
    Column("issuer_key_identifier", String(128), nullable=False),
    Column("subject", String(1024), nullable=False),
    Column("status", String(16), nullable=False),  # valid | revoked
    Column("not_before", UTCDateTime, nullable=False),
    Column("not_after", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime),
    Column("revocation_reason", String(32)),
    Column("owner", String(256), index=True),
    Column("token_id", Id, ForeignKey("token.id")),
    Column("profile", String(64), nullable=False),
    Column("public_key_sha256", String(64), nullable=False, unique=True),
    Column("csr_id", Id, ForeignKey("csr.id")),
    Column("workflow_id", BigInteger),
    # Where the key was made, as far as anyone can tell: "card-unattested" (the
    # agent's word only), later "card-attested"; NULL for an operator's CSR.
    Column("key_origin", String(32)),
    Column("der", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("issuer_key_identifier", "serial", name="uq_certificate_issuer_serial"),
)
Index("ix_certificate_status_not_after", certificate.c.status, certificate.c.not_after)
# The operators' console finds a certificate by serial alone and a card's certificates by card.
Index("ix_certificate_serial", certificate.c.serial)
Index("ix_certificate_token_id", certificate.c.token_id)

crl = Table(
    "crl",
    metadata,
    _id(),
    Column("issuer_key_identifier", String(128), nullable=False),
    Column("crl_number", BigInteger, nullable=False),
    Column("this_update", UTCDateTime, nullable=False),
    Column("next_update", UTCDateTime, nullable=False),
    Column("revoked_count", Integer, nullable=False),
    Column("der", LargeBinary, nullable=False),
    UniqueConstraint("issuer_key_identifier", "crl_number", name="uq_crl_issuer_number"),
)

# --- audit ---------------------------------------------------------------------

def _audit_columns() -> list[Column[Any]]:
    """What an audit row says: the columns the chain hashes (audit/chain.py HASHED_COLUMNS), for both tables."""
    return [
        Column("logged_at", UTCDateTime, nullable=False),
        Column("actor", String(256), nullable=False),
        Column("role_name", String(64)),
        Column("event", String(64), nullable=False),  # e.g. cert.issue, auth.role.refused
        Column("outcome", String(16), nullable=False),  # ok | refused | failed
        Column("target", String(256)),  # what it was about: serial, workflow id …
        Column("details", JSONText),
    ]


audit_log = Table(
    "audit_log",
    metadata,
    _id(),
    *_audit_columns(),
    Column("prev_hash", String(64), nullable=False, unique=True),
    Column("entry_hash", String(64), nullable=False, unique=True),
)
# The console's audit search: who, what, about what, when.
Index("ix_audit_log_actor", audit_log.c.actor, audit_log.c.id)
Index("ix_audit_log_event", audit_log.c.event, audit_log.c.id)
Index("ix_audit_log_target", audit_log.c.target, audit_log.c.id)
Index("ix_audit_log_logged_at", audit_log.c.logged_at)

# Audit rows committed with their action but not chained yet (PostgreSQL and
# Oracle; openxpki_py/audit/pending.py).  Appending there takes no lock, so
# audited transactions commit in parallel; a short transaction per batch
# then moves them into audit_log in id order under the chain's lock.  Exactly
# the columns the chain hashes, nothing else.
audit_pending = Table("audit_pending", metadata, _id(), *_audit_columns())

# Signed checkpoints of the audit chain's head (openxpki_py/audit/checkpoint.py).
# Every column is covered by the signature; the same records are appended to
# a file outside the database.  No foreign key to audit_log: a checkpoint
# must survive the deletion of the row it names, to prove that deletion.
audit_checkpoint = Table(
    "audit_checkpoint",
    metadata,
    _id(),
    Column("seq", Id, nullable=False, unique=True),  # 1, 2, 3 … without gaps
    Column("created_at", UTCDateTime, nullable=False),
    Column("node", String(256), nullable=False),  # host that wrote it (and its file)
    Column("row_id", Id, nullable=False),  # last audit_log.id covered; 0 for an empty chain
    Column("entry_hash", String(64), nullable=False),  # that row's entry_hash
    Column("row_count", Id, nullable=False),  # audit rows with id <= row_id
    Column("prev_checkpoint", String(64), nullable=False, unique=True),  # digest of checkpoint seq-1
    Column("key_id", String(64), nullable=False),  # SHA-256 of the signing key's SubjectPublicKeyInfo
    Column("signature", LargeBinary, nullable=False),
)

# --- workflow engine (see DESIGN §4) -----------------------------------------

workflow = Table(
    "workflow",
    metadata,
    _id(),
    Column("wf_type", String(64), nullable=False),
    Column("state", String(64), nullable=False),
    Column("proc_state", String(16), nullable=False),  # running|manual|waiting|retry|exception|finished|failed
    Column("creator", String(256), nullable=False),
    Column("creator_role", String(64), nullable=False),
    Column("parent_id", Id, ForeignKey("workflow.id"), index=True),
    Column("wake_at", UTCDateTime),
    Column("retry_count", Integer, nullable=False, default=0),
    Column("version", Integer, nullable=False, default=0),
    Column("claimed_by", String(128)),
    Column("lease_until", UTCDateTime),
    Column("last_error", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)
Index("ix_workflow_due", workflow.c.proc_state, workflow.c.wake_at)
Index("ix_workflow_type_state", workflow.c.wf_type, workflow.c.state)
# The console: a person's workflows, and workflows by state or processing state alone.
Index("ix_workflow_creator", workflow.c.creator, workflow.c.id)
Index("ix_workflow_state", workflow.c.state, workflow.c.id)
Index("ix_workflow_proc_state", workflow.c.proc_state, workflow.c.id)

workflow_context = Table(
    "workflow_context",
    metadata,
    Column("workflow_id", Id, ForeignKey("workflow.id"), primary_key=True),
    Column("ctx_key", String(128), primary_key=True),
    Column("ctx_value", JSONText),
)

workflow_attribute = Table(
    "workflow_attribute",
    metadata,
    Column("workflow_id", Id, ForeignKey("workflow.id"), primary_key=True),
    Column("attr_key", String(64), primary_key=True),
    Column("attr_value", String(256), primary_key=True),  # multi-valued: e.g. two certificate serials
)
Index("ix_workflow_attribute_lookup", workflow_attribute.c.attr_key, workflow_attribute.c.attr_value)

# At most one open workflow of a type per key (one personalization per
# person): the primary key refuses a second, in the start transaction; the
# row goes when the workflow reaches a final state.
workflow_singleton = Table(
    "workflow_singleton",
    metadata,
    Column("wf_type", String(64), primary_key=True),
    Column("singleton_key", String(256), primary_key=True),
    Column("workflow_id", Id, ForeignKey("workflow.id"), nullable=False, unique=True),
)

workflow_history = Table(
    "workflow_history",
    metadata,
    _id(),
    Column("workflow_id", Id, ForeignKey("workflow.id"), nullable=False, index=True),
    Column("action", String(64), nullable=False),
    Column("from_state", String(64), nullable=False),
    Column("to_state", String(64), nullable=False),
    Column("actor", String(256), nullable=False),
    Column("role_name", String(64), nullable=False),
    Column("outcome", String(16), nullable=False),  # ok | failed (the failure is kept, its effects are not)
    Column("note", Text),
    Column("logged_at", UTCDateTime, nullable=False),
)

# --- smartcard personalization: enrollment codes and agent credentials -------

enrollment_code = Table(
    "enrollment_code",
    metadata,
    _id(),
    Column("code_hash", String(64), nullable=False, unique=True),  # sha256: the code itself is never stored
    # The code's first characters: finds the code a wrong guess was aimed at,
    # so that wrong guesses count against that code (and end it), not only
    # against the guesser's address.
    Column("selector", String(8), nullable=False, index=True),
    Column("failures", Integer, nullable=False, default=0),
    Column("workflow_id", Id, ForeignKey("workflow.id"), nullable=False, index=True),
    Column("login", String(256), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("used_at", UTCDateTime),
)

agent_credential = Table(
    "agent_credential",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("code_id", Id, ForeignKey("enrollment_code.id"), nullable=False, unique=True),
    Column("workflow_id", Id, ForeignKey("workflow.id"), nullable=False, index=True),
    Column("login", String(256), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    # The agent run's ephemeral public key and the pairing phrase derived from
    # it (openxpki_py_token.pairing); confirmed_at: the user confirmed the
    # phrase in the browser.  Until then the credential may report a card, never act on it.
    Column("agent_key", String(64), nullable=False),
    Column("phrase", String(128), nullable=False),
    Column("confirmed_at", UTCDateTime),
)

enrollment_failure = Table(
    "enrollment_failure",
    metadata,
    _id(),
    Column("client", String(64), nullable=False),
    Column("failed_at", UTCDateTime, nullable=False),
)
Index("ix_enrollment_failure_client", enrollment_failure.c.client, enrollment_failure.c.failed_at)

# --- web sessions ------------------------------------------------------------

web_session = Table(
    "web_session",
    metadata,
    Column("id_hash", String(64), primary_key=True),  # sha256 of the cookie value
    Column("login", String(256), nullable=False),
    Column("role_name", String(64)),
    Column("csrf_token", String(64), nullable=False),
    Column("data", JSONText),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_seen", UTCDateTime, nullable=False),
)

# --- key escrow (openxpki_py.escrow) -------------------------------------------

# One row per escrowed key pair: the key history of a person.  The private
# key is here only as a blob sealed by the key-recovery key inside the HSM
# (openxpki_py.escrow.custody); the plaintext is never stored.
key_escrow = Table(
    "key_escrow",
    metadata,
    _id(),
    Column("owner", String(256), nullable=False, index=True),
    Column("cert_type", String(64), nullable=False),
    Column("profile", String(64), nullable=False),
    Column("key_spec", String(16), nullable=False),  # rsa-2048 …
    Column("public_key_sha256", String(64), nullable=False, unique=True),
    Column("public_key_der", LargeBinary, nullable=False),  # SubjectPublicKeyInfo
    Column("wrap_algorithm", String(32), nullable=False),
    Column("wrap_key_label", String(128), nullable=False),
    Column("wrap_nonce", LargeBinary, nullable=False),
    Column("wrapped_key", LargeBinary, nullable=False),
    Column("status", String(16), nullable=False),  # escrowed | issued | installed | recovered | abandoned
    Column("workflow_id", BigInteger),  # the personalization that made it
    Column("certificate_serial", String(64)),
    Column("token_id", Id, ForeignKey("token.id")),
    # SHA-256 of the last challenge sent with a delivery: the receipt proves the card decrypts it.
    Column("challenge_sha256", LargeBinary),
    Column("deliveries", Integer, nullable=False, default=0),
    Column("created_at", UTCDateTime, nullable=False),
    Column("installed_at", UTCDateTime),
    Column("recovered_at", UTCDateTime),
)
