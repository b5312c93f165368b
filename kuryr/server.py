"""`kuryr serve`: build everything from config, then serve Docker's plugin API."""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import uvicorn
from oslo_config import cfg

from kuryr import logs
from kuryr.binding import netlink
from kuryr.binding.ovs import OVS
from kuryr.binding.plugging import Nested, UnsupportedDriver, build_binder
from kuryr.core.background import Background
from kuryr.core.daemon import Daemon
from kuryr.core.naming import NoNames
from kuryr.core.placement import (
    NestedSetupError,
    OnHost,
    Placement,
    find_vm_port,
    nested_placement,
    vm_port_once_active,
)
from kuryr.core.pool import PortPool
from kuryr.core.ports import PortLifecycle, Settings
from kuryr.core.state import State
from kuryr.libnetwork import gc, models
from kuryr.libnetwork.app import Plugin, build_app
from kuryr.libnetwork.endpoints import Endpoints
from kuryr.libnetwork.floating import FloatingPublisher
from kuryr.libnetwork.ipam import DefaultPools, Ipam
from kuryr.libnetwork.names import DockerNames
from kuryr.libnetwork.networks import Networks, NetworkSettings
from kuryr.libnetwork.ports import Publishing
from kuryr.listen import unix_socket
from kuryr.neutron import marks
from kuryr.neutron.client import Neutron, connect
from kuryr.neutron.types import SubnetPool
from kuryr.publish.forwarder import Forwarder, Limits

LOG = logging.getLogger(__name__)

# Kuryr's default pools cover every address of their family, so the subnets
# Docker asks Kuryr to choose come from one pool and Neutron itself refuses
# overlaps among them; a --subnet gets a kuryrPool-<cidr> pool of its own
# (kuryr-libnetwork's layout) and is checked against these before it is made.
COVER_ALL = {4: ("0.0.0.0/0", 24), 6: ("::/0", 64)}
MIN_PREFIXLEN = {4: 8, 6: 48}
STOP_WRITES_TIMEOUT = 30.0


def ensure_subnetpools(neutron: Neutron, conf: cfg.ConfigOpts) -> DefaultPools:
    names = {4: conf.neutron.default_subnetpool_v4, 6: conf.neutron.default_subnetpool_v6}
    pools: dict[int, SubnetPool] = {}
    for version, name in names.items():
        pool = neutron.find_subnetpool(name)
        if pool is None:
            prefix, length = COVER_ALL[version]
            pool = neutron.create_subnetpool(
                name=name, prefixes=[prefix], default_prefix_length=length,
                minimum_prefix_length=MIN_PREFIXLEN[version],
                description="Kuryr: subnets of Docker networks")
            LOG.info("created subnetpool %s (%s)", name, pool.id)
        pools[version] = pool
    return DefaultPools(pools=pools, fallback_prefixes={
        4: conf.neutron.default_subnetpool_v4_prefix,
        6: conf.neutron.default_subnetpool_v6_prefix},
        user_pool_prefix=conf.subnetpool_name_prefix)


def uses_ovs(conf: cfg.ConfigOpts) -> bool:
    """Whether containers' interfaces are on an Open vSwitch here (on a nested VM
    without OVS nothing is recorded on or collected from one)."""
    return conf.port_driver == "veth" or (
        conf.port_driver == "nested-vlan" and conf.binding.vlan_tagging == "ovs")


def keeps_host_ends(conf: cfg.ConfigOpts) -> bool:
    """Whether a veth's end stays in this namespace while a container has its port."""
    return uses_ovs(conf) or (
        conf.port_driver == "nested-macvlan" and conf.binding.pairs_device == "routed-veth")


def gc_scope(conf: cfg.ConfigOpts, neutron: Neutron, ovs: OVS, host: str,
             in_use: Callable[[], set[str]] = set,
             placement: Placement | None = None) -> gc.Scope:
    return gc.Scope(neutron=neutron, ovs=ovs if uses_ovs(conf) else None, host=host,
                    bridge=conf.binding.ovs_bridge,
                    docker_networks=lambda: gc.docker_network_ids(conf.docker_uri),
                    held=in_use, user_pool_prefix=conf.subnetpool_name_prefix,
                    placement=placement, host_ends=keeps_host_ends(conf),
                    publish_router=conf.publish.router_name
                    if conf.publish.floating_ip_network else "")


