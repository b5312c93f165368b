"""Octavia, OpenStack's load-balancer API, with OVN's provider (`up --k8s`).

Octavia 19 and ovn-octavia-provider 11 run from their own PyPI venv (in the
cache: `down --purge` keeps it).  Two processes, started in this order:

* ``octavia-driver-agent`` with the ``ovn`` provider agent: it serves the
  provider's status/stats/get sockets under /var/run/octavia (the provider
  library uses those paths whatever octavia.conf says);
* ``octavia-api`` (``octavia.wsgi.api`` under gunicorn) on 127.0.0.1:9876.
  An API started before the agent's sockets exist drops the ovn provider for
  its whole life, so it is started only once they are there, and restarted
  when it serves no ovn provider.

No amphorae, controller worker, health manager or message queue: the OVN
provider makes a load balancer an OVN Load_Balancer row directly.  Its
database ``octavia`` is in the stack's MariaDB, with a user of its own.
"""

from __future__ import annotations

import json
import urllib.request
from http import HTTPStatus
from pathlib import Path

from kuryr.aio import keystone, procs, venvs
from kuryr.aio.layout import (
    OCTAVIA_PORT,
    OCTAVIA_VERSION,
    OVN_OCTAVIA_PROVIDER_VERSION,
    PRIVATE_DIR_MODE,
    Layout,
    make_dir,
)
from kuryr.aio.mariadb import MariaDB, template
from kuryr.aio.passwords import db_password

OCTAVIA_PACKAGES = (f"octavia=={OCTAVIA_VERSION}",
                    f"ovn-octavia-provider=={OVN_OCTAVIA_PROVIDER_VERSION}",
                    "gunicorn", "pymysql")
DB_NAME = "octavia"
DB_USER = "octavia"
PROVIDER = "ovn"
WSGI_MODULE = "kuryr_aio_octavia_wsgi"
AGENT = "octavia-driver-agent"
# Fixed by octavia-lib's driver library (the provider's side of the sockets).
SOCKET_DIR = Path("/var/run/octavia")
SOCKET_NAMES = ("status.sock", "stats.sock", "get.sock")
AGENT_WAIT = 60  # s; its sockets appear in 6-11 s
API_WAIT = 180  # s; it answers ~9 s after its start


def db_url(layout: Layout) -> str:
    return (f"mysql+pymysql://{DB_USER}:{db_password(layout, DB_USER)}@localhost/{DB_NAME}"
            f"?unix_socket={layout.mysql_sock}&charset=utf8")


def auth_settings(layout: Layout) -> tuple[str, dict[str, dict[str, str]]]:
    """``[api_settings] auth_strategy`` and the auth sections of octavia.conf.

    noauth: every caller is admin, and Octavia reaches Neutron (noauth too)
    with keystoneauth's ``none`` plugin at Neutron's URL.  keystone: tokens
    are checked, and Octavia calls Neutron as user ``octavia``.
    """
    if layout.keystone_mode:
        settings = keystone.octavia_auth_settings()
        return settings.pop("api_settings")["auth_strategy"], settings
    return "noauth", {"service_auth": {"auth_type": "none", "endpoint": layout.neutron_url}}


def octavia_conf(layout: Layout) -> str:
    """octavia.conf for this layout and the stack's auth mode."""
    auth_strategy, sections = auth_settings(layout)
    return template("octavia.conf.tmpl").format(
        auth_strategy=auth_strategy, db_url=db_url(layout),
        nb=layout.nb_sock, sb=layout.sb_sock, neutron_url=layout.neutron_url,
        dir=layout.octavia_dir, auth_sections=keystone.ini_text(sections))


