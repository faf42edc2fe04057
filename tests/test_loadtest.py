"""The Locust load test, headless, against the real tritonserver: the CI smoke run."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import log_tail, serving
from smartedit.ops.server import free_port

RUNNER = Path(__file__).resolve().parent.parent / "loadtests" / "run.py"

pytestmark = pytest.mark.functional


def run_loadtest(host: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(RUNNER), "--host", host, "--out", str(out), "--request-timeout", "60", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def own_server(model_repository, tmp_path_factory):
    """A server of its own: a load test ends with calls in flight, and should the server not survive
    that, the test says so rather than every later test against the shared server failing."""
    with serving(model_repository, tmp_path_factory.mktemp("loadtest") / "tritonserver.log") as running:
        yield running


def test_smoke_run_has_no_failures_prints_the_table_and_writes_reports(own_server, tmp_path):
    completed = run_loadtest(own_server.address.grpc, tmp_path, "--run-time", "8", "--users", "2",
                             "--step-users", "1", "--step-seconds", "3")
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert own_server.process.poll() is None, log_tail(own_server)
    header = next(line for line in completed.stdout.splitlines() if line.startswith("name"))
    assert header.split() == ["name", "requests", "failures", "p50", "ms", "p95", "ms", "p99", "ms", "req/s"]
    assert " 0 failed" in completed.stdout

    summary = json.loads((tmp_path / "report_summary.json").read_text())
    total = summary[-1]
    assert total["name"] == "Aggregated" and total["requests"] > 0 and total["failures"] == 0
    assert {row["name"].split()[0] for row in summary[:-1]} <= {"edit", "removal", "background"}
    with open(tmp_path / "report_stats.csv", newline="") as handle:
        aggregated = next(row for row in csv.DictReader(handle) if row["Name"] == "Aggregated")
    assert int(aggregated["Request Count"]) == total["requests"]  # the CSV holds the final numbers
    assert (tmp_path / "report.html").stat().st_size > 0
    with open(tmp_path / "report_stats_history.csv", newline="") as handle:
        user_counts = {int(row["User Count"]) for row in csv.DictReader(handle)}
    assert {1, 2} <= user_counts  # the step shape went from one user to two


def test_a_run_whose_requests_fail_exits_nonzero_and_says_so(tmp_path):
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens here: every edit fails as unavailable
    completed = run_loadtest(nobody, tmp_path, "--run-time", "3", "--users", "1", "--step-users", "1")
    assert completed.returncode == 1
    assert "requests failed" in completed.stderr
    assert (tmp_path / "report_failures.csv").read_text().count("ServerUnavailableError") >= 1
