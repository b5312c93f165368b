"""The all-in-one stack: its components in start order, and what `up`,
`status` and `down` do with them."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable

from pyroute2 import netns

from kuryr.aio import host, links, vm
from kuryr.aio.components import Component, bring_up, safe_problems, say
from kuryr.aio.debian_services import stop_debian_services
from kuryr.aio.docker import DEFAULT_BRIDGE, Docker
from kuryr.aio.keystone import Keystone, admin_env
from kuryr.aio.kubernetes import (
    Containerd,
    Etcd,
    KubeApiserver,
    KubeControllerManager,
    Kubelet,
    KubeScheduler,
    KubeTools,
    KuryrCniDaemon,
    KuryrController,
    PodNetwork,
    kubeconfig,
    kubectl_path,
)
from kuryr.aio.layout import OUTSIDE_NETNS, Layout
from kuryr.aio.mariadb import MariaDB
from kuryr.aio.neutron_server import NeutronServer
from kuryr.aio.octavia import Octavia
from kuryr.aio.outside import VETH_BRIDGE_END, Outside
from kuryr.aio.packages import Packages
from kuryr.aio.plugin import KuryrPlugin
from kuryr.aio.switch import DATAPATH_TAPS, OVN, OpenVSwitch
from kuryr.binding import netlink
from kuryr.k8s.host_reach import INTERFACE_PREFIX


def kubernetes_components(layout: Layout) -> list[Component]:
    """The cluster of `up --k8s`, in start order.  The control loops that
    schedule and make pods come after kubelet, so `down` stops them before
    kubelet drains the node.  Octavia comes before the Kuryr controller, which
    gives Services its load balancers."""
    return [KubeTools(layout), PodNetwork(layout), Etcd(layout), KubeApiserver(layout),
            KuryrCniDaemon(layout), Containerd(layout), Kubelet(layout),
            KubeControllerManager(layout), KubeScheduler(layout), Octavia(layout),
            KuryrController(layout)]


def components(layout: Layout, keystone: bool | None = None,
               kubernetes: bool | None = None) -> list[Component]:
    """Everything the stack runs, in start order (stopped in reverse).

    Keystone is in it in keystone mode (or with ``keystone=True``), before the
    Neutron that checks its tokens.
    """
    # The plugin comes before dockerd: dockerd asks it about its networks at
    # start, and must still reach it while stopping containers at shutdown.
    with_keystone = layout.keystone_mode if keystone is None else keystone
    auth: list[Component] = [Keystone(layout)] if with_keystone else []
    with_k8s = layout.k8s_enabled if kubernetes is None else kubernetes
    cluster = kubernetes_components(layout) if with_k8s else []
    return [
        Packages(layout),
        OpenVSwitch(layout),
        OVN(layout),
        MariaDB(layout),
        *auth,
        NeutronServer(layout),
        Outside(layout),
        KuryrPlugin(layout),
        Docker(layout),
        *cluster,
    ]


def adopt_links_of_older_stack(layout: Layout) -> list[str]:
    """Record the links of a stack started by a kuryr-aio that kept no record
    (a reused machine), once: those its daemons evidently made.

    The evidence is the daemon's PID file, running or not: `down` removes it,
    a killed daemon leaves it (with its links), a reboot empties /run (and the
    links are gone too).  The userspace datapath's bridges are tap devices
    ("tun"); a kernel-datapath Open vSwitch of the host makes "openvswitch"
    links, which are never taken.  The older kuryr-aio deleted all of these at
    `down`; from then on only what `up` made is.
    """
    if layout.links_file.exists():
        return []
    ours = []
    if OpenVSwitch(layout).switch_pid.exists():
        ours += [name for name in DATAPATH_TAPS if links.kind(name) == "tun"]
    if Docker(layout).pidfile.exists():
        ours += sorted(links.existing([DEFAULT_BRIDGE]))
    if OUTSIDE_NETNS in netns.listnetns():
        ours += sorted(links.existing([VETH_BRIDGE_END]))
    links.record(layout, ours)
    return ours


def up(layout: Layout, log: Callable[[str], None] = say, mode: str | None = None,
       kubernetes: bool = False) -> None:
    """Start whatever is not running yet; a no-op when all is up.

    ``mode`` ("noauth" or "keystone") switches the stack's auth mode and keeps
    it for later runs; components whose configuration depends on it (Neutron,
    Kuryr) then report themselves outdated and are restarted.
    """
    started = time.monotonic()
    layout.make_dirs()
    adopt_links_of_older_stack(layout)
    if mode is not None and mode != layout.auth_mode:
        log(f"switching the auth mode from {layout.auth_mode} to {mode}")
        layout.set_auth_mode(mode)
    if kubernetes and not layout.k8s_enabled:
        log("adding the Kubernetes cluster (kept by later `up`s)")
        layout.k8s_mode_file.touch()
    for component in components(layout):
        bring_up(component, log)
        if isinstance(component, (Packages, KubeTools)):
            # apt starts Debian's services of what it installs; they must be
            # gone before the stack's own take their sockets and PID files.
            stop_debian_services(log)
    # Keystone serves keystone mode only; stopped once Neutron no longer asks it.
    if not layout.keystone_mode and Keystone(layout).down():
        log("keystone stopped (noauth mode)")
    Keystone(layout).protect_config()
    log(f"stack is up ({time.monotonic() - started:.1f} s, auth mode {layout.auth_mode}); "
        f"Neutron {layout.neutron_url}, Docker {layout.docker_host}")
    log('use it with: eval "$(kuryr-aio env)"')


def status(layout: Layout) -> list[tuple[str, list[str]]]:
    return [(c.name, safe_problems(c)) for c in components(layout)]


def down(layout: Layout, purge: bool = False, log: Callable[[str], None] = say) -> None:
    # Before anything stops: the adoption looks at the running daemons.
    adopt_links_of_older_stack(layout)
    # The VMs' dockerds stop their containers through the VMs' Kuryrs, which
    # still reach Neutron then; the VMs' NICs leave br-int before it goes.
    vm.stop_all(layout, purge=purge, log=log)
    # Hosts' chassis leave the SB, their underlay veths the bridge, before OVN
    # and the main Open vSwitch (which removes the underlay) stop.
    host.stop_all(layout, purge=purge, log=log)
    # Keystone is stopped in either mode: one left by an interrupted switch is ours too.
    for component in reversed(components(layout, keystone=True, kubernetes=True)):
        try:
            component.down()
        except Exception as exc:  # noqa: BLE001 - keep stopping the rest
            log(f"{component.name}: stop failed: {exc}")
    removed = links.delete_created(layout, DATAPATH_TAPS)
    removed += delete_node_interfaces()
    if removed:
        log(f"removed datapath tap devices: {' '.join(removed)}")
    if purge:
        for child in layout.base.iterdir() if layout.base.exists() else []:
            if child.name == "venvs":
                continue  # installed software, not state
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
        shutil.rmtree(layout.run, ignore_errors=True)
        log(f"state under {layout.base} wiped (kept {layout.base / 'venvs'})")
    log("stack is down")


def delete_node_interfaces() -> list[str]:
    """The CNI daemon's node interfaces (k8s-<network id>): OVS internal ports of
    the userspace datapath, whose tap devices ovs-vswitchd leaves behind when it
    stops.  A stale one keeps its address and its connected route to the pod
    subnet, where kubelet's probes would then go (seen: pods never Ready after
    a `down --purge` and `up --k8s`, the new pod network's interface being a
    second route to the same prefix)."""
    found = [name for name in netlink.link_names()
             if name.startswith(INTERFACE_PREFIX) and links.kind(name) == "tun"]
    return [name for name in found if netlink.delete_link(name)]


def env_exports(layout: Layout) -> str:
    if layout.keystone_mode:
        # The admin of the stack's Keystone; Neutron's URL comes from its catalog.
        lines = {"DOCKER_HOST": layout.docker_host, **admin_env(),
                 "KURYR_CONFIG_FILE": str(layout.kuryr_conf)}
        unset = "unset OS_ENDPOINT\n"
    else:
        lines = {
            "DOCKER_HOST": layout.docker_host,
            "OS_AUTH_TYPE": "none",
            "OS_ENDPOINT": layout.neutron_url,
            "KURYR_CONFIG_FILE": str(layout.kuryr_conf),
        }
        unset = ""
    if layout.k8s_enabled:
        lines["KUBECONFIG"] = str(kubeconfig(layout))
        # openstacksdk's override of the load-balancer service's URL (in
        # keystone mode the catalog has the same).
        lines["OS_LOAD_BALANCER_ENDPOINT_OVERRIDE"] = layout.octavia_url
        # Debian's kubectl 1.20 first: another (newer) one may be on the PATH.
        lines["PATH"] = f"{kubectl_path(layout).parent}:$PATH"
    return unset + "".join(f"export {key}={value}\n" for key, value in lines.items())


def main_status(layout: Layout) -> int:
    bad = 0
    for name, problems in status(layout):
        if problems:
            bad += 1
            for problem in problems:
                print(f"DOWN  {name}: {problem}")
        else:
            print(f"OK    {name}")
    for machine in [*vm.status(layout), *host.status(layout)]:
        what = machine.what
        if machine.powered_off:
            print(f"OFF   {what}: powered off; `kuryr-aio {machine.kind} up {machine.name}` "
                  "starts it")
        elif machine.problems:
            bad += 1
            for problem in machine.problems:
                print(f"DOWN  {what}: {problem}")
        else:
            print(f"OK    {what}")
    print(f"auth mode: {layout.auth_mode}")
    return 1 if bad else 0

