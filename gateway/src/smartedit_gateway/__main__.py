"""``smartedit-gateway``: serve the REST gateway (uvicorn) in front of a SmartEdit Triton server."""

from __future__ import annotations

import argparse

import uvicorn

from smartedit_gateway import logs
from smartedit_gateway.app import GatewaySettings, create_app


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smartedit-gateway", description=__doc__)
    p.add_argument("--triton", default="127.0.0.1:8001",
                   help="SmartEdit's gRPC address, host:port: one server, or a name with an address per server "
                        "(default 127.0.0.1:8001)")
    p.add_argument("--balance", action="store_true", default=None,
                   help="spread edits over every address --triton's name resolves to (a Kubernetes headless "
                        "Service), following servers as they come and go, and send an edit a server refused "
                        "(shutting down, at capacity) to the next (default: when the name has several addresses "
                        "at start)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds an edit may take, after which it is answered 504 and stopped (default 300)")
    p.add_argument("--max-request-mb", type=float, default=64.0, help="largest request body, MB (default 64)")
    p.add_argument("--max-concurrent-requests", type=int, default=16,
                   help="requests handled at once (each may hold its upload in memory: about 3 x --max-request-mb); "
                        "past it, 503 at once (default 16)")
    p.add_argument("--cors-origin", action="append", default=[],
                   help="a browser origin allowed to call the API (repeat; '*' for any; default: none, same origin "
                        "only)")
    p.add_argument("--ssl", action="store_true", help="speak TLS to the server (default: plain gRPC)")
    p.add_argument("--ca-bundle", default=None,
                   help="PEM of the CA(s) to trust for the server's TLS; implies --ssl (default: the system's)")
    p.add_argument("--log-level", default="info", help="debug, info, warning or error (default info)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.max_request_mb <= 0 or args.timeout <= 0 or args.max_concurrent_requests < 1:
        parser().error("--max-request-mb, --timeout and --max-concurrent-requests must be > 0")
    logs.configure(args.log_level)
    settings = GatewaySettings(triton_url=args.triton, timeout_s=args.timeout,
                               max_request_bytes=int(args.max_request_mb * 1024 * 1024),
                               cors_origins=tuple(args.cors_origin), ssl=args.ssl or bool(args.ca_bundle),
                               root_certificates=args.ca_bundle, balance=args.balance)
    # limit_concurrency bounds memory: an upload is held whole while its edit runs.
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_config=None, access_log=False,
                limit_concurrency=args.max_concurrent_requests)


if __name__ == "__main__":
    main()
