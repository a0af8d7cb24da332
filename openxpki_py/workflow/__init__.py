"""The workflow engine: YAML definitions, SQL-persisted state, worker.

Start with :mod:`.definition` (what a definition means), then
``defs/certificate_issuance.yaml`` (a real one), then :mod:`.engine`.
"""

from __future__ import annotations

from .config import WorkflowConfig, parse_workflow_config
from .context import ActivityContext
from .definition import ActionSpec, DefinitionRegistry, FieldSpec, WorkflowDefinition
from .engine import WorkflowEngine
from .loader import load_definitions
from .registry import Registry, default_registry
from .view import HistoryEntry, WorkflowSummary, WorkflowView

__all__ = [
    "ActionSpec",
    "ActivityContext",
    "DefinitionRegistry",
    "FieldSpec",
    "HistoryEntry",
    "Registry",
    "WorkflowConfig",
    "WorkflowDefinition",
    "WorkflowEngine",
    "WorkflowSummary",
    "WorkflowView",
    "default_registry",
    "load_definitions",
    "parse_workflow_config",
]
