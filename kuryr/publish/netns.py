"""Sockets created inside another network namespace.

A socket belongs to the namespace its creating thread was in at creation
time, and keeps it after the thread moves on.  One worker thread does the
switching, so the rest of Kuryr never leaves the host's namespace.
"""

from __future__ import annotations

import ctypes
import errno
import os
import queue
import socket
import threading
from concurrent.futures import Future
from pathlib import Path

CLONE_NEWNET = 0x40000000


class NetnsError(OSError):
    pass


def is_netns(st: os.stat_result) -> bool:
    """Whether ``st`` is a network namespace file: one of nsfs, the filesystem of
    /proc/self/ns/net (its files look like empty regular files otherwise)."""
    return st.st_dev == Path("/proc/self/ns/net").stat().st_dev


def open_netns(path: str) -> int:
    """A descriptor of the namespace at ``path``.  O_NONBLOCK: a FIFO planted
    there would otherwise block the opening thread until a writer comes."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if not is_netns(os.fstat(fd)):
        os.close(fd)
        raise NetnsError(errno.EINVAL, f"{path} is not a network namespace")
    return fd


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
                target = open_netns(path)
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
