"""Kuryr's own Docker plugin, run from this checkout against the stack's Neutron."""

from __future__ import annotations

import sys
from http import HTTPStatus
from pathlib import Path

from kuryr import config
from kuryr.aio import keystone, procs
from kuryr.aio.layout import POD_NETWORK, PUBLIC_NETWORK, SERVICE_NETWORK, Layout
from kuryr.localhttp import UnixHTTPConnection
from kuryr.neutron.client import connect_endpoint

PLUGIN_SOCKET = Path("/run/docker/plugins/kuryr.sock")

KURYR_CONF = """\
# Written by kuryr-aio: Kuryr against the all-in-one stack's {against}.
[DEFAULT]
kuryr_uri = unix://{socket}
docker_uri = unix://{docker}
state_dir = {state}
docker_netns_dir = {netns}

{neutron_section}
[binding]
ovs_bridge = br-int

[publish]
# -p ports are also reachable from the external network through a floating IP.
floating_ip_network = {public}
{kubernetes_section}"""

# Only with `up --k8s`: `kuryr status` checks the CNI daemon and the controller
# of a host whose kuryr.conf names a kubeconfig.
KUBERNETES_SECTION = """
[kubernetes]
# Kuryr for Kubernetes (`kuryr-aio up --k8s`): every pod on one Neutron network.
kubeconfig = {kubeconfig}
pod_network_driver = shared
pod_network = {pods}
daemon_socket = {cni_socket}
# Ports kept ready on this node: sized for the benchmark's burst of 50 pods, so
# none of them waits on Neutron (docs/kubernetes.md, "Sizing the pool").
pool_size = 50
# Services: an Octavia load balancer each (OVN provider), VIP = the cluster IP.
service_subnet = {services}
external_network = {external}

[octavia]
endpoint_override = {octavia}
"""


def neutron_section_of(layout: Layout) -> tuple[str, str]:
    """kuryr.conf's [neutron] for the stack's auth mode, and what it is against
    (a comment).  A simulated VM's Kuryr has the same: its relay makes the
    host's 127.0.0.1 ports its own."""
    own = {"vif_plugging_timeout": "30"}
    if layout.keystone_mode:
        # Neutron's URL comes from Keystone's catalog.
        return ("Neutron as Keystone user kuryr (roles member + service, not admin)",
                keystone.kuryr_neutron_section(own))
    return "no-auth Neutron", keystone.ini_text({"neutron": {
        "auth_type": "none", "endpoint": layout.neutron_url, **own}})


def config_differs(path: Path, text: str) -> bool:
    """Whether a Kuryr was (or would be) started from another kuryr.conf than ``text``."""
    try:
        return path.read_text() != text
    except FileNotFoundError:
        return True


def write_config(path: Path, text: str) -> None:
    """kuryr.conf holds Kuryr's Keystone password in keystone mode: root only."""
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(text)


def plugin_answers(path: Path = PLUGIN_SOCKET) -> bool:
    conn = UnixHTTPConnection(str(path), timeout=5)
    try:
        conn.request("POST", "/Plugin.Activate", body=b"")
        return conn.getresponse().status == HTTPStatus.OK
    finally:
        conn.close()