class Octavia:
    name = "octavia"

    def __init__(self, layout: Layout, socket_dir: Path = SOCKET_DIR) -> None:
        self.layout = layout
        self.dir = layout.octavia_dir
        self.socket_dir = socket_dir
        self.api_pid = layout.pidfile("octavia-api")
        self.agent_pid = layout.pidfile(AGENT)

    @property
    def venv_bin(self) -> Path:
        return self.layout.octavia_venv / "bin"

    @property
    def config_file(self) -> Path:
        return self.dir / "octavia.conf"

    @property
    def config_args(self) -> list[str]:
        return ["--config-file", str(self.config_file)]

    @property
    def sockets(self) -> list[Path]:
        return [self.socket_dir / name for name in SOCKET_NAMES]

    @property
    def logs(self) -> list[Path]:
        return [self.layout.log("octavia-api"), self.layout.log("octavia-access"),
                self.layout.log(AGENT)]

    # -- health --------------------------------------------------------------
    def _get(self, path: str) -> dict:
        headers = {}
        if self.layout.keystone_mode:
            # Octavia's API needs a token for all but its version document.
            headers["X-Auth-Token"] = str(keystone.admin_session().get_token())
        # Always http://127.0.0.1:PORT.
        url = f"{self.layout.octavia_url}{path}"
        request = urllib.request.Request(url, headers=headers)  # noqa: S310
        with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310
            if resp.status != HTTPStatus.OK:
                raise OSError(f"GET {path}: HTTP {resp.status}")
            return json.load(resp)

    def answers(self) -> bool:
        # The version document: served without a token, once the app has loaded.
        url = f"{self.layout.octavia_url}/"
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310
            return resp.status == HTTPStatus.OK

    def providers(self) -> list[str]:
        return [p["name"] for p in self._get("/v2/lbaas/providers")["providers"]]

    def config_outdated(self) -> bool:
        """Whether the running processes were started from another octavia.conf
        (e.g. before the stack's auth mode was switched)."""
        try:
            return self.config_file.read_text() != octavia_conf(self.layout)
        except FileNotFoundError:
            return True

    def agent_problems(self) -> list[str]:
        if not procs.pid_alive(self.agent_pid, AGENT):
            return [f"{AGENT} is not running"]
        missing = [str(s) for s in self.sockets if not s.is_socket()]
        if missing:
            return [f"{AGENT} has not made its sockets: {', '.join(missing)}"]
        return []

    def api_problems(self) -> list[str]:
        if not procs.pid_alive(self.api_pid, WSGI_MODULE):
            return ["octavia-api is not running"]
        try:
            if PROVIDER not in self.providers():
                return [(f"octavia-api serves no {PROVIDER!r} provider (started before "
                         f"{AGENT}'s sockets?); `kuryr-aio up` restarts it")]
        except (OSError, ValueError, KeyError) as exc:
            return [f"octavia-api does not answer on {self.layout.octavia_url}: {exc}"]
        return []

    def problems(self) -> list[str]:
        found = self.agent_problems() + self.api_problems()
        if self.config_outdated() and (procs.pid_alive(self.agent_pid, AGENT)
                                       or procs.pid_alive(self.api_pid, WSGI_MODULE)):
            found.append(f"octavia runs with an outdated octavia.conf (auth mode is now "
                         f"{self.layout.auth_mode}); `kuryr-aio up` restarts it")
        return found

    # -- install and set up ----------------------------------------------------
    def install(self) -> None:
        venvs.install(self.layout.octavia_venv, OCTAVIA_PACKAGES,
                      log=self.layout.log("octavia-install"), version=OCTAVIA_VERSION)

    def create_database(self) -> None:
        MariaDB(self.layout).create_service_database("octavia", DB_NAME, DB_USER)

    def write_config(self) -> None:
        make_dir(self.dir / "lock", PRIVATE_DIR_MODE)
        # Holds the database password (and Octavia's Keystone password in
        # keystone mode): root only.
        self.config_file.touch(mode=0o600)
        self.config_file.chmod(0o600)
        self.config_file.write_text(octavia_conf(self.layout))
        wsgi = template("octavia_wsgi.py.tmpl").replace("@CONFIG_ARGS@",
                                                        repr(self.config_args))
        (self.dir / f"{WSGI_MODULE}.py").write_text(wsgi)

    def migrate(self) -> None:
        marker = self.dir / ".db-migrated"
        if marker.exists() and marker.read_text() == OCTAVIA_VERSION:
            return
        procs.run([str(self.venv_bin / "octavia-db-manage"), *self.config_args,
                   "upgrade", "head"], log=self.layout.log("octavia-db-manage"), timeout=600)
        marker.write_text(OCTAVIA_VERSION)

    # -- run -----------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        return {"PATH": f"{self.venv_bin}:/usr/sbin:/usr/bin:/sbin:/bin"}

    def start_agent(self) -> None:
        if procs.pid_alive(self.agent_pid, AGENT):
            return
        # The API's provider talks to these: a stale one (a killed agent's)
        # must not pass for the new agent's.
        self._remove_sockets()
        make_dir(self.socket_dir, PRIVATE_DIR_MODE)
        procs.spawn([str(self.venv_bin / AGENT), *self.config_args],
                    pidfile=self.agent_pid, log=self.layout.log(AGENT), env=self.env)
        if not procs.wait_for(lambda: not procs.running(self.agent_pid)
                              or not self.agent_problems(), AGENT_WAIT):
            raise procs.StackError(f"{AGENT} made no sockets in {self.socket_dir} within "
                                   f"{AGENT_WAIT} s (log: {self.layout.log(AGENT)})")
        if not procs.running(self.agent_pid):
            raise procs.StackError(f"{AGENT} exited at start (log: {self.layout.log(AGENT)})")

    def start_api(self) -> None:
        if procs.pid_alive(self.api_pid, WSGI_MODULE) and self.api_problems():
            # Running without the ovn provider, or not answering: a new start.
            procs.stop(self.api_pid, WSGI_MODULE, timeout=15)
        if not procs.pid_alive(self.api_pid, WSGI_MODULE):
            procs.spawn(
                [str(self.venv_bin / "gunicorn"), "--chdir", str(self.dir),
                 "--bind", f"127.0.0.1:{OCTAVIA_PORT}", "-w", "1", "--threads", "4",
                 "--graceful-timeout", "5", "--timeout", "120",
                 "--access-logfile", str(self.layout.log("octavia-access")),
                 # gunicorn's default control socket is one path per user:
                 # Neutron's and Keystone's gunicorns would fight over it.
                 "--no-control-socket",
                 f"{WSGI_MODULE}:application"],
                pidfile=self.api_pid, log=self.layout.log("octavia-api"), env=self.env)
        if not procs.wait_for(procs.answers_or_died(self.api_pid, self.answers), API_WAIT):
            raise procs.StackError(f"octavia-api did not answer within {API_WAIT} s "
                                   f"(log: {self.layout.log('octavia-api')})")
        if not procs.running(self.api_pid):
            raise procs.StackError(
                f"octavia-api exited at start (log: {self.layout.log('octavia-api')})")

    def up(self) -> None:
        self.install()
        if self.config_outdated():
            # An auth mode switch: both restart on the new config.
            self.down()
        if self.layout.keystone_mode:
            keystone.ensure_octavia_accounts(self.layout)
        self.create_database()
        self.write_config()
        self.migrate()
        self.start_agent()
        self.start_api()

    def _remove_sockets(self) -> None:
        for sock in self.sockets:
            sock.unlink(missing_ok=True)

    def down(self) -> None:
        procs.stop(self.api_pid, WSGI_MODULE, timeout=15)
        had_agent = self.agent_pid.exists()
        # It waits up to provider_agent_shutdown_timeout (10 s) for the ovn agent.
        procs.stop(self.agent_pid, AGENT, timeout=30)
        if had_agent:
            # The agent leaves its sockets behind.
            self._remove_sockets()
            if self.socket_dir.is_dir() and not any(self.socket_dir.iterdir()):
                self.socket_dir.rmdir()
