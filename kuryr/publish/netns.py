"""Sockets created inside another network namespace.

A socket belongs to the namespace its creating thread was in at creation
time, and keeps it after the thread moves on.  One worker thread does the
switching, so the rest of Kuryr never leaves the host's namespace.
"""

from __future__ import annotations

import ctypes
import os
import queue
import socket
import threading
from concurrent.futures import Future

CLONE_NEWNET = 0x40000000


class NetnsError(OSError):
    pass


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(err, f"setns: {os.strerror(err)}")


class SocketFactory:
    """Creates sockets in named namespace paths (e.g. Docker's SandboxKey)."""

    def __init__(self) -> None:
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="netns-sockets", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        home = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
        while True:
            job = self._jobs.get()
            if job is None:
                os.close(home)
                return
            path, family, kind, future = job
            try:
                target = os.open(path, os.O_RDONLY)
                try:
                    _setns(target)
                    try:
                        sock = socket.socket(family, kind)
                    finally:
                        _setns(home)
                finally:
                    os.close(target)
                future.set_result(sock)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                future.set_exception(exc)

    def create(self, netns_path: str, family: int = socket.AF_INET,
               kind: int = socket.SOCK_STREAM) -> socket.socket:
        future: Future = Future()
        self._jobs.put((netns_path, family, kind, future))
        return future.result(timeout=10)

    def close(self) -> None:
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join(timeout=5)