class KuryrPlugin:
    name = "kuryr"

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.pidfile = layout.pidfile("kuryr")

    @property
    def logs(self) -> list[Path]:
        return [self.layout.log("kuryr")]

    def problems(self) -> list[str]:
        if not procs.pid_alive(self.pidfile, "kuryr"):
            return ["the Kuryr plugin (kuryr serve) is not running"]
        try:
            plugin_answers()
        except OSError as exc:
            return [f"the Kuryr plugin does not answer on {PLUGIN_SOCKET}: {exc}"]
        if self.config_outdated():
            return [(f"the Kuryr plugin runs with an outdated kuryr.conf (auth mode is now "
                     f"{self.layout.auth_mode}); `kuryr-aio up` restarts it")]
        return []

    @property
    def override_dir(self) -> Path:
        """Extra *.conf files read after kuryr.conf (tests point Kuryr elsewhere)."""
        return self.layout.base / "kuryr.conf.d"

    @property
    def config_args(self) -> list[str]:
        args = ["--config-file", str(self.layout.kuryr_conf)]
        if self.override_dir.is_dir():
            args += ["--config-dir", str(self.override_dir)]
        return args

    def kuryr_conf(self) -> str:
        """kuryr.conf for this layout and the stack's auth mode."""
        against, neutron_section = neutron_section_of(self.layout)
        return KURYR_CONF.format(
            against=against, socket=PLUGIN_SOCKET, docker=self.layout.docker_sock,
            state=self.layout.base / "kuryr", neutron_section=neutron_section,
            netns="/var/run/docker/netns", public=PUBLIC_NETWORK,
            kubernetes_section=KUBERNETES_SECTION.format(
                kubeconfig=self.layout.k8s_dir / "pki" / "kuryr.kubeconfig",
                pods=POD_NETWORK, cni_socket=self.layout.cni_socket,
                services=SERVICE_NETWORK, external=PUBLIC_NETWORK,
                octavia=self.layout.octavia_url)
            if self.layout.k8s_enabled else "")

    def config_outdated(self) -> bool:
        """Whether the running plugin was started from another kuryr.conf."""
        return config_differs(self.layout.kuryr_conf, self.kuryr_conf())

    def write_config(self) -> None:
        write_config(self.layout.kuryr_conf, self.kuryr_conf())

    def forget_keystone_singletons(self) -> list[str]:
        """Delete the unused one-per-project resources a keystone-mode Kuryr made in
        project ``service``: its default subnetpools, publishing floating IP and
        router.  A no-auth Kuryr sees every project's and would find two of each
        (and refuse to start on the subnetpools).  Returns what was deleted;
        raises when some are still in use (networks left from keystone mode)."""
        try:
            project = keystone.service_project_file(self.layout).read_text().strip()
        except FileNotFoundError:
            return []
        conf = config.load(self.config_args, config_files=[])
        api = connect_endpoint(self.layout.neutron_url).api
        deleted, in_use = [], []
        for fip in api.ips(project_id=project):
            if not (fip.description or "").startswith("kuryr-publish:"):
                continue
            if list(api.port_forwardings(fip.id)):
                in_use.append(f"floating IP {fip.floating_ip_address} (port forwardings)")
            else:
                api.delete_ip(fip.id, ignore_missing=True)
                deleted.append(f"floating IP {fip.floating_ip_address}")
        for router in api.routers(project_id=project, name=conf.publish.router_name):
            if list(api.ports(device_id=router.id, device_owner="network:router_interface")):
                in_use.append(f"router {router.name} (subnets attached)")
            else:
                api.delete_router(router.id, ignore_missing=True)
                deleted.append(f"router {router.name}")
        for name in (conf.neutron.default_subnetpool_v4, conf.neutron.default_subnetpool_v6):
            for pool in api.subnet_pools(project_id=project, name=name):
                if list(api.subnets(subnetpool_id=pool.id)):
                    in_use.append(f"subnetpool {name} (subnets allocated)")
                else:
                    api.delete_subnet_pool(pool.id, ignore_missing=True)
                    deleted.append(f"subnetpool {name}")
        if in_use:
            raise procs.StackError(
                "Kuryr's resources of keystone mode are still in use in project service: "
                f"{', '.join(in_use)}; remove the Docker networks made in keystone mode "
                "(`kuryr-aio up --keystone`, `docker network rm ...`) and switch again")
        return deleted

    def up(self) -> None:
        if self.config_outdated():
            # An auth mode switch: restart on the new kuryr.conf.
            self.down()
        self.write_config()
        if not self.layout.keystone_mode and not procs.pid_alive(self.pidfile, "kuryr"):
            deleted = self.forget_keystone_singletons()
            if deleted:
                with self.layout.log("kuryr").open("a") as log:
                    log.write(f"kuryr-aio: deleted Kuryr's unused {', '.join(deleted)} "
                              "of keystone mode (project service)\n")
        if not procs.pid_alive(self.pidfile, "kuryr"):
            # A socket left by a killed plugin would answer "connection refused"
            # until the new one replaces it.
            PLUGIN_SOCKET.unlink(missing_ok=True)
            procs.spawn([sys.executable, "-m", "kuryr.cli", "serve", *self.config_args],
                        pidfile=self.pidfile, log=self.layout.log("kuryr"))
        if not procs.wait_for(procs.answers_or_died(self.pidfile, plugin_answers), 60):
            raise procs.StackError(f"kuryr did not answer (log: {self.layout.log('kuryr')})")
        if not procs.running(self.pidfile):
            raise procs.StackError(f"kuryr exited at start (log: {self.layout.log('kuryr')})")

    def down(self) -> None:
        procs.stop(self.pidfile, "kuryr", timeout=15)
