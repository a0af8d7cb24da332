"""The parts of a running instance, built lazily from its config.

One ``Services`` per process (CLI run, mod_wsgi daemon process, worker).
Nothing here holds request state: everything durable lives in the database.
Parts are created on first use so that, say, ``openxpki-py db ddl`` never
touches the HSM and a web request never opens the LDAP connection it does
not need.  Each part is built once per ``Services`` even when several
threads of a mod_wsgi daemon ask for it at the same moment.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast, overload

from .db.engine import open_engine

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from .audit.service import AuditCheckpoints
    from .config import Config
    from .crypto.card_admin import CardAdminSecret
    from .crypto.ca import CertificateAuthority
    from .crypto.ocsp import OcspResponder
    from .directory.base import Directory
    from .escrow.service import KeyEscrow
    from .workflow.context import ActivityContext
    from .workflow.domain import WorkflowDomain
    from .workflow.engine import WorkflowEngine

_T = TypeVar("_T")


class _Part(Generic[_T]):
    """A part built on first use, exactly once.

    ``functools.cached_property`` stopped locking in Python 3.12: two threads
    could each open an HSM session pool or an LDAP connection.  Here the
    first access builds under the instance's lock; later ones read the
    instance dict directly (this is a non-data descriptor, so the stored value
    shadows it).
    """

    def __init__(self, build: Callable[[Services], _T]) -> None:
        self.build = build
        self.name = build.__name__
        self.__doc__ = build.__doc__

    @overload
    def __get__(self, obj: None, owner: type[Services] | None = None) -> _Part[_T]: ...
    @overload
    def __get__(self, obj: Services, owner: type[Services] | None = None) -> _T: ...

    def __get__(self, obj: Services | None, owner: type[Services] | None = None) -> _Part[_T] | _T:
        if obj is None:
            return self
        with obj._lock:  # re-entrant: building one part may need another
            if self.name not in obj.__dict__:
                obj.__dict__[self.name] = self.build(obj)
            value: _T = obj.__dict__[self.name]
            return value


class Services:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._lock = threading.RLock()

    @_Part
    def db(self) -> Engine:
        return open_engine(self.config.database.connect_url())

    @_Part
    def ca(self) -> CertificateAuthority:
        from .crypto.ca import CertificateAuthority
        from .personalization.policy import check_profiles

        ca = CertificateAuthority.from_config(self.config)
        check_profiles(self.config.personalization, ca.profiles.names())
        return ca

    @_Part
    def ocsp(self) -> OcspResponder | None:
        """The OCSP responder; None when ``ca.ocsp.enabled`` is false."""
        from .crypto.ocsp import OcspResponder

        cfg = self.config.ca.ocsp
        return OcspResponder(self.ca, cfg, self.db) if cfg is not None else None

    @_Part
    def directory(self) -> Directory:
        from .directory import open_directory

        return open_directory(self.config.directory)

    @_Part
    def domains(self) -> tuple[WorkflowDomain, ...]:
        """The shipped domains: their workflows, callables and housekeeping purges."""
        from .domains import shipped_domains

        return shipped_domains()

    @_Part
    def workflows(self) -> WorkflowEngine:
        from .workflow import WorkflowEngine, build_registry, definition_folders

        return WorkflowEngine.from_config(self.db, self.config.workflow, self,
                                          folders=definition_folders(self.domains),
                                          registry=build_registry(self.domains))

    @_Part
    def audit_checkpoints(self) -> AuditCheckpoints | None:
        """Signed checkpoints of the audit chain; None without ``audit.checkpoint``."""
        from .audit.service import AuditCheckpoints

        cfg = self.config.audit.checkpoint
        return AuditCheckpoints(self.db, cfg) if cfg is not None else None

    @_Part
    def card_admin(self) -> CardAdminSecret | None:
        """The master secret cards' admin credentials derive from; None unless ``card_admin.enabled``."""
        from .crypto.card_admin import CardAdminSecret

        cfg = self.config.card_admin
        return CardAdminSecret.from_config(cfg) if cfg.enabled else None

    @_Part
    def escrow(self) -> KeyEscrow | None:
        """Escrowed keys in the custody of the HSM's key-recovery key; None without an escrow key."""
        from .escrow.custody import EscrowCustodian
        from .escrow.service import KeyEscrow

        cfg = self.config.escrow
        if cfg is None or cfg.key is None:
            return None
        return KeyEscrow(EscrowCustodian(cfg.key), history_keys=cfg.history_keys)

    def close(self) -> None:
        closing = ("directory", "ocsp", "ca", "audit_checkpoints", "card_admin", "escrow")
        with self._lock:
            parts: dict[str, Any] = {name: self.__dict__.pop(name, None) for name in (*closing, "db")}
        for name in closing:
            closer = getattr(getattr(parts[name], "key_backend", parts[name]), "close", None)
            if callable(closer):
                closer()
        if parts["db"] is not None:
            parts["db"].dispose()


class PkiServices(Protocol):
    """What the domains' activities may use of the instance, and nothing more.

    The workflow engine is generic and hands activities an opaque
    ``services``; :func:`pki` gives them this typed view of it.
    """

    @property
    def config(self) -> Config: ...
    @property
    def ca(self) -> CertificateAuthority: ...
    @property
    def directory(self) -> Directory: ...


def pki(ctx: ActivityContext) -> PkiServices:
    """The instance's parts an activity may use (the engine was built with a :class:`Services`)."""
    return cast("PkiServices", ctx.services)


if TYPE_CHECKING:
    def _services_are_pki_services(services: Services) -> PkiServices:
        return services  # mypy proves Services offers everything PkiServices names
