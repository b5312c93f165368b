"""Garbage collection: what this host's Kuryr left behind for containers that
are gone (Kuryr or dockerd killed mid-operation, a Neutron write abandoned).

Only what this host's Kuryr for Docker made is ever looked at:
  * Neutron ports with one of Docker's Kuryr device_owners (marks.DOCKER_OWNERS,
    never the CNI daemon's marks.K8S_OWNERS) bound to this host (binding:host_id),
    or, nested in a VM, tagged kuryr.vm:<the VM's port> (Scope.placement; taken
    off the VM's trunk or pairs before they are deleted);
    the CNI daemon runs its own collector with Scope.owners = marks.K8S_OWNERS,
    which finds pods' ports whose veth is gone (a pod sandbox removed without a
    CNI DEL takes its veth with its namespace);
    ports adopted from the user (tag kuryr.port.existing) are only unbound;
  * veth pairs named by Kuryr (tap<id>/tc<id>, both ends in the host namespace)
    and OVS interfaces marked external_ids:kuryr-managed=true, whose Neutron
    port is not bound to this host (a pod's port is, so a pod's veth is kept);
  * security groups named kuryr-expose-* whose description starts with this
    host's mark (kuryr@<host>:);
  * networks Kuryr created for this host's Docker (tag kuryr.host:<host>) that
    this host's dockerd no longer has; only when dockerd answers.
Anything changed less than ``grace`` seconds ago is left alone: it may belong
to a container that is starting right now.  Ages are measured on Neutron's
clock (the Date of its answers), so a host whose clock is off by minutes
neither collects what was just made nor keeps garbage forever; the start-up
collection keeps the same grace (another Kuryr of this host may be stopping
while this one starts).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import random
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

from kuryr import errors
from kuryr.binding import netlink
from kuryr.binding.ovs import OVS
from kuryr.binding.vif import CONTAINER_PREFIX, HOST_PREFIX, VIF
from kuryr.core.placement import OnHost, Placement
from kuryr.libnetwork.networks import delete_emptied_user_pools
from kuryr.localhttp import http_request
from kuryr.neutron import marks
from kuryr.neutron.client import Neutron
from kuryr.neutron.types import Port

LOG = logging.getLogger(__name__)
ROUTER_INTERFACE_OWNER = "network:router_interface"
HOST_IFNAME = re.compile(rf"^{HOST_PREFIX}([0-9a-f-]{{11}})$")


@dataclass(frozen=True)
class Garbage:
    kind: str  # "port", "adopted port", "veth", "ovs port", "security group", "network"
    name: str  # Neutron id or interface name
    reason: str
    port_id: str = ""  # for ports and veths: the Neutron port (id or 11-char prefix)
    mac: str = ""
    port: Port | None = None  # for ports: as listed (nested: detached before deletion)

    def __str__(self) -> str:
        return f"{self.kind} {self.name}: {self.reason}"


@dataclass(frozen=True)
class Scope:
    """Where to look: this host's Neutron view, switch and links."""

    neutron: Neutron
    ovs: OVS | None  # None: no Open vSwitch here (a nested VM's kernel devices, routes)
    host: str
    bridge: str
    # Ids of the networks dockerd has; None when it cannot be asked (then no
    # network is judged: a network is never deleted on a guess).
    docker_networks: Callable[[], set[str] | None] = lambda: None
    # Believe dockerd even when it knows none of this host's Kuryr networks
    # (`kuryr gc --trust-docker`: the operator vouches for docker_uri).
    trust_docker: bool = False
    # Ports the running daemon's pool holds (a recycled one may still carry its
    # last container's device_owner until the update lands).
    held: Callable[[], set[str]] = set
    user_pool_prefix: str = "kuryrPool"  # [DEFAULT] subnetpool_name_prefix
    # Whose ports: Docker's Kuryr's, or (the CNI daemon's collector) pods'.
    owners: marks.Owners = marks.DOCKER_OWNERS
    # Where this Kuryr's ports are (nested: on a VM, by tag); OnHost(host) if None.
    placement: Placement | None = None
    # The binder leaves a host end (a veth's) in this namespace while a container
    # has the port; False (nested kernel devices): nothing stays to look at, so a
    # container's port is never judged by local evidence.
    host_ends: bool = True
    # [publish] router_name when published ports are forwarded on a floating
    # IP: a collected network's subnets may still be its interfaces.
    publish_router: str = ""
    # List every visible security group for this host's expose groups (older
    # builds' too), or only those with this host's description (periodic).
    every_group: bool = True

    @property
    def where(self) -> Placement:
        return self.placement or OnHost(self.host)


def docker_network_ids(docker_uri: str, timeout: float = 10) -> set[str] | None:
    """The ids of dockerd's networks (GET /networks), None when it does not answer."""
    try:
        status, body = http_request(docker_uri, "GET", "/networks", timeout, limit=None)
        return {n["Id"] for n in json.loads(body)} if status == HTTPStatus.OK else None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        LOG.info("gc: dockerd at %s not asked about networks: %s", docker_uri, exc)
        return None


