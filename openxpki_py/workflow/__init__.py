"""The workflow engine: YAML definitions, SQL-persisted state, worker.

Generic: it knows states, actions and callables, not certificates.  The
domains (``certificates/``, ``personalization/``) bring their definitions
and callables through :class:`~.domain.WorkflowDomain`; ``openxpki_py.domains``
lists the shipped ones.  Start with :mod:`.definition` (what a definition
means), then ``certificates/workflows/certificate_issuance.yaml`` (a real
one), then :mod:`.engine`.
"""

from __future__ import annotations

from .config import WorkflowConfig, parse_workflow_config
from .context import ActivityContext
from .definition import ActionSpec, DefinitionRegistry, FieldSpec, WorkflowDefinition
from .domain import WorkflowDomain, build_registry, definition_folders
from .engine import WorkflowEngine
from .loader import load_definitions
from .registry import Registry
from .view import HistoryEntry, WorkflowState, WorkflowSummary, WorkflowView

__all__ = [
    "ActionSpec",
    "ActivityContext",
    "DefinitionRegistry",
    "FieldSpec",
    "HistoryEntry",
    "Registry",
    "WorkflowConfig",
    "WorkflowDefinition",
    "WorkflowDomain",
    "WorkflowEngine",
    "WorkflowState",
    "WorkflowSummary",
    "WorkflowView",
    "build_registry",
    "definition_folders",
    "load_definitions",
    "parse_workflow_config",
]
