"""`kuryr cni-daemon`: Kuryr's Kubernetes node daemon.  Built from config, on the
same core as Docker's Kuryr (kuryr/server.py) but with device owners of its
own (marks.K8S_OWNERS), serving kuryr-cni on a root-only unix socket."""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from oslo_config import cfg

from kuryr import logs
from kuryr.binding.ovs import OVS
from kuryr.binding.plugging import UnsupportedDriver, build_binder
from kuryr.core.background import Background
from kuryr.core.daemon import Daemon
from kuryr.core.lull import Lull
from kuryr.core.naming import NoNames
from kuryr.core.pool import PortPool
from kuryr.core.ports import PortLifecycle, Settings
from kuryr.core.state import State
from kuryr.k8s import api
from kuryr.k8s.app import CniService, build_app
from kuryr.k8s.host_reach import HostReach
from kuryr.k8s.namespace_cache import NamespaceNetworkCache
from kuryr.k8s.networks import NamespaceNetworks, PodNetworks, SharedNetwork, look_up_network
from kuryr.k8s.pods import PodAttachments
from kuryr.k8s.watch import Store, Watcher
from kuryr.libnetwork import gc
from kuryr.listen import unix_socket
from kuryr.neutron import marks
from kuryr.neutron.client import Neutron, connect
from kuryr.neutron.types import Port

LOG = logging.getLogger(__name__)
STOP_WRITES_TIMEOUT = 30.0
# A burst's ADDs come a fraction of a second apart, and a pod still starts its
# containers for a few seconds after its ADD: this long without one is a lull.
LULL_QUIET = 3.0
POOL_BATCH = 10  # ports per bulk create (a node pool of 50 fills in 5 rounds)


@dataclass
class Node:
    """A running CNI daemon: the API it serves and the daemon owning its threads."""

    service: CniService
    daemon: Daemon
    host: str


def build(conf: cfg.ConfigOpts, neutron: Neutron | None = None) -> Node:
    """Every collaborator, built once from config; the threads started in order."""
    host = conf.host or socket.gethostname()
    bridge = conf.binding.ovs_bridge
    ovs = OVS(conf.binding.ovsdb_connection)
    if conf.port_driver != "veth":
        raise SystemExit(f"kuryr cni-daemon: [DEFAULT] port_driver = {conf.port_driver}: pods "
                         "inside VMs (nested) are not supported by the CNI daemon yet; it "
                         "runs on hosts that are OVN chassis (port_driver = veth)")
    try:
        binder = build_binder(conf.port_driver, ovs, host)
    except UnsupportedDriver as exc:
        raise SystemExit(f"kuryr cni-daemon: {exc}") from None
    if problem := ovs.chassis_problem(host):
        raise SystemExit(f"kuryr cni-daemon: {problem}")
    neutron = neutron or connect(conf)
    daemon = Daemon()
    daemon.start("Open vSwitch connection", lambda: None, ovs.close)  # stopped last
    networks = _pod_networks(conf, neutron, daemon)  # reaches Neutron, or does not start
    groups = tuple(conf.kubernetes.pod_security_groups)
    node_port = _node_port(conf, neutron, ovs, host, networks)
    if node_port is not None:
        # Named, not left to Neutron: a port back in the pool gets them again,
        # whatever groups a NetworkPolicy gave it meanwhile.
        groups = groups or node_port.security_group_ids
    patience = conf.kubernetes.defer_writes_during_starts
    lull = Lull(quiet=LULL_QUIET, patience=patience) if patience > 0 else None
    background = Background(neutron.counter.operation, lull=lull)
    pool = PortPool(neutron, binder, background, host, conf.kubernetes.pool_size, bridge,
                    owners=marks.K8S_OWNERS, security_group_ids=groups, lull=lull,
                    batch=POOL_BATCH)
    lifecycle = PortLifecycle(neutron, binder, pool, background, State(), Settings(
        host=host, default_bridge=bridge, owners=marks.K8S_OWNERS,
        wait_for_refill=conf.kubernetes.wait_for_refill,
        plug_timeout=conf.neutron.vif_plugging_timeout, plug_is_fatal=True,
        security_group_ids=groups), NoNames())
    pods = PodAttachments(lifecycle, networks, pool.held,
                          lambda: pods_plugged_here(neutron, ovs, host), lull=lull)
    daemon.start("background writer", background.start,
                 lambda: background.stop(STOP_WRITES_TIMEOUT))
    daemon.start("port cleanup", lambda: None, lifecycle.stop)
    daemon.start("port pool", pool.start, pool.stop)
    free = pool.restore()
    if free:
        LOG.info("took back %d ready pooled ports", free)
    # Pods whose record in Neutron (device_id = uid) was queued when the process
    # died: written again from what their interfaces keep (1 GET).
    lost = lifecycle.record_lost_endpoints()
    if lost:
        LOG.info("recording %d pods again whose record was lost with the process", lost)
    if isinstance(networks, SharedNetwork):
        pool.refill_soon(networks.network_for(""))  # ready ports before the first pod
    # namespace driver: a namespace's pool fills when its first pod here takes a
    # port (PortPool.take asks for a refill), not for every namespace of the
    # cluster on every node.
    collector = _collector_of_pods(conf, neutron, ovs, host, lifecycle, pool)
    removed = gc.run_once(collector.scope, conf.gc.grace)
    if removed:
        LOG.info("removed %d leftovers of pods that are gone", len(removed))
    daemon.start("garbage collector", collector.start, collector.stop)
    return Node(service=CniService(pods=pods, healthy=_health_of(ovs, bridge)),
                daemon=daemon, host=host)