def placement_for(conf: cfg.ConfigOpts, neutron: Neutron, host: str) -> Placement:
    """Where this Kuryr's ports live: this host, or (nested drivers) the VM whose
    port [binding] link_iface is on; SystemExit naming what to fix."""
    if conf.port_driver == "veth":
        return OnHost(host)
    link = conf.binding.link_iface
    try:
        vm_port = vm_port_once_active(lambda: find_vm_port(
            neutron, conf.binding.parent_port, netlink.interface_mac(link) if link else None,
            link))
        placement = nested_placement(conf.port_driver, host, neutron, vm_port)
    except NestedSetupError as exc:
        raise SystemExit(f"kuryr: {exc}") from None
    LOG.info("nested (%s): containers reach the network through VM port %s",
             conf.port_driver, vm_port.id)
    if conf.port_driver == "nested-macvlan":
        LOG.warning("nested-macvlan: containers' packets pass the VM port's security groups, "
                    "not their own (--expose groups are made but cannot filter)")
    return placement


def _default_host_ip(value: str) -> str:
    if value:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise SystemExit(f"kuryr: [publish] default_host_ip {value!r} is not an "
                             "IP address") from None
    return value


@dataclass
class Service:
    """A running Kuryr: the plugin Docker talks to and the daemon owning its threads."""

    plugin: Plugin
    daemon: Daemon
    host: str


def build(conf: cfg.ConfigOpts, neutron: Neutron | None = None) -> Service:
    """Every collaborator, built once from config, and the threads started in order."""
    host = conf.host or socket.gethostname()
    ovs = OVS(conf.binding.ovsdb_connection)
    neutron = neutron or connect(conf)
    placement = placement_for(conf, neutron, host)
    if conf.port_driver == "veth" and (problem := ovs.chassis_problem(host)):
        raise SystemExit(f"kuryr: {problem}")
    try:
        binder = build_binder(conf.port_driver, ovs, host, Nested(
            conf.binding.link_iface, conf.binding.vlan_tagging, placement.vlan_of,
            conf.binding.pairs_device))
    except UnsupportedDriver as exc:
        raise SystemExit(f"kuryr: {exc}") from None
    extensions = neutron.extensions()
    defaults = ensure_subnetpools(neutron, conf)
    state = State()
    background = Background(neutron.counter.operation)
    bridge = conf.binding.ovs_bridge
    # Always a pool: [pool] size = 0 only sets the default, and a network
    # can still ask for ready ports (-o kuryr.pool.size=N).
    pool = PortPool(neutron, binder, background, host, conf.pool.size, bridge,
                    owners=marks.DOCKER_OWNERS, placement=placement)
    dns_enabled = "dns-integration" in extensions
    names = DockerNames(conf.docker_uri) if dns_enabled and conf.container_names_in_dns \
        else None
    lifecycle = PortLifecycle(neutron, binder, pool, background, state, Settings(
        host=host, default_bridge=bridge, owners=marks.DOCKER_OWNERS, dns_enabled=dns_enabled,
        wait_for_refill=conf.pool.wait_for_refill,
        plug_timeout=conf.neutron.vif_plugging_timeout,
        plug_is_fatal=conf.neutron.vif_plugging_is_fatal, placement=placement),
        names or NoNames())
    floating = FloatingPublisher(neutron, host, conf.publish.floating_ip_network,
                                 conf.publish.router_name)
    forwarder = Forwarder(limits=Limits(
        per_port=conf.publish.max_connections_per_port,
        per_process=conf.publish.max_connections,
        tcp_idle=conf.publish.tcp_idle_timeout, udp_idle=conf.publish.udp_idle_timeout))
    publishing = Publishing(neutron, forwarder, floating, ovs if uses_ovs(conf) else None,
                            host,
                            conf.process_external_connectivity,
                            _default_host_ip(conf.publish.default_host_ip))
    networks = Networks(neutron, state, pool, background, binder, floating, NetworkSettings(
        host=host, default_bridge=bridge, enable_dhcp=conf.neutron.enable_dhcp,
        user_pool_prefix=conf.subnetpool_name_prefix, placement=placement,
        docker_networks=lambda: gc.docker_network_ids(conf.docker_uri)))
    ipam = Ipam(neutron, state, networks, lifecycle, defaults, models.AddressSpaces(
        LocalDefaultAddressSpace=conf.local_default_address_space,
        GlobalDefaultAddressSpace=conf.global_default_address_space))
    plugin = Plugin(ipam=ipam, networks=networks,
                    endpoints=Endpoints(networks, lifecycle, publishing,
                                        conf.binding.veth_dst_prefix,
                                        conf.docker_netns_dir),
                    counter=neutron.counter, call_timeout=conf.plugin_call_timeout,
                    scope=conf.capability_scope)

    def in_use() -> set[str]:
        return state.live_port_ids(conf.gc.grace) | pool.held()

    daemon = Daemon()
    daemon.start("background writer", background.start,
                 lambda: background.stop(STOP_WRITES_TIMEOUT))
    if names is not None:
        daemon.start("container names", lambda: names.start(lifecycle.name_endpoint),
                     names.stop)
    daemon.start("port cleanup", lambda: None, lifecycle.stop)
    daemon.start("published ports", forwarder.start, forwarder.stop)
    daemon.start("port pool", pool.start, pool.stop)
    free = pool.restore()
    if free:
        LOG.info("took back %d ready pooled ports", free)
    lost = lifecycle.record_lost_endpoints()
    if lost:
        LOG.info("recording %d endpoints again whose record was lost with the process", lost)
    scope = gc_scope(conf, neutron, ovs, host, in_use, placement)
    removed = gc.run_once(scope, conf.gc.grace)
    if removed:
        LOG.info("removed %d leftovers of containers that are gone", len(removed))
    restored = publishing.restore()
    if restored:
        LOG.info("serving the published ports of %d running containers again", restored)
    collector = gc.Collector(scope, conf.gc.interval, conf.gc.grace)
    daemon.start("garbage collector", collector.start, collector.stop)
    return Service(plugin=plugin, daemon=daemon, host=host)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tls_args(conf: cfg.ConfigOpts) -> dict:
    files = {"ssl_cert_file": conf.ssl_cert_file, "ssl_key_file": conf.ssl_key_file,
             "ssl_client_ca_file": conf.ssl_client_ca_file}
    if not any(files.values()):
        return {}
    missing = [name for name, value in files.items() if not value]
    if missing:
        raise SystemExit(f"kuryr: TLS needs {', '.join(missing)} too (client certificates "
                         "are required: the plugin API creates Neutron resources)")
    for name, value in files.items():
        if not Path(value).is_file():
            raise SystemExit(f"kuryr: {name} {value} does not exist")
    return {"ssl_certfile": conf.ssl_cert_file, "ssl_keyfile": conf.ssl_key_file,
            "ssl_ca_certs": conf.ssl_client_ca_file, "ssl_cert_reqs": ssl.CERT_REQUIRED}


