"""Is a TCP port free to listen on, and if not, who holds it (where /proc lets us see).

``smartedit serve`` checks its ports before launching tritonserver: Triton itself reports a busy
port only after loading every model, and then only as an exit code.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

_LISTEN = "0A"  # the TCP state "LISTEN" in /proc/net/tcp


def port_in_use(host: str, port: int) -> bool:
    """Whether listening on ``host:port`` would fail because someone already does."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As servers do: a port left in TIME_WAIT by a stopped server is free to listen on again.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == _LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    return inodes


def port_holder(port: int) -> str | None:
    """``"pid 1234: <command line>"`` of the process listening on ``port``, or None when it cannot be
    seen (another user's process, another network namespace, no /proc)."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    sockets = {f"socket:[{inode}]" for inode in inodes}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if not _holds_one_of(pid, sockets):
            continue
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        return f"pid {pid}: {command.strip()[:200]}"
    return None


def _holds_one_of(pid: str, sockets: set[str]) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # gone meanwhile, or not ours to read
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in sockets:
                return True
        except OSError:  # this descriptor closed meanwhile (another thread's): the others still count
            continue
    return False


def busy_port_message(name: str, host: str, port: int, option: str) -> str:
    holder = port_holder(port)
    held_by = f" by {holder}" if holder else ""
    return f"the {name} port {host}:{port} is already in use{held_by}; stop that process or choose another {option}"
