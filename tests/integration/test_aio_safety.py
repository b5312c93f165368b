"""The running stack keeps other local users out (items 11 and 12): MariaDB's
socket, the run and log directories, the files holding database passwords.
Read-only: nothing here changes the stack."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

from kuryr.aio import links
from kuryr.aio.keystone import Keystone
from kuryr.aio.layout import Layout


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_mariadb_socket_directory_is_root_only(stack: Layout):
    assert stack.mysql_sock.exists(), stack.mysql_sock
    assert _mode(stack.mysql_sock.parent) & 0o007 == 0, oct(_mode(stack.mysql_sock.parent))
    assert stack.mysql_sock.parent.stat().st_uid == 0
    # The world-writable socket of older kuryr-aio versions is gone.
    assert not (stack.run / "mysqld.sock").exists()


def test_run_and_log_directories_are_not_world_readable(stack: Layout):
    assert _mode(stack.run) & 0o004 == 0, oct(_mode(stack.run))
    assert _mode(stack.logs) & 0o007 == 0, oct(_mode(stack.logs))


def test_files_with_passwords_are_root_only(stack: Layout):
    files = [stack.neutron_dir / "neutron.conf", Keystone(stack).config_file, stack.kuryr_conf]
    for path in [p for p in files if p.exists()]:
        assert _mode(path) == 0o600, f"{path}: {oct(_mode(path))}"
    assert _mode(stack.secrets_dir) == 0o700
    neutron_password = stack.db_password_file("neutron")
    assert neutron_password.exists()
    for path in stack.secrets_dir.iterdir():
        assert _mode(path) == 0o600, f"{path}: {oct(_mode(path))}"
    # The password is this install's, not the old fixed one.
    assert neutron_password.read_text().strip() != "neutron"
    assert neutron_password.read_text().strip() in \
        (stack.neutron_dir / "neutron.conf").read_text()


def test_unprivileged_user_cannot_reach_mariadb(stack: Layout):
    probe = ("import socket, sys\n"
             "s = socket.socket(socket.AF_UNIX)\n"
             "s.connect(sys.argv[1])\n")
    # The system's python3: the project's venv may not be readable by nobody.
    proc = subprocess.run(["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c", probe,
                           str(stack.mysql_sock)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode != 0, "an unprivileged user connected to MariaDB's socket"
    assert "PermissionError" in proc.stderr, proc.stderr
    # The old path (a world-writable socket) must not be there to try instead.
    old = stack.run / "mysqld.sock"
    assert not old.exists()


def test_links_the_stack_made_are_recorded(stack: Layout):
    # `down` deletes only these; br-int and br-ex exist while the stack runs.
    recorded = set(links.created(stack))
    assert {"br-int", "br-ex"} <= recorded, recorded