def listen_args(conf: cfg.ConfigOpts) -> dict:
    """uvicorn's listening arguments for kuryr_uri, refusing insecure ones."""
    uri = urlparse(conf.kuryr_uri)
    if uri.scheme == "unix":
        # detach(): the descriptor now belongs to uvicorn, not to a socket object
        return {"fd": unix_socket(Path(uri.path), conf.socket_group, "kuryr_uri").detach()}
    if uri.scheme not in ("http", "https", "tcp"):
        raise SystemExit(f"kuryr: kuryr_uri {conf.kuryr_uri!r} must be unix:// or http(s)://")
    host, port = uri.hostname or "127.0.0.1", uri.port or 23750
    tls = _tls_args(conf)
    if not tls and not _is_loopback(host):
        raise SystemExit(
            f"kuryr: refusing to serve the plugin API on {host}:{port} without TLS: anyone "
            "who reaches it can create Neutron ports. Bind 127.0.0.1, or set "
            "ssl_cert_file, ssl_key_file and ssl_client_ca_file.")
    spec_dir = Path(conf.plugin_spec_dir)
    spec_dir.mkdir(parents=True, exist_ok=True)
    if tls:
        # Docker needs its own client certificate for this: a kuryr.json spec with
        # TLSConfig, written by whoever holds that certificate (docs/usage.md).
        LOG.info("TLS listener: Docker needs %s/kuryr.json with TLSConfig", spec_dir)
    else:
        (spec_dir / "kuryr.spec").write_text(f"http://{host}:{port}\n")
    return {"host": host, "port": port, **tls}


def serve(conf: cfg.ConfigOpts) -> int:
    logs.configure(conf, "kuryr.log")
    os.umask(0o077)
    listen = listen_args(conf)  # first: an insecure listener is refused before any work
    try:
        service = build(conf)
    except BaseException:
        _discard_listener(conf, listen)
        raise
    LOG.info("kuryr serving %s for host %s", conf.kuryr_uri, service.host)
    # uvicorn answers the calls in flight on SIGTERM, then raises the signal again
    # with the handler it found: this one, so the threads are stopped in order
    # below instead of the process dying with them.
    signal.signal(signal.SIGTERM, _stop_serving)
    try:
        uvicorn.run(build_app(service.plugin), log_level="warning",
                    timeout_graceful_shutdown=5, **listen)
    except _Stopping:
        pass
    finally:
        service.daemon.stop()
    return 0


def _discard_listener(conf: cfg.ConfigOpts, listen: dict) -> None:
    """Kuryr could not start: its socket goes, so that dockerd finds no plugin
    there rather than one that never answers."""
    if "fd" not in listen:
        return
    os.close(listen["fd"])
    Path(urlparse(conf.kuryr_uri).path).unlink(missing_ok=True)


class _Stopping(Exception):
    """SIGTERM arrived."""


def _stop_serving(signum: int, frame: object) -> None:
    raise _Stopping
