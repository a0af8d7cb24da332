"""The workflow: section of the instance config."""

from __future__ import annotations

from pathlib import Path

import pytest

from openxpki_py.configreader import Reader
from openxpki_py.errors import ConfigError
from openxpki_py.workflow import parse_workflow_config
from openxpki_py.workflow.config import RetryDefaults, WorkflowConfig
from openxpki_py.workflow.definition import RetryPolicy


def parse(data: object, base: Path = Path("/")) -> WorkflowConfig:
    return parse_workflow_config(Reader(data, "workflow", base))


def test_defaults() -> None:
    cfg = parse(None)
    assert cfg.poll_interval == 5.0 and cfg.lease_seconds == 300 and cfg.definition_dirs == ()


def test_everything(tmp_path: Path) -> None:
    (tmp_path / "defs").mkdir()
    cfg = parse({"definitions": ["defs"], "worker": {"poll_interval": 1, "batch_size": 5}, "lease_seconds": 60,
                 "operator_roles": ["CA Operator"], "retry": {"max_attempts": 3, "backoff": 2, "factor": 3}},
                tmp_path)
    assert cfg.definition_dirs == (tmp_path / "defs",)
    assert cfg.retry == RetryDefaults(max_attempts=3, backoff=2.0, factor=3.0)
    assert cfg.operator_roles == frozenset({"CA Operator"})


@pytest.mark.parametrize(("data", "message"), [
    ({"lease": 5}, "workflow.lease: unknown key"),
    ({"worker": {"poll": 1}}, "workflow.worker.poll: unknown key"),
    ({"lease_seconds": 1}, "workflow.lease_seconds: expected an integer >= 5"),
    ({"definitions": ["nowhere"]}, "workflow.definitions: folder /nowhere does not exist"),
    ({"retry": {"factor": 0.5}}, "workflow.retry.factor: expected a number >= 1"),
])
def test_errors_name_the_key(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(data)
    assert info.value.message.startswith(message)


def test_backoff_grows_and_caps() -> None:
    limits = RetryDefaults(backoff=10, factor=3, max_backoff=60).resolve(RetryPolicy(max_attempts=9))
    assert [limits.delay(n) for n in (1, 2, 3, 4)] == [10, 30, 60, 60]
    assert limits.max_attempts == 9
