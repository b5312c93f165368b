"""Unix sockets Kuryr serves on: bound with the right mode from the first moment,
a stale one replaced, anything else at the path refused."""

from __future__ import annotations

import grp
import os
import socket
import stat
from pathlib import Path


def unix_socket(path: Path, group: str, option: str) -> socket.socket:
    """Bind the plugin socket ourselves so its mode is right from the first moment:
    root-only (0600), or 0660 for ``group``.  Whoever can write to it creates
    Neutron ports with Kuryr's credentials.  ``option`` names the setting of the
    path, for the messages."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_socket(path, option)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            sock.close()
            raise SystemExit(f"kuryr: socket_group {group!r} does not exist") from None
        os.chown(path, -1, gid)
        path.chmod(0o660)
    sock.listen(128)
    return sock


def _remove_stale_socket(path: Path, option: str) -> None:
    """A socket file left by a Kuryr that died is removed; one that answers is a
    Kuryr still serving, and taking its path would cut dockerd off from it.
    Anything else at the path (a directory, a regular file) is someone's: never
    removed, and named rather than failing later in unlink or bind."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SystemExit(f"kuryr: {path} is {_file_kind(mode)}, not a socket: remove it "
                         f"or set {option} to another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # nobody listens: stale
        return
    finally:
        probe.close()
    raise SystemExit(f"kuryr: another process is serving on {path}: stop it first "
                     f"(or set {option} to another socket)")


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISREG, "a regular file"),
             (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "a file of an unknown kind")
