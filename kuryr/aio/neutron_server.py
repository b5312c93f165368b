"""A real neutron-server (ML2/OVN) for the all-in-one stack."""

from __future__ import annotations

import shutil
import tempfile
import urllib.request
from http import HTTPStatus
from pathlib import Path

from kuryr.aio import keystone, procs, venvs
from kuryr.aio.layout import NEUTRON_PORT, NEUTRON_VERSION, PHYSNET, Layout
from kuryr.aio.mariadb import DB_NAME, DB_USER, template
from kuryr.aio.passwords import db_password

NEUTRON_PACKAGES = [f"neutron=={NEUTRON_VERSION}", "gunicorn", "pymysql"]


class NeutronServer:
    name = "neutron"

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.dir = layout.neutron_dir
        self.api_pid = layout.pidfile("neutron-api")
        self.worker_pid = layout.pidfile("neutron-ovn-maintenance-worker")

    @property
    def venv_bin(self) -> Path:
        return self.layout.neutron_venv / "bin"

    @property
    def config_files(self) -> list[Path]:
        return [self.dir / "neutron.conf", self.dir / "ml2_conf.ini"]

    @property
    def config_args(self) -> list[str]:
        return [arg for f in self.config_files for arg in ("--config-file", str(f))]

    @property
    def logs(self) -> list[Path]:
        return [self.layout.log("neutron-api"), self.layout.log("neutron-access"),
                self.layout.log("neutron-ovn-maintenance-worker")]

    @property
    def policy_file(self) -> Path:
        return self.dir / "policy.yaml"

    def answers(self) -> bool:
        # With Keystone every /v2.0 request needs a token; the version document
        # at / is served without one (and only once the API app has loaded).
        path = "/" if self.layout.keystone_mode else "/v2.0/networks?limit=1"
        url = f"{self.layout.neutron_url}{path}"  # always http://127.0.0.1:PORT
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310
            return resp.status == HTTPStatus.OK

    def neutron_conf(self) -> str:
        """neutron.conf for this layout and the stack's auth mode."""
        auth_strategy, auth_sections = "noauth", ""
        if self.layout.keystone_mode:
            settings = keystone.neutron_auth_settings()
            auth_strategy = settings.pop("DEFAULT")["auth_strategy"]
            settings["oslo_policy"] = {"policy_file": str(self.policy_file)}
            auth_sections = "\n" + keystone.ini_text(settings)
        return template("neutron.conf.tmpl").format(
            dir=str(self.dir), port=str(NEUTRON_PORT),
            db_url=(f"mysql+pymysql://{DB_USER}:{db_password(self.layout, DB_USER)}"
                    f"@localhost/{DB_NAME}"
                    f"?unix_socket={self.layout.mysql_sock}&charset=utf8"),
            auth_strategy=auth_strategy, auth_sections=auth_sections)

    def config_outdated(self) -> bool:
        """Whether the running server was started from another neutron.conf
        (e.g. before the stack's auth mode was switched)."""
        try:
            return (self.dir / "neutron.conf").read_text() != self.neutron_conf()
        except FileNotFoundError:
            return True

    def problems(self) -> list[str]:
        found = []
        if not procs.pid_alive(self.api_pid, "gunicorn"):
            found.append("neutron-server (API) is not running")
        else:
            try:
                self.answers()
            except OSError as exc:
                found.append(f"neutron-server does not answer on {self.layout.neutron_url}: {exc}")
            if self.config_outdated():
                found.append(f"neutron-server runs with an outdated neutron.conf (auth mode "
                             f"is now {self.layout.auth_mode}); `kuryr-aio up` restarts it")
        if not procs.pid_alive(self.worker_pid, "neutron-ovn-maintenance-worker"):
            found.append("neutron-ovn-maintenance-worker is not running")
        return found

    # -- install -----------------------------------------------------------
    def install(self) -> None:
        venvs.install(self.layout.neutron_venv, NEUTRON_PACKAGES,
                      log=self.layout.log("neutron-install"), version=NEUTRON_VERSION)

    def write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for sub in ("state", "lock"):
            (self.dir / sub).mkdir(exist_ok=True)
        if self.layout.keystone_mode:
            self.policy_file.write_text(keystone.neutron_policy_override())
        else:
            self.policy_file.unlink(missing_ok=True)
        conf = self.dir / "neutron.conf"
        # Holds the database password (and Neutron's Keystone password in
        # keystone mode): root only.
        conf.touch(mode=0o600)
        conf.chmod(0o600)
        conf.write_text(self.neutron_conf())
        (self.dir / "ml2_conf.ini").write_text(template("ml2_conf.ini.tmpl").format(
            nb=f"unix:{self.layout.nb_sock}", sb=f"unix:{self.layout.sb_sock}",
            physnet=PHYSNET))
        shutil.copy(self.layout.neutron_venv / "etc" / "neutron" / "api-paste.ini",
                    self.dir / "api-paste.ini")
        wsgi = template("neutron_wsgi.py.tmpl").replace(
            "@CONFIG_ARGS@", repr(self.config_args))
        (self.dir / "kuryr_aio_neutron_wsgi.py").write_text(wsgi)

    def migrate(self) -> None:
        marker = self.dir / ".db-migrated"
        if marker.exists() and marker.read_text() == NEUTRON_VERSION:
            return
        procs.run([str(self.venv_bin / "neutron-db-manage"), *self.config_args,
                   "upgrade", "heads"], log=self.layout.log("neutron-db-manage"), timeout=600)
        marker.write_text(NEUTRON_VERSION)

    # -- run ---------------------------------------------------------------
    def up(self) -> None:
        self.install()
        if self.config_outdated():
            # An auth mode switch: API and maintenance worker (whichever runs)
            # restart on the new config.
            self.down()
        self.write_config()
        self.migrate()
        # neutron elects its "first worker" through files in TMPDIR: fresh per start.
        env = {"ASGI_WORKERS": "1", "PATH": f"{self.venv_bin}:/usr/sbin:/usr/bin:/sbin:/bin"}
        if not procs.pid_alive(self.api_pid, "gunicorn"):
            env_api = {**env, "TMPDIR": tempfile.mkdtemp(prefix="neutron-api-", dir=self.dir)}
            procs.spawn(
                [str(self.venv_bin / "gunicorn"), "--chdir", str(self.dir),
                 "--bind", f"127.0.0.1:{NEUTRON_PORT}", "-w", "1", "--threads", "8",
                 "--graceful-timeout", "5", "--timeout", "300",
                 # One line per request: benchmarks count requests at Neutron's side.
                 "--access-logfile", str(self.layout.log("neutron-access")),
                 # gunicorn's default control socket is one path per user:
                 # Keystone's gunicorn (keystone mode) would fight over it.
                 "--no-control-socket",
                 "kuryr_aio_neutron_wsgi:application"],
                pidfile=self.api_pid, log=self.layout.log("neutron-api"), env=env_api,
            )
        if not procs.wait_for(procs.answers_or_died(self.api_pid, self.answers), 180):
            raise procs.StackError(
                "neutron-server did not answer within 180 s "
                f"(log: {self.layout.log('neutron-api')})")
        if not procs.running(self.api_pid):
            raise procs.StackError(
                f"neutron-server exited at start (log: {self.layout.log('neutron-api')})")
        if not procs.pid_alive(self.worker_pid, "neutron-ovn-maintenance-worker"):
            env_worker = {**env, "TMPDIR": tempfile.mkdtemp(prefix="neutron-mw-", dir=self.dir)}
            procs.spawn([str(self.venv_bin / "neutron-ovn-maintenance-worker"),
                         *self.config_args],
                        pidfile=self.worker_pid,
                        log=self.layout.log("neutron-ovn-maintenance-worker"), env=env_worker)

    def down(self) -> None:
        procs.stop(self.worker_pid, "neutron-ovn-maintenance-worker")
        procs.stop(self.api_pid, "gunicorn", timeout=15)
        for tmp in self.dir.glob("neutron-*-*"):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
