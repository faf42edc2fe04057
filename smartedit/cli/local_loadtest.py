"""``smartedit loadtest``: the Locust load test against a server started here, in one command.

Exports the model (the embedded tiny one by default) if the repository is missing, starts
tritonserver on loopback, runs ``loadtests/run.py`` against it, and stops the server. Against a
server that already runs (a cluster), call ``loadtests/run.py`` directly.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from smartedit.ops.server import TritonServer

log = logging.getLogger(__name__)

# loadtests/ is beside the package in the checkout (the load generator image carries it alone).
RUNNER = Path(__file__).resolve().parents[2] / "loadtests" / "run.py"


def run_local_loadtest(args) -> int:
    from smartedit.cli.exporting import export_repository, server_address

    if not RUNNER.exists():
        raise SystemExit(f"smartedit: {RUNNER} is missing: `smartedit loadtest` runs from a checkout "
                         "(pip install -e .); elsewhere run loadtests/run.py against a server")
    repository = Path(args.repository)
    if not (repository / "inpaint").is_dir():
        repository = export_repository(args, repository)
    address = server_address(args)
    log_file = args.log_file or repository.parent / "tritonserver-loadtest.log"
    log.info("starting tritonserver on %s (log: %s)", address.grpc, log_file)
    with TritonServer(repository, address, log_file=log_file):
        command = [sys.executable, str(RUNNER), "--host", address.grpc, "--run-time", str(args.run_time),
                   "--users", str(args.users), "--step-users", str(args.step_users),
                   "--step-seconds", str(args.step_seconds), "--workload", args.workload, "--out", str(args.out)]
        return subprocess.run(command).returncode
