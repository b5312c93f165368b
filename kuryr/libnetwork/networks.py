"""Docker networks as Neutron networks.

Neutron requests: CreateNetwork 3 (POST network, PUT tags, POST subnet; one
more POST per extra subnet; Neutron 29 takes no tags in a network's POST);
DeleteNetwork 1 DELETE when the network is known to this
process, 2 after a restart.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kuryr import errors
from kuryr.core import ranges
from kuryr.core.background import Background
from kuryr.core.binder import Binder, vif_of
from kuryr.core.model import NetworkRecord, PendingPool
from kuryr.core.placement import OnHost, Placement
from kuryr.core.pool import PortPool
from kuryr.core.state import State
from kuryr.libnetwork import models
from kuryr.libnetwork.floating import FloatingPublisher
from kuryr.neutron import marks
from kuryr.neutron.client import Neutron
from kuryr.neutron.types import Network, Subnet

LOG = logging.getLogger(__name__)

NET_ID_OPTIONS = ("neutron.net.uuid", "neutron.net.name")
POOL_SIZE_OPTION = "kuryr.pool.size"  # -o kuryr.pool.size=N: ports kept ready
# Bounded well below plugin_call_timeout: if a network's writes take longer, the
# Conflict path of DeleteNetwork deletes this host's unused Kuryr ports itself.
WAIT_FOR_WRITES = 20.0


@dataclass(frozen=True)
class NetworkSettings:
    host: str
    default_bridge: str
    enable_dhcp: bool = False
    user_pool_prefix: str = "kuryrPool"  # kuryrPool-<cidr>: subnetpools of --subnet
    # Where this Kuryr's ports are (nested: on a VM); OnHost(host) if None.
    placement: Placement | None = None
    # The ids of this host's dockerd's networks (None: it cannot be asked): which
    # of the Docker networks sharing an adopted Neutron network is this host's.
    docker_networks: Callable[[], set[str] | None] = lambda: None

    @property
    def where(self) -> Placement:
        return self.placement or OnHost(self.host)


def _truthy(value: object) -> bool:
    return str(value).lower() in ("true", "1", "yes")


class Networks:
    def __init__(self, neutron: Neutron, state: State, pool: PortPool,
                 background: Background, binder: Binder, floating: FloatingPublisher,
                 settings: NetworkSettings) -> None:
        self.neutron = neutron
        self.state = state
        self.pool = pool
        self.background = background
        self.binder = binder
        self.floating = floating
        self.settings = settings

    # -- lookups used by the other handlers --------------------------------------------
    def by_docker_id(self, docker_id: str) -> NetworkRecord:
        """The network Kuryr made or adopted for ``docker_id`` (cached; else 2 GETs)."""
        known = self.state.network(docker_id)
        if known is not None:
            return known
        if not marks.DOCKER_ID.match(docker_id):
            raise errors.InvalidInput(f"{docker_id!r} is not a Docker network id")
        found = self.neutron.networks_tagged(marks.network_tags(docker_id))
        if not found:
            raise errors.NotFound(
                f"no Neutron network is marked with Docker network {docker_id}")
        return self._load(docker_id, found[0])

    def by_neutron_id(self, neutron_id: str) -> NetworkRecord | None:
        """The Docker network whose Neutron network this is (cached; else 2 GETs),
        None when it is no Docker network's."""
        known = self.state.network_by_neutron_id(neutron_id)
        if known is not None:
            return known
        try:
            net = self.neutron.get_network(neutron_id)
        except errors.NotFound:
            return None
        docker_id = self._docker_id_of(net)
        return self._load(docker_id, net) if docker_id else None

    def _docker_id_of(self, net: Network) -> str | None:
        """This host's Docker network on ``net``.  One Neutron network adopted by
        the dockerds of several hosts or VMs carries all their ids: the one this
        dockerd knows is this host's (1 Docker request, only then)."""
        candidates = marks.docker_network_ids_from_tags(list(net.tags))
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        known = self.settings.docker_networks() or set()
        mine = [c for c in candidates if c in known]
        return mine[0] if len(mine) == 1 else None

    def by_pool(self, pool: marks.PoolId) -> NetworkRecord | None:
        """The network behind a pool id: by its token (1 GET after a restart); pool
        ids of earlier versions name only a CIDR, which must then be unambiguous."""
        if pool.token:
            tag = marks.pool_token_tag(pool.token)
            cached = self.state.networks_tagged(tag)
            if cached:
                return cached[0]
            found = self.neutron.networks_tagged([tag])
            docker_id = self._docker_id_of(found[0]) if found else None
            return self._load(docker_id, found[0]) if found and docker_id else None
        candidates = self.state.networks_with_cidr(pool.cidr)
        if not candidates:
            for subnet in self.neutron.subnets(cidr=pool.cidr):
                net = self.neutron.get_network(subnet.network_id)
                docker_id = self._docker_id_of(net)
                if docker_id:
                    candidates.append(self._load(docker_id, net))
        if len(candidates) > 1:
            raise errors.Conflict(
                f"pool {pool} names only the CIDR {pool.cidr}, which several Kuryr networks "
                "use: re-create the Docker network to give it a pool of its own")
        return candidates[0] if candidates else None

    def _load(self, docker_id: str, net: Network) -> NetworkRecord:
        subnets = tuple(self.neutron.subnets(network_id=net.id))
        adopted = any(t.startswith(marks.NET_EXISTING_TAG) for t in net.tags)
        record = NetworkRecord(docker_id=docker_id, neutron_id=net.id, mtu=net.mtu,
                               subnets=subnets, adopted=adopted, tags=net.tags)
        self.state.add_network(record)
        return record

    # -- CreateNetwork -----------------------------------------------------------------
    def create(self, req: models.CreateNetworkRequest) -> None:
        docker_id = req.NetworkID
        if not marks.DOCKER_ID.match(docker_id):
            raise errors.InvalidInput(f"{docker_id!r} is not a Docker network id")
        if self.state.network(docker_id) is not None:
            return  # replayed request
        options = (req.Options or {}).get(models.GENERIC_OPTIONS) or {}
        if not isinstance(options, dict):
            raise errors.InvalidInput(f"{models.GENERIC_OPTIONS} must be a map of options")
        pools = [*(req.IPv4Data or []), *(req.IPv6Data or [])]
        claimed = [self.state.claim_pending_pool(p.Pool) for p in pools]
        tags = [*self._feature_tags(req, options),
                *(marks.pool_token_tag(p.token) for p in claimed if p is not None)]
        existing_ref = next((str(options[k]) for k in NET_ID_OPTIONS if options.get(k)), None)
        if existing_ref:
            record = self._adopt(docker_id, existing_ref, pools, claimed, tags)
        else:
            record = self._create(docker_id, pools, claimed,
                                  _truthy(options.get("neutron.net.shared", "")), tags)
        for pool in pools:
            self.state.unreserve_cidr(pool.Pool)
        self.pool.refill_soon(record)

    @staticmethod
    def _feature_tags(req: models.CreateNetworkRequest, options: dict[str, object]) -> list[str]:
        """Tags recording what Kuryr must know after a restart (set in the same request)."""
        tags = []
        if _truthy((req.Options or {}).get(models.ENABLE_IPV6_OPTION)):
            tags.append(marks.NET_IPV6_TAG)
        size = options.get(POOL_SIZE_OPTION)
        if size is not None:
            try:
                tags.append(f"{marks.NET_POOL_TAG}{max(0, int(str(size)))}")
            except ValueError as exc:
                raise errors.InvalidInput(
                    f"{POOL_SIZE_OPTION} must be a number, not {size!r}") from exc
        return tags

    def _create(self, docker_id: str, pools: list[models.IPAMData],
                claimed: list[PendingPool | None], shared: bool,
                extra_tags: list[str]) -> NetworkRecord:
        already = self.neutron.networks_tagged(marks.network_tags(docker_id)) \
            if not pools else []
        if already:  # replay after a restart, without pools to tell us more
            return self._load(docker_id, already[0])
        # The host tag lets this host's garbage collector find networks Docker
        # forgot (a DeleteNetwork that failed, a crash mid-CreateNetwork).
        tags = [*marks.network_tags(docker_id), marks.host_tag(self.settings.host),
                *extra_tags]
        net = self.neutron.create_network(marks.network_name(docker_id), shared)
        try:
            self.neutron.set_network_tags(net.id, tags)
            subnets = tuple(self._create_subnet(net.id, pool, pending)
                            for pool, pending in zip(pools, claimed, strict=True))
        except Exception:
            LOG.warning("network %s: rolling back Neutron network %s", docker_id[:12], net.id)
            self.neutron.delete_network(net.id)
            raise
        record = NetworkRecord(docker_id=docker_id, neutron_id=net.id, mtu=net.mtu,
                               subnets=subnets, tags=tuple(sorted(set(tags))))
        self.state.add_network(record)
        return record

    def _create_subnet(self, network_id: str, pool: models.IPAMData,
                       pending: PendingPool | None) -> Subnet:
        if pending is not None and pending.existing_subnet_id:
            raise errors.InvalidInput(
                f"subnet {pool.Pool} exists in Neutron: adopt it together with its network "
                "(-o neutron.net.uuid=...)")
        cidr = str(ipaddress.ip_network(pool.Pool))
        gateway = pool.Gateway.split("/")[0] if pool.Gateway else None
        if pending is not None and pending.overlap_pools:
            self._refuse_overlap(cidr, pending.overlap_pools)
        allocation = None
        if pending is not None and pending.ip_range:
            try:
                allocation = ranges.allocation_pools(cidr, pending.ip_range, gateway)
            except ValueError as exc:
                raise errors.InvalidInput(str(exc)) from exc
        return self.neutron.create_subnet(
            network_id, cidr, marks.subnet_name(cidr), gateway,
            enable_dhcp=self.settings.enable_dhcp,
            subnet_pool_id=pending.subnetpool_id if pending else None,
            allocation_pools=allocation)

    def _refuse_second_adoption_here(self, net: Network, ref: str, docker_id: str) -> None:
        """One dockerd adopts a Neutron network once; the dockerds of other hosts and
        VMs may too (their containers then share it), each with its own tags."""
        others = [c for c in marks.docker_network_ids_from_tags(list(net.tags))
                  if c != docker_id]
        if not others:
            return
        known = self.settings.docker_networks()
        if known is None:
            raise errors.Conflict(
                f"Neutron network {ref!r} is already used by Docker networks, and this "
                "host's dockerd cannot be asked whether one of them is its own")
        here = [c for c in others if c in known]
        if here:
            raise errors.Conflict(
                f"Neutron network {ref!r} is already used by Docker network {here[0][:12]}")
        LOG.info("Neutron network %s is shared with Docker networks of other hosts or VMs",
                 net.id)

    def _refuse_overlap(self, cidr: str, kuryr_pools: tuple[str, ...]) -> None:
        """Two of Kuryr's networks never share addresses (1 GET).  Checked here,
        not by Neutron: each --subnet has a subnetpool of its own."""
        net = ipaddress.ip_network(cidr)
        for subnet in self.neutron.subnets(subnet_pool_id=list(kuryr_pools),
                                           ip_version=net.version):
            if net.overlaps(ipaddress.ip_network(subnet.cidr)):
                raise errors.Conflict(
                    f"subnet {cidr} overlaps subnet {subnet.cidr} ({subnet.id}) of Neutron "
                    f"network {subnet.network_id}, which Kuryr already uses")

    def _adopt(self, docker_id: str, ref: str, pools: list[models.IPAMData],
               claimed: list[PendingPool | None], extra_tags: list[str]) -> NetworkRecord:
        net = self.neutron.find_network(ref)
        self._refuse_second_adoption_here(net, ref, docker_id)
        existing = {s.cidr: s for s in self.neutron.subnets(network_id=net.id)}
        tags = tuple(sorted({*net.tags, *marks.network_tags(docker_id),
                             marks.existing_network_tag(docker_id), *extra_tags}))
        self.neutron.set_network_tags(net.id, tags)
        created: list[Subnet] = []
        try:
            subnets = []
            for pool, pending in zip(pools, claimed, strict=True):
                # The subnet is the --subnet, or (kuryr-libnetwork's layout) the --ip-range.
                match = existing.get(pool.Pool) or (
                    existing.get(pending.ip_range) if pending and pending.ip_range else None)
                if match is not None:
                    subnets.append(match)
                else:
                    created.append(self._create_subnet(net.id, pool, pending))
                    subnets.append(created[-1])
            if not pools:
                subnets = list(existing.values())
        except Exception:
            for subnet in created:
                self.neutron.delete_subnet(subnet.id)
            self.neutron.set_network_tags(net.id, net.tags)
            raise
        record = NetworkRecord(docker_id=docker_id, neutron_id=net.id, mtu=net.mtu,
                               subnets=tuple(subnets), adopted=True, tags=tags)
        self.state.add_network(record)
        LOG.info("network %s: adopted Neutron network %s", docker_id[:12], net.id)
        return record

    # -- DeleteNetwork -----------------------------------------------------------------
    def delete(self, req: models.NetworkRequest) -> None:
        try:
            record = self.by_docker_id(req.NetworkID)
        except errors.NotFound:
            return  # already gone: Docker retries and replays
        self.pool.drain(record)
        # Ports being deleted would keep the network in use.
        self.background.wait_group(record.neutron_id, timeout=WAIT_FOR_WRITES)
        subnet_ids = [s.id for s in record.subnets]
        if record.adopted:
            self._give_back(record)
        else:
            self.floating.detach_subnets(subnet_ids)
            try:
                self.neutron.delete_network(record.neutron_id)
            except errors.Conflict:
                # Docker forgets the network even when this fails, so clear what
                # only this host's Kuryr could have left (router interface, its
                # unused ports) and try once more.
                self.floating.detach_subnets(subnet_ids, known_only=False)
                self._delete_unused_ports_of_this_host(record)
                self.neutron.delete_network(record.neutron_id)
        self.state.drop_network(record.docker_id)
        delete_emptied_user_pools(self.neutron, record.subnets,
                                  self.settings.user_pool_prefix)

    def _give_back(self, record: NetworkRecord) -> None:
        """An adopted network stays; Kuryr removes only its own marks and subnets."""
        ours = {*marks.network_tags(record.docker_id),
                marks.existing_network_tag(record.docker_id),
                *(t for t in record.tags if t == marks.NET_IPV6_TAG
                  or t.startswith((marks.NET_POOL_TAG, marks.POOL_TOKEN_TAG)))}
        self.floating.detach_subnets([s.id for s in record.subnets])
        net = self.neutron.get_network(record.neutron_id)
        for subnet in record.subnets:
            # Subnets Kuryr added to an adopted network carry Kuryr's name.
            if self.neutron.get_subnet(subnet.id).name == marks.subnet_name(subnet.cidr):
                self.neutron.delete_subnet(subnet.id)
        self.neutron.set_network_tags(net.id, [t for t in net.tags if t not in ours])

    def _delete_unused_ports_of_this_host(self, record: NetworkRecord) -> None:
        """Kuryr ports bound to THIS host that no container uses; another host's
        ports on a shared network are never touched."""
        in_use = self.state.ports_in_use()
        for port in self.neutron.ports(network_id=record.neutron_id,
                                       **self.settings.where.port_filters()):
            if port.device_owner not in marks.DOCKER_OWNERS.all or port.id in in_use \
                    or marks.PORT_EXISTING_TAG in port.tags:
                continue
            vif = vif_of(port, record.mtu, self.settings.default_bridge)
            if self.binder.is_plugged(vif) and not self.binder.is_free(vif):
                continue  # its container end is in a container
            self.binder.unplug(vif)
            self.settings.where.detach([port])
            self.neutron.delete_port(port.id)


def delete_emptied_user_pools(neutron: Neutron, subnets: Iterable[Subnet],
                              user_pool_prefix: str) -> None:
    """The kuryrPool-<cidr> subnetpools of a deleted network's subnets, once empty
    (2 GETs and 1 DELETE each; dockerd's ReleasePool came before the subnets
    went).  A pool another subnet still uses (an adopted network's) stays, and a
    default pool or the user's own is never touched."""
    for pool_id in {s.subnet_pool_id for s in subnets if s.subnet_pool_id}:
        pool = neutron.find_subnetpool(pool_id)
        if pool is None or not pool.name.startswith(f"{user_pool_prefix}-"):
            continue
        if neutron.subnets(subnet_pool_id=pool_id):
            LOG.info("subnetpool %s (%s) is still used by another subnet: kept",
                     pool.name, pool.id)
            continue
        try:
            neutron.delete_subnetpool(pool_id)
        except errors.KuryrError as exc:
            # Another host's Kuryr took the pool for a network of its own since
            # the check: the network is gone all the same, the pool is theirs now.
            LOG.info("subnetpool %s (%s) kept: %s", pool.name, pool.id, exc)
