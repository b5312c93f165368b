"""MariaDB for the all-in-one stack (Neutron's, Keystone's and Octavia's
databases), and the stack's file templates."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from kuryr.aio import procs
from kuryr.aio.layout import PRIVATE_DIR_MODE, Layout, make_dir
from kuryr.aio.passwords import db_password, native_password_hash

DB_NAME = "neutron"
DB_USER = "neutron"


def template(name: str) -> str:
    return resources.files("kuryr.aio").joinpath("templates", name).read_text()


def user_statements(database: str, user: str, password: str) -> str:
    """SQL making ``database`` and ``user`` (all privileges on it) with ``password``.

    Idempotent, and it also gives ``password`` to a user made earlier with
    another one (kuryr-aio's old fixed passwords, on a reused machine).
    ``password`` comes from :func:`db_password` (no quote can be in it).
    """
    account = f"'{user}'@'localhost'"
    return (f"CREATE DATABASE IF NOT EXISTS {database} CHARACTER SET utf8;"
            f"CREATE USER IF NOT EXISTS {account};"
            f"ALTER USER {account} IDENTIFIED BY '{password}';"
            f"GRANT ALL PRIVILEGES ON {database}.* TO {account};")


class MariaDB:
    name = "mariadb"

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.datadir = layout.base / "mysql"
        self.pidfile = layout.pidfile("mariadb")
        # Where kuryr-aio put the socket before it had a 0700 directory of its own.
        self.old_sock = layout.run / "mysqld.sock"

    @property
    def logs(self) -> list[Path]:
        return [self.layout.log("mariadb")]

    def problems(self) -> list[str]:
        if not procs.pid_alive(self.pidfile, "mariadbd"):
            return ["MariaDB is not running"]
        if not self.layout.mysql_sock.exists():
            if self.old_sock.exists():
                return [(f"MariaDB listens on {self.old_sock}, which every local user can "
                         f"reach; `kuryr-aio up` restarts it on {self.layout.mysql_sock}")]
            return [f"MariaDB socket {self.layout.mysql_sock} is missing"]
        if not self.has_password(DB_USER, db_password(self.layout, DB_USER)):
            return [(f"database user {DB_USER} does not have this install's password "
                     f"({self.layout.db_password_file(DB_USER)}); `kuryr-aio up` sets it")]
        return []

    def sql(self, statement: str) -> str:
        # On stdin, not in argv: statements may carry a password, and every
        # local user can read a process's command line.
        return procs.run(["mariadb", "--no-defaults", "-S", str(self.layout.mysql_sock),
                          "-u", "root", "--batch", "--skip-column-names"],
                         input_text=statement, timeout=30)

    def has_password(self, user: str, password: str) -> bool:
        # user is one of the stack's constants (DB_USER), never outside input.
        stored = self.sql("SELECT authentication_string FROM mysql.user "  # noqa: S608
                          f"WHERE User = '{user}' AND Host = 'localhost';").strip()
        return stored == native_password_hash(password)

    def up(self) -> None:
        make_dir(self.layout.mysql_run, PRIVATE_DIR_MODE)
        if not (self.datadir / "mysql").exists():
            self.datadir.mkdir(parents=True, exist_ok=True)
            procs.run(["mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}",
                       "--user=root", "--auth-root-authentication-method=socket",
                       "--skip-test-db"], log=self.layout.log("mariadb-install"))
        if procs.pid_alive(self.pidfile, "mariadbd") and not self.layout.mysql_sock.exists():
            # Ours, but not where the stack looks: started by an older kuryr-aio
            # on the world-writable socket path (or its socket was removed).
            # Neutron and Keystone restart too: their configs name the new path.
            procs.stop(self.pidfile, "mariadbd", timeout=30)
        if not procs.pid_alive(self.pidfile, "mariadbd"):
            # Also the socket an older kuryr-aio's MariaDB left when killed.
            self.old_sock.unlink(missing_ok=True)
            self.layout.mysql_sock.unlink(missing_ok=True)
            procs.spawn(
                ["mariadbd", "--no-defaults", f"--datadir={self.datadir}",
                 f"--socket={self.layout.mysql_sock}", "--skip-networking", "--user=root",
                 f"--log-error={self.layout.log('mariadb')}",
                 "--innodb-buffer-pool-size=64M", "--max-connections=200"],
                pidfile=self.pidfile, log=self.layout.log("mariadb"),
            )
        if not procs.wait_for(lambda: self.sql("SELECT 1") is not None, 60):
            raise procs.StackError(f"MariaDB did not start (log: {self.layout.log('mariadb')})")
        self.sql(user_statements(DB_NAME, DB_USER, db_password(self.layout, DB_USER)))

    def create_service_database(self, service: str, database: str, user: str) -> None:
        """Another OpenStack service's database and user (its password set again)."""
        if self.problems():
            raise procs.StackError(f"{service} needs the stack's MariaDB running")
        self.sql(user_statements(database, user, db_password(self.layout, user)))

    def down(self) -> None:
        procs.stop(self.pidfile, "mariadbd", timeout=30)
