"""MariaDB for the all-in-one stack (Neutron's and Keystone's databases), and the
stack's file templates."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from kuryr.aio import procs
from kuryr.aio.layout import Layout

DB_USER = "neutron"
DB_PASSWORD = "neutron"  # noqa: S105 - reachable only through a root-owned unix socket


def template(name: str) -> str:
    return resources.files("kuryr.aio").joinpath("templates", name).read_text()


class MariaDB:
    name = "mariadb"

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.datadir = layout.base / "mysql"
        self.pidfile = layout.pidfile("mariadb")

    @property
    def logs(self) -> list[Path]:
        return [self.layout.log("mariadb")]

    def problems(self) -> list[str]:
        if not procs.pid_alive(self.pidfile, "mariadbd"):
            return ["MariaDB is not running"]
        if not self.layout.mysql_sock.exists():
            return [f"MariaDB socket {self.layout.mysql_sock} is missing"]
        return []

    def sql(self, statement: str) -> str:
        return procs.run(["mariadb", "--no-defaults", "-S", str(self.layout.mysql_sock),
                          "-u", "root", "-e", statement], timeout=30)

    def up(self) -> None:
        if not (self.datadir / "mysql").exists():
            self.datadir.mkdir(parents=True, exist_ok=True)
            procs.run(["mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}",
                       "--user=root", "--auth-root-authentication-method=socket",
                       "--skip-test-db"], log=self.layout.log("mariadb-install"))
        if not procs.pid_alive(self.pidfile, "mariadbd"):
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
        self.sql(
            "CREATE DATABASE IF NOT EXISTS neutron CHARACTER SET utf8;"
            f"CREATE USER IF NOT EXISTS '{DB_USER}'@'localhost' IDENTIFIED BY '{DB_PASSWORD}';"
            f"GRANT ALL PRIVILEGES ON neutron.* TO '{DB_USER}'@'localhost';"
        )

    def down(self) -> None:
        procs.stop(self.pidfile, "mariadbd", timeout=30)
