"""The ``workflow:`` section of the instance config."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import roles
from ..configreader import Reader
from ..errors import ConfigError
from .definition import RetryPolicy


@dataclass(frozen=True)
class RetryDefaults:
    """Used where a definition's ``retry:`` leaves a value out."""

    max_attempts: int = 5
    backoff: float = 30.0
    factor: float = 2.0
    max_backoff: float = 3600.0

    def resolve(self, policy: RetryPolicy) -> RetryDefaults:
        return RetryDefaults(
            max_attempts=policy.max_attempts if policy.max_attempts is not None else self.max_attempts,
            backoff=policy.backoff if policy.backoff is not None else self.backoff,
            factor=policy.factor if policy.factor is not None else self.factor,
            max_backoff=policy.max_backoff if policy.max_backoff is not None else self.max_backoff,
        )

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return float(min(self.backoff * self.factor ** max(attempt - 1, 0), self.max_backoff))


@dataclass(frozen=True)
class WorkflowConfig:
    definition_dirs: tuple[Path, ...] = ()
    poll_interval: float = 5.0  # seconds between a worker's looks for due workflows
    batch_size: int = 20  # due workflows claimed per look
    lease_seconds: int = 300  # a claim older than this belongs to a dead process
    max_automatic_steps: int = 100  # per request: stops a definition that loops
    operator_roles: frozenset[str] = roles.OPERATORS  # may retry / fail
    retry: RetryDefaults = field(default_factory=RetryDefaults)
    # "type.STATE" → seconds a manual or waiting state may wait (0: no deadline);
    # overrides the definition's own ``timeout: {after: …}``.
    state_timeouts: dict[str, int] = field(default_factory=dict)


def parse_workflow_config(r: Reader) -> WorkflowConfig:
    """Parse the ``workflow`` section (``r`` reads that section)."""
    worker = r.section("worker")
    retry = r.section("retry")
    cfg = WorkflowConfig(
        definition_dirs=tuple(_dir(r, d) for d in r.str_list("definitions", [])),
        poll_interval=worker.float("poll_interval", 5.0, minimum=0.05),
        batch_size=worker.int("batch_size", 20, minimum=1, maximum=1000),
        lease_seconds=r.int("lease_seconds", 300, minimum=5),
        max_automatic_steps=r.int("max_automatic_steps", 100, minimum=1),
        operator_roles=frozenset(r.str_list("operator_roles", sorted(WorkflowConfig().operator_roles))),
        retry=RetryDefaults(
            max_attempts=retry.int("max_attempts", 5, minimum=1),
            backoff=retry.float("backoff", 30.0, minimum=0),
            factor=retry.float("factor", 2.0, minimum=1),
            max_backoff=retry.float("max_backoff", 3600.0, minimum=0),
        ),
        state_timeouts=_state_timeouts(r),
    )
    worker.finish()
    retry.finish()
    r.finish()
    return cfg


def _state_timeouts(r: Reader) -> dict[str, int]:
    timeouts: dict[str, int] = {}
    raw = r.raw("state_timeouts", {})
    if not isinstance(raw, dict):
        raise r.error("state_timeouts", 'a mapping of "type.STATE" to seconds')
    for key, value in raw.items():
        if not isinstance(key, str) or key.count(".") != 1 or isinstance(value, bool) or not isinstance(value, int) \
                or value < 0:
            raise ConfigError(f"{r.key_path('state_timeouts')}.{key}: expected seconds (0: no deadline) for a "
                              '"workflow_type.STATE" key')
        timeouts[key] = value
    return timeouts


def _dir(r: Reader, value: str) -> Path:
    path = Path(value)
    if not path.is_absolute():
        path = r.base_dir / path
    if not path.is_dir():
        raise ConfigError(f"{r.key_path('definitions')}: folder {path} does not exist")
    return path
