"""The project's own failures, as one small documented hierarchy.

Every error carries a stable ``code`` (shown to users, API clients and in the
audit log) and a one-line message that tells an operator what to fix. The CLI
maps classes to exit codes in one place (:mod:`openxpki_py.cli`), the web
layer maps them to HTTP responses in one place.  Third-party exceptions are
wrapped (``raise TokenError(...) from exc``) so callers never need to know
which library failed; the original stays reachable as ``__cause__``.

Errors travel between layers as data, never as text to be parsed again: a
refusal of single input values carries them as :class:`FieldProblem` rows
(``fields``), each with its own stable code.  Nothing here knows HTTP; the
web layer's one table (:mod:`openxpki_py.web.errors`) maps classes to
statuses.
"""

from __future__ import annotations

# The base and the token errors live in the token agent's distribution, which
# the server depends on (never the other way round): a PKCS#11 failure is the
# same class whether the HSM or a user's card raised it.
from openxpki_py_token.errors import (
    ConfigError,
    FieldProblem,
    OpenXPKIError,
    TokenError,
    TokenKeyNotFound,
    TokenModuleError,
    TokenNotFound,
    TokenPinError,
)

__all__ = [
    "AuditChainBroken", "AuthError", "CAError", "ConfigError", "DirectoryError", "FieldProblem", "NotFound",
    "NotPermitted", "OpenXPKIError", "PolicyViolation", "UnexpectedStep",
    "StorageError", "TokenError", "TokenKeyNotFound", "TokenModuleError", "TokenNotFound", "TokenPinError",
    "UnknownProfile", "WorkflowError",
]


class PolicyViolation(OpenXPKIError):
    """A request (CSR, key, profile choice) breaks the issuance policy.

    ``code`` names the validator that refused it, e.g. ``csr.key_size``.
    """

    code = "policy"


class NotPermitted(PolicyViolation):
    """The policy does not let this person make this request (another user's card, a card marked lost)."""

    code = "policy.not_permitted"


class CardNotUsable(PolicyViolation):
    """The card left ``active`` (lost, returned, suspended …) while it was being personalized: it gets nothing more."""

    code = "token.not_active"


class UnexpectedStep(PolicyViolation):
    """The request does not fit where the workflow stands now (e.g. a receipt for another certificate).

    Asking again later, or after reloading, may succeed: nothing was changed.
    """

    code = "task.unexpected"


class UnknownProfile(PolicyViolation):
    """The certificate profile asked for does not exist."""

    code = "profile.unknown"


class StorageError(OpenXPKIError):
    """The SQL store cannot be reached or refused a write."""

    code = "storage"


class NotFound(StorageError):
    """A record (certificate, workflow, token …) does not exist."""

    code = "not_found"


class CAError(OpenXPKIError):
    """The CA is not initialised, or its certificate and key do not match."""

    code = "ca"


class DirectoryError(OpenXPKIError):
    """The directory (LDAP server or LDIF file) could not answer."""

    code = "directory"


class AuthError(OpenXPKIError):
    """Identity or role could not be established."""

    code = "auth"


class WorkflowError(OpenXPKIError):
    """A workflow action was refused or failed."""

    code = "workflow"


class AuditChainBroken(OpenXPKIError):
    """The audit trail fails verification: a row or checkpoint was changed,
    deleted or forged (``openxpki-py audit verify`` names the first one)."""

    code = "audit.chain"