def _age(resource: object, now: datetime.datetime) -> datetime.timedelta:
    """Time since the resource last changed (its newer of created_at/updated_at),
    ``now`` being Neutron's time."""
    stamps = []
    for attr in ("created_at", "updated_at"):
        value = getattr(resource, attr, None)
        if not value:
            continue
        try:
            stamps.append(datetime.datetime.fromisoformat(str(value)))
        except ValueError:
            continue
    if not stamps:
        return datetime.timedelta(0)
    newest = max(s if s.tzinfo else s.replace(tzinfo=datetime.UTC) for s in stamps)
    return now - newest


def collect(scope: Scope, grace: float) -> list[Garbage]:
    """What can go (2-3 GETs; nothing is changed)."""
    grace_td = datetime.timedelta(seconds=grace)
    # Local state first: a veth made after this snapshot has a port made before
    # the port listing below, so it is never mistaken for one without a port.
    links = netlink.link_names()
    managed = scope.ovs.managed_interfaces() if scope.ovs is not None else {}
    ports = scope.neutron.ports(**scope.where.port_filters())
    now = scope.neutron.counter.server_now()
    held = scope.held()
    found = _ports([p for p in ports if p.id not in held], links, grace_td, now, scope.owners,
                   scope.host_ends)
    found += _veths(ports, links, managed)
    found += _security_groups(scope, ports, grace_td, now)
    found += _networks(scope, grace_td, now)
    return found


def _ports(ports: list[Port], links: set[str], grace: datetime.timedelta,
           now: datetime.datetime, owners: marks.Owners = marks.DOCKER_OWNERS,
           host_ends: bool = True) -> list[Garbage]:
    found = []
    for port in ports:
        if port.device_owner not in owners.all or _age(port, now) < grace:
            continue
        vif = VIF(port_id=port.id, mac=port.mac_address)
        if not host_ends:
            # Only a ready port whose device is gone from the VM can be judged.
            if port.device_owner == owners.pool and vif.container_ifname not in links:
                found.append(Garbage("port", port.id, "its device is gone", port_id=port.id,
                                     mac=port.mac_address, port=port))
            continue
        if vif.host_ifname not in links:
            reason = "its veth is gone (the container or the pool's plug is gone)"
        elif port.device_owner != owners.pool and vif.container_ifname in links:
            reason = "no container ever took its interface"
        else:
            continue  # in use by a container, or a free pooled port
        adopted = marks.PORT_EXISTING_TAG in (port.tags or [])
        found.append(Garbage("adopted port" if adopted else "port", port.id, reason,
                             port_id=port.id, mac=port.mac_address, port=port))
    return found


def _veths(ports: list[Port], links: set[str], managed: dict[str, str]) -> list[Garbage]:
    known = {p.id[:11] for p in ports}
    found = []
    for name in sorted(managed):
        match = HOST_IFNAME.match(name)
        if match and name not in links:
            found.append(Garbage("ovs port", name, "its interface is gone",
                                 port_id=match.group(1)))
    for name in sorted(links):
        match = HOST_IFNAME.match(name)
        if match is None or match.group(1) in known:
            continue
        if name in managed or f"{CONTAINER_PREFIX}{match.group(1)}" in links:
            found.append(Garbage("veth", name, "no Neutron port of this host has it",
                                 port_id=match.group(1)))
    return found


GROUP_FIELDS = ["id", "name", "description", "created_at", "updated_at"]


def _security_groups(scope: Scope, ports: list[Port], grace: datetime.timedelta,
                     now: datetime.datetime) -> list[Garbage]:
    in_use = {group for port in ports for group in (port.security_group_ids or [])}
    if scope.every_group:
        # Also the groups of an older build (described with the ports they
        # open): every group Kuryr can see, at start and in `kuryr gc`.
        groups = scope.neutron.security_groups(fields=GROUP_FIELDS)
    else:
        # Only this host's, filtered by Neutron: the listing of every group
        # grows with every host's exposed containers (measured: 3.4-4x slower
        # with 34 more groups), and every host lists each period.
        groups = scope.neutron.security_groups(
            fields=GROUP_FIELDS, description=marks.expose_group_description(scope.host))
    return [Garbage("security group", group.id, "no port of this host uses it")
            for group in groups
            if marks.is_hosts_expose_group(group.name or "", group.description or "",
                                           scope.host)
            and group.id not in in_use and _age(group, now) >= grace]


