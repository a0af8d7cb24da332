"""The domains this project ships, in order, and the engine built from them.

The one place that knows them all: ``Services``, the CLI, the benchmarks and
the tests ask here, and pass folders and callables on to the generic
engine (:mod:`openxpki_py.workflow`), which imports no domain itself.  The
order matters twice: a later domain's definition replaces an earlier one's
of the same type, and housekeeping purges run in it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from .workflow.definition import DefinitionRegistry
from .workflow.domain import WorkflowDomain, build_registry, definition_folders
from .workflow.loader import KNOWN_ROLES
from .workflow.loader import load_definitions as load_folders
from .workflow.registry import Registry


def shipped_domains() -> tuple[WorkflowDomain, ...]:
    """Imported here, not at module level: ``openxpki-py db ddl`` needs none of them."""
    from .auth.domain import DOMAIN as AUTH
    from .certificates.domain import DOMAIN as CERTIFICATES
    from .escrow.domain import DOMAIN as ESCROW
    from .personalization.domain import DOMAIN as PERSONALIZATION
    from .unblock.domain import DOMAIN as UNBLOCK

    return (AUTH, CERTIFICATES, PERSONALIZATION, ESCROW, UNBLOCK)


def shipped_registry() -> Registry:
    """A fresh registry with the engine's and every shipped domain's callables."""
    return build_registry(shipped_domains())


def load_definitions(dirs: Iterable[str | Path] | None = None, *, registry: Registry | None = None,
                     roles: Iterable[str] = KNOWN_ROLES, include_shipped: bool = True,
                     domains: Sequence[WorkflowDomain] | None = None) -> DefinitionRegistry:
    """The shipped domains' definitions (unless ``include_shipped`` is false), then ``dirs``.

    A later folder replaces a type of an earlier one (a site's own
    issuance flow over the shipped one).  ``registry`` defaults to the
    domains' callables; tests pass a child of :func:`shipped_registry`.
    """
    domains = shipped_domains() if domains is None else domains
    folders = (definition_folders(domains) if include_shipped else []) + [Path(d) for d in (dirs or [])]
    return load_folders(folders, registry=registry or build_registry(domains), roles=roles)
