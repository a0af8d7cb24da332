"""The engine is generic: domains bring definitions, callables and purges through one seam."""

from __future__ import annotations

import ast
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from openxpki_py.domains import shipped_domains, shipped_registry
from openxpki_py.housekeeping import purge_expired
from openxpki_py.workflow import (
    ActivityContext,
    Registry,
    WorkflowConfig,
    WorkflowDomain,
    WorkflowEngine,
    build_registry,
    definition_folders,
)

WORKFLOW = Path(__file__).resolve().parents[2] / "openxpki_py" / "workflow"
PKI_PACKAGES = ("crypto", "personalization", "certificates", "directory", "domains", "agent", "unblock")


def imported_modules(path: Path) -> list[str]:
    """Every module a file directly in ``workflow/`` imports, relative ones made absolute."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            package = ["openxpki_py", "workflow"][: 3 - node.level] if node.level else []
            base = ".".join([*package, *([node.module] if node.module else [])])
            # ``from .. import errors`` imports a module too: name each one.
            found += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return found


def test_workflow_package_imports_no_domain() -> None:
    offending = [
        f"{path.name}: {module}"
        for path in sorted(WORKFLOW.glob("*.py"))
        for module in imported_modules(path)
        if module.startswith("openxpki_py.") and module.split(".")[1] in PKI_PACKAGES
    ]
    assert offending == []
    # No definitions and no subpackage (the old activities/) in the engine.
    assert [p.relative_to(WORKFLOW) for p in WORKFLOW.rglob("*") if p.suffix in (".yaml", ".yml")
            or (p.suffix == ".py" and p.parent != WORKFLOW)] == []


def test_importing_the_engine_loads_no_domain() -> None:
    code = ("import sys, openxpki_py.workflow, openxpki_py.workflow.cli, openxpki_py.housekeeping; "
            f"print(sorted(m for m in sys.modules if m.split('.')[1:2] and m.split('.')[1] in {PKI_PACKAGES!r} "
            "and m.startswith('openxpki_py.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_shipped_domains_bring_their_callables_and_folders() -> None:
    domains = {d.name: d for d in shipped_domains()}
    assert list(domains) == ["auth", "certificates", "personalization", "escrow", "unblock"]
    registry = shipped_registry()
    assert registry.get("activity", "issue_certificate").__module__ == "openxpki_py.certificates.issuance"
    assert registry.get("activity", "request_certificate").__module__ == "openxpki_py.personalization.activities"
    assert registry.get("condition", "children_succeeded").__module__ == "openxpki_py.workflow.builtins"
    assert domains["certificates"].definitions is not None
    assert sorted(p.stem for p in domains["certificates"].definitions.glob("*.yaml")) == [
        "certificate_issuance", "certificate_revocation", "crl_issuance"]
    assert registry.get("activity", "generate_escrowed_key").__module__ == "openxpki_py.escrow.personalization"
    assert registry.get("activity", "check_unblock_request").__module__ == "openxpki_py.unblock.activities"
    assert [len(d.purges) for d in domains.values()] == [1, 0, 1, 0, 0]


def test_two_domains_may_not_claim_one_name() -> None:
    def activity(ctx: ActivityContext) -> None: ...

    def register(registry: Registry) -> None:
        registry.register("activity", "issue_certificate", activity)

    with pytest.raises(ValueError, match="activity named 'issue_certificate' is already registered"):
        build_registry([*shipped_domains(), WorkflowDomain("site", register=register)])


class FakeDb:
    """``begin()`` as a context manager yielding a stand-in connection."""

    def __init__(self) -> None:
        self.conn = object()

    def begin(self) -> Any:
        db = self

        class Transaction:
            def __enter__(self) -> object:
                return db.conn

            def __exit__(self, *exc: object) -> None:
                return None

        return Transaction()


def test_housekeeping_runs_every_domains_purges() -> None:
    calls: list[tuple[str, object, object]] = []

    def purge(name: str, removed: int) -> Any:
        def run(conn: Any, services: Any, now: datetime) -> int:
            calls.append((name, conn, services))
            return removed
        return run

    services = SimpleNamespace(db=FakeDb())
    domains = [WorkflowDomain("a", purges=(purge("a1", 2), purge("a2", 0))), WorkflowDomain("b"),
               WorkflowDomain("c", purges=(purge("c1", 3),))]
    assert purge_expired(services, domains) == 5
    assert [name for name, _, _ in calls] == ["a1", "a2", "c1"]
    assert all(conn is services.db.conn and s is services for _, conn, s in calls)


def test_config_folders_come_after_the_domains(tmp_path: Path) -> None:
    """``workflow.definitions`` in the config still replaces a shipped type."""
    site = tmp_path / "site"
    site.mkdir()
    shipped = shipped_domains()
    crl = (definition_folders(shipped)[0] / "crl_issuance.yaml").read_text(encoding="utf-8")
    (site / "crl_issuance.yaml").write_text(crl.replace("description:", "description: site's own;"),
                                            encoding="utf-8")
    engine = WorkflowEngine.from_config(None, WorkflowConfig(definition_dirs=(site,)),  # type: ignore[arg-type]
                                        folders=definition_folders(shipped), registry=build_registry(shipped))
    assert engine.definitions.get("crl_issuance").source == str(site / "crl_issuance.yaml")
    assert engine.definitions.get("smartcard_personalization").source.endswith(
        "personalization/workflows/smartcard_personalization.yaml")