def _networks(scope: Scope, grace: datetime.timedelta,
              now: datetime.datetime) -> list[Garbage]:
    known = scope.docker_networks()
    if known is None:
        return []
    ours = scope.neutron.networks_tagged([marks.host_tag(scope.host)])
    docker_ids = {marks.docker_network_id_from_tags(list(net.tags)) for net in ours}
    if not docker_ids & known and not scope.trust_docker:
        # A docker_uri pointing at another dockerd (one that does not use Kuryr)
        # would make every network look forgotten: delete nothing on that evidence.
        if ours:
            LOG.warning("gc: dockerd knows none of this host's %d Kuryr networks, so "
                        "none is collected (a wrong [DEFAULT] docker_uri would look the "
                        "same); if docker_uri is right: kuryr gc --trust-docker", len(ours))
        return []
    found = []
    for net in ours:
        docker_id = marks.docker_network_id_from_tags(list(net.tags))
        adopted = any(t.startswith(marks.NET_EXISTING_TAG) for t in net.tags)
        if docker_id is None or docker_id in known or adopted or _age(net, now) < grace:
            continue
        found.append(Garbage("network", net.id,
                             f"this host's dockerd has no network {docker_id[:12]}"))
    return found


def remove(scope: Scope, garbage: list[Garbage]) -> list[Garbage]:
    """Remove what :func:`collect` found; returns what could not be removed."""
    failed = []
    for item in garbage:
        try:
            _remove_one(scope, item)
            LOG.info("gc: removed %s", item)
        except (errors.KuryrError, netlink.LinkError, OSError) as exc:
            LOG.warning("gc: cannot remove %s: %s", item, exc)
            failed.append(item)
    return failed


def _remove_network(scope: Scope, network_id: str) -> None:
    """Kuryr's own ports on it go first; a port of anyone else keeps it (Conflict)."""
    for port in scope.neutron.ports(network_id=network_id):
        if port.device_owner in marks.DOCKER_OWNERS.all \
                and scope.where.holds(port) \
                and marks.PORT_EXISTING_TAG not in port.tags:
            host_ifname = f"{HOST_PREFIX}{port.id[:11]}"
            if scope.ovs is not None:
                scope.ovs.unplug(host_ifname)
            netlink.delete_link(host_ifname)
            scope.where.detach([port])
            scope.neutron.delete_port(port.id)
    _detach_from_publish_router(scope, network_id)
    subnets = scope.neutron.subnets(network_id=network_id)
    scope.neutron.delete_network(network_id)
    delete_emptied_user_pools(scope.neutron, subnets, scope.user_pool_prefix)


def _detach_from_publish_router(scope: Scope, network_id: str) -> None:
    """The network's interfaces on Kuryr's publishing router (left when the
    Docker network was forgotten with published containers on it), which keep
    Neutron from deleting it.  Another router's interface is someone else's:
    it stays, and so does the network (Conflict)."""
    if not scope.publish_router:
        return
    interfaces = scope.neutron.ports(network_id=network_id,
                                     device_owner=ROUTER_INTERFACE_OWNER)
    if not interfaces:
        return
    router = scope.neutron.find_router(scope.publish_router)
    for port in interfaces:
        if router is not None and port.device_id == router.id:
            for subnet_id in {fixed.subnet_id for fixed in port.fixed_ips}:
                scope.neutron.remove_router_interface(router.id, subnet_id)


def _remove_one(scope: Scope, item: Garbage) -> None:
    if item.kind == "network":
        _remove_network(scope, item.name)
        return
    if item.kind == "security group":
        try:
            scope.neutron.delete_security_group(item.name)
        except errors.Conflict:
            LOG.info("gc: security group %s is in use again; kept", item.name)
        return
    host_ifname = f"{HOST_PREFIX}{item.port_id[:11]}"
    if scope.ovs is not None:
        scope.ovs.unplug(host_ifname)
    netlink.delete_link(host_ifname)
    if item.port is not None:
        scope.where.detach([item.port])  # nested: off the VM's trunk / pairs first
    if item.kind == "port":
        scope.neutron.delete_port(item.name)
    elif item.kind == "adopted port":  # the user's: give it back unbound
        scope.neutron.update_port(
            item.name, binding_host_id="" if scope.where.binding_host_id else None,
            device_owner="", device_id="")


def run_once(scope: Scope, grace: float, dry_run: bool = False) -> list[Garbage]:
    garbage = collect(scope, grace)
    if not dry_run:
        remove(scope, garbage)
    return garbage


# Each period is the interval +- this share of it, drawn anew: hosts started
# together (a cloud-wide restart, a DaemonSet rollout) would otherwise list
# Neutron in lockstep, every host's queries landing in the same second.
PERIOD_JITTER = 0.2


class Collector:
    """Collects periodically in a daemon thread (every ``interval`` seconds,
    jittered)."""

    def __init__(self, scope: Scope, interval: float, grace: float,
                 uniform: Callable[[float, float], float] = random.uniform) -> None:
        # The start-up pass (and `kuryr gc`) looked at every group.
        self.scope = dataclasses.replace(scope, every_group=False)
        self.interval = interval
        self.grace = grace
        self._uniform = uniform
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gc", daemon=True)

    def next_period(self) -> float:
        return self.interval * self._uniform(1 - PERIOD_JITTER, 1 + PERIOD_JITTER)

    def start(self) -> None:
        if self.interval > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.next_period()):
            try:
                run_once(self.scope, self.grace)
            except Exception as exc:  # noqa: BLE001 - try again next interval
                LOG.warning("gc: collection failed: %s", exc)
