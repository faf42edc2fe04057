"""The gRPC channel a client opens: to one server, or balanced over every address of a name.

A Kubernetes Service's cluster IP is one address, and HTTP/2 keeps one connection to it: every call
of a client goes to the one Triton pod behind that connection, and replicas the autoscaler adds get
nothing. Balanced (``balance=True``, or by default when the name resolves to several addresses, as a
headless Service's name does: one per ready pod), the channel

- sends each call to the next ready address in turn (gRPC's ``round_robin``);
- resolves the name again when a connection goes away -- a pod that stops or restarts, or a server
  that closes connections past an age (``smartedit serve --max-connection-age``) so that clients
  find pods added since -- and drops addresses that are gone;
- sends a unary call that failed with UNAVAILABLE again, to the next address (at most
  ``RETRY_ATTEMPTS`` attempts in all, about 3 s, and fewer while most calls fail: retry throttling): a
  server shutting down or at capacity refused it before doing any work; a model process that died
  under it lost the work, and the server asks for it again; a connection that a stopping server
  closed before the call was answered. Each attempt carries the call's whole timeout to the server;
- leaves out for a while an address nearly all of whose calls fail (outlier detection: a server
  refusing everything as it drains), never more than half of them.

A stream's refusal arrives as a message, which gRPC does not retry: the SDK's streams send an edit
refused before its first event again themselves (``stream_backoff_s``), on a new call, which the
channel gives to the next address.
"""

from __future__ import annotations

import ipaddress
import json
import random
import socket

from tritonclient.grpc import KeepAliveOptions

# tritonclient's own defaults (messages up to 2 GiB, its keepalive), which giving channel arguments replaces.
_MAX_MESSAGE_BYTES = 2**31 - 1
RETRY_ATTEMPTS = 5  # gRPC's most
_MAX_RETRY_BUFFER_BYTES = 256 * 1024 * 1024  # an edit's request: the photo and the mask, encoded
_SERVICE = "inference.GRPCInferenceService"  # the KServe v2 gRPC service Triton serves
_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:")  # gRPC target names that say how to resolve themselves


def _base_options() -> list[tuple[str, object]]:
    keepalive = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
    ]


def _service_config() -> str:
    return json.dumps({
        # Round robin over the addresses, each address left out for a while once most of its calls fail (a
        # server draining refuses everything, at once): retries then go to the others.
        # Every non-OK call counts as a failure to outlier detection, a client's invalid request too: only a
        # share past 90% ejects (a draining server refuses them all), for 5 s at first.
        "loadBalancingConfig": [{"outlier_detection_experimental": {
            "interval": "1s", "baseEjectionTime": "5s", "maxEjectionTime": "60s", "maxEjectionPercent": 50,
            "failurePercentageEjection": {"threshold": 90, "enforcementPercentage": 100, "minimumHosts": 2,
                                          "requestVolume": 3},
            "childPolicy": [{"round_robin": {}}],
        }}],
        # Retries stop while most calls fail (every server at capacity): a refusal is then answered at once
        # rather than sent to each server in turn.
        "retryThrottling": {"maxTokens": 20, "tokenRatio": 0.5},
        "methodConfig": [{
            "name": [{"service": _SERVICE, "method": "ModelInfer"}],
            # The attempts span about 3 s (jittered): past the outlier detection's first interval, by when a
            # server refusing everything is left out and the last attempts go to the others.
            "retryPolicy": {"maxAttempts": RETRY_ATTEMPTS, "initialBackoff": "0.2s", "maxBackoff": "2s",
                            "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
        }],
    })


def _host(url: str) -> str:
    """The host part of ``host:port``, ``[v6]:port`` or ``dns:///host:port``."""
    address = url.split("///", 1)[-1]
    if address.startswith("["):
        return address[1:address.index("]")]
    return address.rsplit(":", 1)[0] if address.count(":") == 1 else address


def resolves_to_several(url: str) -> bool:
    """Whether ``url``'s host is a name with more than one address of one family (an IP literal never is;
    nor a name with one IPv4 and one IPv6 address, ``localhost`` on many systems: the same server)."""
    if "," in url:
        return True  # gRPC's own list form: ipv4:a:port,b:port
    host = _host(url)
    try:
        ipaddress.ip_address(host)
        return False
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False  # not resolvable now: the call will say so
    return any(len({entry[4][0] for entry in found if entry[0] == family}) > 1
               for family in (socket.AF_INET, socket.AF_INET6))


def channel(url: str, balance: bool | None) -> tuple[str, list[tuple[str, object]] | None]:
    """The target and channel arguments for ``url``: (``url``, None) for one server (tritonclient's own
    defaults), else a balanced channel (see the module docstring). ``balance`` None: balanced when the
    name resolves to several addresses now."""
    if balance is None:
        balance = resolves_to_several(url)
    if not balance:
        return url, None
    target = url if url.startswith(_SCHEMES) else f"dns:///{url}"
    options = _base_options() + [
        ("grpc.service_config", _service_config()),
        ("grpc.enable_retries", 1),
        # gRPC keeps a call's request for a retry only up to this size (256 KiB by default: a photo is more;
        # past it the call is not retried at all).
        ("grpc.per_rpc_retry_buffer_size", _MAX_RETRY_BUFFER_BYTES),
        # Resolve again at most this often when connections go away (gRPC's default waits 30 s).
        ("grpc.dns_min_time_between_resolutions_ms", 2000),
    ]
    return target, options


def stream_backoff_s(attempt: int) -> float:
    """How long a stream waits before it sends a refused edit again (``attempt`` 0, 1, ...): the unary
    retry policy's schedule, jittered as gRPC jitters it."""
    return random.uniform(0, min(0.2 * 2**attempt, 2.0))