def _pod_networks(conf: cfg.ConfigOpts, neutron: Neutron, daemon: Daemon) -> PodNetworks:
    """The [kubernetes] pod_network_driver; for ``namespace``, the Namespace watch
    feeding it is started (and later stopped) by ``daemon``."""
    if conf.kubernetes.pod_network_driver == "shared":
        return SharedNetwork.look_up(neutron, conf.kubernetes.pod_network)
    cache = NamespaceNetworkCache(conf.kubernetes.namespace_network_wait)
    try:
        source = api.KubeApi(api.connect(conf))
    except Exception as exc:  # noqa: BLE001 - a bad kubeconfig: say so and stop
        raise SystemExit(f"kuryr cni-daemon: cannot reach the Kubernetes API server "
                         f"([kubernetes] kubeconfig): {exc}") from None
    watch = Watcher("Namespace", source, Store("Namespace"), cache.observe)
    daemon.start("Namespace watch", watch.start, watch.stop)
    return NamespaceNetworks(neutron, cache)


def _node_port(conf: cfg.ConfigOpts, neutron: Neutron, ovs: OVS, host: str,
               networks: PodNetworks) -> Port | None:
    """kubelet's probes reach the pods through the node's own port: on the pod
    network (shared), or on [kubernetes] node_network (namespace), with routes
    to every namespace's subnet through pod_router.  None: no such port."""
    reach = HostReach(neutron, ovs, conf.kubernetes.node_name or host, host,
                      conf.binding.ovs_bridge)
    if isinstance(networks, SharedNetwork):
        pod_net = networks.network_for("")
        return reach.ensure(pod_net.neutron_id, networks.subnet_of(pod_net), pod_net.mtu)
    if not conf.kubernetes.node_network:
        LOG.warning("[kubernetes] node_network is empty: kubelet's probes from this host "
                    "will not reach pods")
        return None
    node_net = look_up_network(neutron, conf.kubernetes.node_network, "node_network",
                               "the node's own port is on")
    return reach.ensure_routed(node_net.neutron_id, node_net.subnets[0], node_net.mtu,
                               _pod_prefixes(conf, neutron))


def _pod_prefixes(conf: cfg.ConfigOpts, neutron: Neutron) -> list[str]:
    """Where namespaces' subnets come from: [kubernetes] pod_subnetpool's prefixes."""
    name = conf.kubernetes.pod_subnetpool
    pool = neutron.find_subnetpool(name) if name else None
    if pool is None:
        raise SystemExit(f"kuryr cni-daemon: [kubernetes] node_network needs "
                         f"pod_subnetpool (the namespaces' prefixes); {name!r} not found")
    return list(pool.prefixes)


def _collector_of_pods(conf: cfg.ConfigOpts, neutron: Neutron, ovs: OVS, host: str,
                       lifecycle: PortLifecycle, pool: PortPool) -> gc.Collector:
    """Pods' ports of this host whose veth is gone (the runtime removed a sandbox
    and its namespace without a CNI DEL: kubelet or containerd killed, a node
    rebooted): unplugged and deleted after [gc] grace.  Docker's are never seen."""
    def in_use() -> set[str]:
        return lifecycle.state.live_port_ids(conf.gc.grace) | pool.held()

    scope = gc.Scope(neutron=neutron, ovs=ovs, host=host, bridge=conf.binding.ovs_bridge,
                     held=in_use, owners=marks.K8S_OWNERS)
    return gc.Collector(scope, conf.gc.interval, conf.gc.grace)


def pods_plugged_here(neutron: Neutron, ovs: OVS, host: str) -> dict[str, str]:
    """Container id -> port id of every attachment this daemon plugged: OVS
    interfaces naming a container whose port has a Kubernetes owner and is bound
    to this host (1 GET; Docker's endpoints on this host are never included)."""
    ours = {p.id for p in neutron.ports(binding_host_id=host)
            if p.device_owner in marks.K8S_OWNERS.all}
    return {cid: port_id for cid, port_id in ovs.endpoint_ports().items() if port_id in ours}


def _health_of(ovs: OVS, bridge: str) -> Callable[[], str | None]:
    """Neutron was reached at start (the pod network was looked up); OVS must
    answer and have the bridge now."""
    def problem() -> str | None:
        try:
            if ovs.bridge_exists(bridge):
                return None
            return f"Open vSwitch has no bridge {bridge}"
        except Exception as exc:  # noqa: BLE001 - any failure is "not available"
            return f"Open vSwitch does not answer: {exc}"
    return problem


def serve(conf: cfg.ConfigOpts) -> int:
    logs.configure(conf, "kuryr-cni-daemon.log")
    os.umask(0o077)
    path = Path(conf.kubernetes.daemon_socket)
    if not path.is_absolute():
        raise SystemExit(f"kuryr cni-daemon: [kubernetes] daemon_socket {path} is not an "
                         "absolute path")
    # Root only (0600): whoever can write to it creates and plugs Neutron ports.
    listener = unix_socket(path, "", "[kubernetes] daemon_socket")
    try:
        node = build(conf)
    except BaseException:
        listener.close()
        path.unlink(missing_ok=True)
        raise
    LOG.info("kuryr cni-daemon serving %s for host %s", path, node.host)
    # As `kuryr serve`: uvicorn answers the calls in flight on SIGTERM, then
    # raises the signal again with this handler, so the threads stop in order.
    signal.signal(signal.SIGTERM, _stop_serving)
    try:
        uvicorn.run(build_app(node.service), log_level="warning",
                    timeout_graceful_shutdown=5, fd=listener.detach())
    except _Stopping:
        pass
    finally:
        node.daemon.stop()
        path.unlink(missing_ok=True)
    return 0


class _Stopping(Exception):
    """SIGTERM arrived."""


def _stop_serving(signum: int, frame: object) -> None:
    raise _Stopping
