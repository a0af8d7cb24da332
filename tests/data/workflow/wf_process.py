"""A separate process for the concurrency and crash tests.

    python wf_process.py execute URL WF_ID ACTION ACTOR VERSION START_AT
        wait until START_AT (epoch seconds), run the manual action as an
        RA Operator; print ``ok`` or the error code.
    python wf_process.py worker URL LEASE_SECONDS POLL_SECONDS
        run a worker (test definitions) until SIGTERM.
    python wf_process.py instance-worker CONFIG LEASE_SECONDS POLL_SECONDS
        a worker for a whole instance (CA in SoftHSM), test definitions on
        top of the shipped ones, until SIGTERM.
    python wf_process.py drain URL START_AT
        from START_AT on, run worker rounds until two in a row find nothing due.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2]))  # tests/, for data.workflow

from data.workflow.activities_for_tests import load_test_definitions  # noqa: E402

from openxpki_py.db.engine import open_engine  # noqa: E402
from openxpki_py.errors import OpenXPKIError  # noqa: E402
from openxpki_py.workflow import WorkflowConfig, WorkflowEngine  # noqa: E402
from openxpki_py.workflow.worker import Worker  # noqa: E402


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    command, url = argv[0], argv[1]
    if command == "instance-worker":
        return instance_worker(Path(url), lease=int(argv[2]), poll=float(argv[3]))
    db = open_engine(url)
    try:
        if command == "execute":
            wf_id, action, actor, version, start_at = int(argv[2]), argv[3], argv[4], int(argv[5]), float(argv[6])
            engine = WorkflowEngine(db, load_test_definitions())
            time.sleep(max(0.0, start_at - time.time()))
            try:
                engine.execute(wf_id, action, actor=actor, role="RA Operator", expected_version=version)
            except OpenXPKIError as exc:
                print(exc.code, flush=True)
                return 3
            print("ok", flush=True)
            return 0
        if command == "worker":
            config = WorkflowConfig(lease_seconds=int(argv[2]), poll_interval=float(argv[3]))
            worker = Worker(WorkflowEngine(db, load_test_definitions(), config=config))
            worker.run()
            return 0
        if command == "drain":
            worker = Worker(WorkflowEngine(db, load_test_definitions()), batch_size=1)
            time.sleep(max(0.0, float(argv[2]) - time.time()))
            idle = 0
            while idle < 2:
                idle = idle + 1 if worker.run_once() == 0 else 0
            return 0
        raise SystemExit(f"unknown command {command}")
    finally:
        db.dispose()


def instance_worker(config_path: Path, *, lease: int, poll: float) -> int:
    from openxpki_py.config import load_config
    from openxpki_py.services import Services

    services = Services(load_config(config_path))
    try:
        config = WorkflowConfig(lease_seconds=lease, poll_interval=poll)
        engine = WorkflowEngine(services.db, load_test_definitions(include_shipped=True), services, config=config)
        Worker(engine).run()
    finally:
        services.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
