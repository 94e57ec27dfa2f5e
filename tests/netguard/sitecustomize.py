"""Imported by Python at start-up when this folder is on PYTHONPATH (tests only): every name lookup or
connection the process tries beyond this machine is written to $WAN_STUDIO_NETLOG and refused, so a test
can show that nothing leaves the machine."""

import os
import socket

_LOG = os.environ.get("WAN_STUDIO_NETLOG")
_LOCAL_NAMES = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "", None}


def _local(host) -> bool:
    host = host.decode() if isinstance(host, bytes) else host
    return host in _LOCAL_NAMES or str(host).startswith("127.") or str(host).startswith("::ffff:127.")


def _refuse(what: str):
    with open(_LOG, "a") as log:
        log.write(what + "\n")
    raise OSError(f"blocked by the test's network guard: {what}")


if _LOG:
    with open(_LOG + ".loaded", "a") as loaded:  # the positive control: this process is guarded
        loaded.write(f"{os.getpid()}\n")
    _getaddrinfo = socket.getaddrinfo
    _connect = socket.socket.connect
    _connect_ex = socket.socket.connect_ex

    def getaddrinfo(host, *args, **kwargs):
        if not _local(host):
            _refuse(f"lookup {host}")
        return _getaddrinfo(host, *args, **kwargs)

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
            _refuse(f"connect {address[0]}:{address[1]}")
        return _connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
            _refuse(f"connect {address[0]}:{address[1]}")
        return _connect_ex(self, address)

    socket.getaddrinfo = getaddrinfo
    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
