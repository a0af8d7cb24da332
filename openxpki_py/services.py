"""The parts of a running instance, built lazily from its config.

One ``Services`` per process (CLI run, mod_wsgi daemon process, worker).
Nothing here holds request state: everything durable lives in the database.
Parts are created on first use so that, say, ``openxpki-py db ddl`` never
touches the HSM and a web request never opens the LDAP connection it does
not need.
"""

from __future__ import annotations

import threading
from functools import cached_property
from typing import TYPE_CHECKING, Any

from .db.engine import open_engine

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from .audit.service import AuditCheckpoints
    from .config import Config
    from .crypto.ca import CertificateAuthority
    from .workflow.domain import WorkflowDomain


class Services:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._lock = threading.Lock()

    @cached_property
    def db(self) -> Engine:
        return open_engine(self.config.database.connect_url())

    @cached_property
    def ca(self) -> CertificateAuthority:
        from .crypto.ca import CertificateAuthority

        from .personalization.policy import check_profiles

        with self._lock:
            ca = CertificateAuthority.from_config(self.config)
            check_profiles(self.config.personalization, ca.profiles.names())
            return ca

    @cached_property
    def directory(self) -> Any:
        from .directory import open_directory

        with self._lock:
            return open_directory(self.config.directory)

    @cached_property
    def domains(self) -> tuple[WorkflowDomain, ...]:
        """The shipped domains: their workflows, callables and housekeeping purges."""
        from .domains import shipped_domains

        return shipped_domains()

    @cached_property
    def workflows(self) -> Any:
        from .workflow import WorkflowEngine, build_registry, definition_folders

        with self._lock:
            return WorkflowEngine.from_config(self.db, self.config.workflow, self,
                                              folders=definition_folders(self.domains),
                                              registry=build_registry(self.domains))

    @cached_property
    def audit_checkpoints(self) -> AuditCheckpoints | None:
        """Signed checkpoints of the audit chain; None without ``audit.checkpoint``."""
        from .audit.service import AuditCheckpoints

        cfg = self.config.audit.checkpoint
        return AuditCheckpoints(self.db, cfg) if cfg is not None else None

    def close(self) -> None:
        for name in ("directory", "ca", "audit_checkpoints"):
            part = self.__dict__.pop(name, None)
            closer = getattr(getattr(part, "key_backend", part), "close", None)
            if callable(closer):
                closer()
        db = self.__dict__.pop("db", None)
        if db is not None:
            db.dispose()
