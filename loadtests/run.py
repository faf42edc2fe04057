"""Run the Locust load test headless, write CSV and HTML reports, print the latency table.

    python loadtests/run.py --host 127.0.0.1:8001 --run-time 60 --users 8 --out out/loadtest

Exit status: 0 when every request succeeded, 1 when any failed or none completed, 2 when Locust
itself could not run. Needs only the client package with its ``loadtest`` extra
(``pip install "./client[loadtest]"``), so it runs from the load-generator image too.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
AGGREGATED = "Aggregated"
COLUMNS = (("name", "name", "{}"), ("requests", "requests", "{}"), ("failures", "failures", "{}"),
           ("p50_ms", "p50 ms", "{:.0f}"), ("p95_ms", "p95 ms", "{:.0f}"), ("p99_ms", "p99 ms", "{:.0f}"),
           ("requests_per_s", "req/s", "{:.2f}"))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", required=True, help="the server's gRPC address, host:port")
    p.add_argument("--run-time", type=int, default=60, help="seconds of load (default 60)")
    p.add_argument("--users", type=int, default=8, help="most simultaneous users (default 8)")
    p.add_argument("--step-users", type=int, default=2, help="users added at each load step (default 2)")
    p.add_argument("--step-seconds", type=float, default=15.0, help="seconds between load steps (default 15)")
    p.add_argument("--workload", default="tiny", choices=("tiny", "sd15"),
                   help="request mix: tiny (embedded CPU model) or sd15 (512 px model on a GPU)")
    p.add_argument("--request-timeout", type=float, default=300.0, help="per-edit timeout, seconds")
    p.add_argument("--grpc-ssl", action="store_true", help="TLS to the gRPC endpoint (e.g. an Ingress on 443)")
    p.add_argument("--out", type=Path, default=Path("out/loadtest"), help="folder for report_*.csv and report.html")
    return p


def locust_command(args) -> list[str]:
    prefix = args.out / "report"
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
        "--host", args.host, "--run-time", f"{args.run_time}s", "--users", str(args.users),
        "--step-users", str(args.step_users), "--step-seconds", str(args.step_seconds),
        "--workload", args.workload, "--request-timeout", str(args.request_timeout),
        # Let edits in flight when the time is up finish, so they are counted, not cut off.
        "--stop-timeout", str(int(args.request_timeout)),
        "--csv", str(prefix), "--html", str(prefix) + ".html", "--summary-json", str(prefix) + "_summary.json",
    ]
    if args.grpc_ssl:
        command.append("--grpc-ssl")
    return command


def latency_table(rows: list[dict]) -> str:
    """One line per request name, then the aggregate: count, failures, p50/p95/p99, throughput."""
    cells = [[title for _, title, _ in COLUMNS]]
    for row in rows:
        cells.append([fmt.format(row[key]) for key, _, fmt in COLUMNS])
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
             for line in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = args.out / "report_summary.json"
    summary.unlink(missing_ok=True)  # never report a previous run's numbers
    completed = subprocess.run(locust_command(args))
    if not summary.exists():
        print(f"loadtest: Locust exited with {completed.returncode} and wrote no {summary}", file=sys.stderr)
        return 2
    rows = json.loads(summary.read_text())
    total = next(row for row in rows if row["name"] == AGGREGATED)
    requests, failures = total["requests"], total["failures"]
    print()
    print(latency_table(rows))
    print()
    print(f"{requests} requests, {failures} failed, {total['requests_per_s']:.2f} req/s over "
          f"{args.run_time} s with up to {args.users} users")
    print(f"reports: {args.out / 'report_stats.csv'}, {args.out / 'report_failures.csv'}, {args.out / 'report.html'}")
    if failures:
        print(f"loadtest: {failures} of {requests} requests failed; see {args.out / 'report_failures.csv'}",
              file=sys.stderr)
        return 1
    if requests == 0:
        print("loadtest: no request completed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
