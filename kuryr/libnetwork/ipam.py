"""Docker's IPAM driver on Neutron: pools are subnets, addresses are ports.

Neutron requests (see docs/performance.md):
  RequestPool with --subnet: 0; without: 1 GET (free CIDRs of the pool)
  RequestAddress for the gateway: 0; for a container: 0 with a ready pooled
  port, else 1 POST (both families of a dual-stack network in the same
  port); the second family 0
  ReleaseAddress: 0 when DeleteEndpoint already removed the port
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass

from kuryr import errors
from kuryr.core import ranges
from kuryr.core.model import NetworkRecord, PendingPool
from kuryr.core.ports import PortLifecycle
from kuryr.core.state import State
from kuryr.libnetwork import models
from kuryr.libnetwork.networks import Networks
from kuryr.neutron import marks
from kuryr.neutron.client import Neutron
from kuryr.neutron.types import Subnet, SubnetPool

POOL_OPTIONS = ("neutron.pool.uuid", "neutron.pool.name")
POOL_V6_OPTIONS = ("neutron.pool.v6.uuid", "neutron.pool.v6.name")
SUBNET_OPTIONS = ("neutron.subnet.uuid", "neutron.subnet.name")
SUBNET_V6_OPTIONS = ("neutron.subnet.v6.uuid", "neutron.subnet.v6.name")
DEFAULT_PREFIXLEN = {4: 24, 6: 64}


@dataclass(frozen=True)
class DefaultPools:
    """Kuryr's default subnetpools (found or made at start-up), by IP version."""

    pools: dict[int, SubnetPool]
    fallback_prefixes: dict[int, str]  # when a pool is missing
    user_pool_prefix: str = "kuryrPool"  # kuryrPool-<cidr>: the pool of a user's --subnet

    def is_default(self, pool: SubnetPool) -> bool:
        return any(pool.id == p.id for p in self.pools.values())

    def is_kuryrs(self, pool: SubnetPool) -> bool:
        """A default pool, or the pool of a user's --subnet (by kuryr-libnetwork's name)."""
        return self.is_default(pool) or self.is_users_pool_of_kuryr(pool)

    def is_users_pool_of_kuryr(self, pool: SubnetPool) -> bool:
        """kuryrPool-<cidr>: made by Kuryr (or kuryr-libnetwork) for a --subnet."""
        return not self.is_default(pool) and pool.name.startswith(f"{self.user_pool_prefix}-")


def _first_option(options: dict[str, str], keys: tuple[str, ...]) -> str | None:
    return next((options[k] for k in keys if options.get(k)), None)


def _network(value: str, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(value)
    except ValueError as exc:
        raise errors.InvalidInput(f"{what} {value!r} is not a valid CIDR: {exc}") from exc


def _parse_pool(pool_id: str) -> marks.PoolId:
    """A pool id Kuryr issued (checked before any Neutron request)."""
    try:
        return marks.parse_pool_id(pool_id)
    except ValueError as exc:
        raise errors.InvalidInput(f"PoolID: {exc}") from exc


def _check_address(address: str, cidr: str) -> str:
    try:
        ip = ipaddress.ip_address(address.split("/", maxsplit=1)[0])
    except ValueError as exc:
        raise errors.InvalidInput(f"Address: {address!r} is not an IP address") from exc
    if ip not in ipaddress.ip_network(cidr):
        raise errors.InvalidInput(f"Address: address {ip} is outside subnet {cidr}")
    return str(ip)


class Ipam:
    def __init__(self, neutron: Neutron, state: State, networks: Networks,
                 ports: PortLifecycle, defaults: DefaultPools,
                 address_spaces: models.AddressSpaces) -> None:
        self.neutron = neutron
        self.state = state
        self.networks = networks
        self.ports = ports
        self.defaults = defaults
        self.address_spaces = address_spaces

    @staticmethod
    def capabilities() -> models.IpamCapabilities:
        # Docker then leaves the MAC to the driver: the container takes the MAC of
        # its Neutron port, so a port made ahead of time (the pool) is used as is.
        return models.IpamCapabilities(RequiresMACAddress=False, RequiresRequestReplay=False)

    def default_address_spaces(self) -> models.AddressSpaces:
        return self.address_spaces

    # -- pools ---------------------------------------------------------------------------
    def request_pool(self, req: models.RequestPoolRequest) -> models.RequestPoolResponse:
        options = req.Options or {}
        version = 6 if req.V6 else 4
        token = secrets.token_hex(6)
        subnet_ref = _first_option(options, SUBNET_V6_OPTIONS if req.V6 else SUBNET_OPTIONS)
        if subnet_ref:
            subnet = self.neutron.find_subnet(subnet_ref)
            if subnet.ip_version != version:
                raise errors.InvalidInput(f"Neutron subnet {subnet_ref!r} is not IPv{version}")
            self.state.add_pending_pool(PendingPool(
                token=token, cidr=subnet.cidr, existing_subnet_id=subnet.id,
                gateway=subnet.gateway_ip))
            return models.RequestPoolResponse(
                PoolID=str(marks.PoolId(subnet.cidr, "", token)), Pool=subnet.cidr)
        pool_ref = _first_option(options, POOL_V6_OPTIONS if req.V6 else POOL_OPTIONS)
        subnetpool = self.neutron.find_subnetpool(pool_ref) if pool_ref else None
        if pool_ref and subnetpool is None:
            raise errors.NotFound(f"Neutron subnetpool {pool_ref!r} does not exist")
        if not req.Pool:
            cidr_text = self._pick_free_cidr(version, subnetpool)
            default = self.defaults.pools.get(version)
            pool_id = subnetpool.id if subnetpool else default.id if default else None
            self.state.add_pending_pool(PendingPool(token=token, cidr=cidr_text,
                                                    subnetpool_id=pool_id))
            return models.RequestPoolResponse(
                PoolID=str(marks.PoolId(cidr_text, "", token)), Pool=cidr_text)
        cidr = _network(req.Pool, "pool")
        if cidr.version != version:
            raise errors.InvalidInput(f"pool {req.Pool} is not an IPv{version} CIDR")
        if req.SubPool and not _network(req.SubPool, "ip-range").subnet_of(
                cidr):  # type: ignore[arg-type]
            raise errors.InvalidInput(f"ip-range {req.SubPool} is not inside {req.Pool}")
        cidr_text = str(cidr)
        if subnetpool is not None:  # the user's pool: never Kuryr's to remove
            self.state.add_pending_pool(PendingPool(
                token=token, cidr=cidr_text, ip_range=req.SubPool,
                subnetpool_id=subnetpool.id))
            return models.RequestPoolResponse(
                PoolID=str(marks.PoolId(cidr_text, req.SubPool, token)), Pool=cidr_text)
        own, overlapping = self._user_subnet_pool(version, cidr_text)
        self.state.add_pending_pool(PendingPool(
            token=token, cidr=cidr_text, ip_range=req.SubPool, subnetpool_id=own.id,
            overlap_pools=overlapping))
        return models.RequestPoolResponse(
            PoolID=str(marks.PoolId(cidr_text, req.SubPool, token, own.id)), Pool=cidr_text)

    def _user_subnet_pool(self, version: int, cidr: str) -> tuple[SubnetPool, tuple[str, ...]]:
        """kuryr-libnetwork's subnetpool for a user's --subnet, ``kuryrPool-<cidr>``,
        found by name or made (1 GET, 1 POST when made), and the ids of Kuryr's pools
        whose subnets could overlap ``cidr``, which CreateNetwork checks before it
        makes a subnet (Neutron refuses overlaps only inside one network)."""
        name = marks.subnetpool_name(self.defaults.user_pool_prefix, cidr)
        net = ipaddress.ip_network(cidr)
        pools = self.neutron.subnetpools(ip_version=version)
        own = next((p for p in pools if p.name == name), None)
        overlapping = tuple(p.id for p in pools if self.defaults.is_kuryrs(p) and any(
            net.overlaps(ipaddress.ip_network(prefix)) for prefix in p.prefixes))
        if own is None:
            own = self.neutron.create_subnetpool(
                name=name, prefixes=[cidr], default_prefix_length=net.prefixlen,
                minimum_prefix_length=net.prefixlen,
                description="Kuryr: the subnet of a Docker network's --subnet")
            overlapping = (*overlapping, own.id)
        return own, overlapping

    def _pick_free_cidr(self, version: int, subnetpool: SubnetPool | None) -> str:
        """A CIDR of the default size that no subnet Kuryr's user can see uses
        (1 GET): not the default pool's, not a --subnet's (each in a pool of its
        own), not the user's other networks'."""
        prefixes = list(subnetpool.prefixes) if subnetpool else [
            self.defaults.fallback_prefixes[version]]
        prefixlen = (subnetpool.default_prefix_length if subnetpool else None) \
            or DEFAULT_PREFIXLEN[version]
        used = [ipaddress.ip_network(s.cidr) for s in self.neutron.subnets(ip_version=version)]
        used += [ipaddress.ip_network(c) for c in self.state.reserved_cidrs()]
        for prefix in prefixes:
            for candidate in ipaddress.ip_network(prefix).subnets(new_prefix=prefixlen):
                if not any(candidate.overlaps(u) for u in used):
                    self.state.reserve_cidr(str(candidate))
                    return str(candidate)
        raise errors.Conflict(f"no free /{prefixlen} left in {', '.join(prefixes)}")

    def release_pool(self, req: models.ReleasePoolRequest) -> None:
        """dockerd releases a network's pools before it calls DeleteNetwork, so
        the kuryrPool-<cidr> subnetpool of a --subnet still has the network's
        subnet and DeleteNetwork removes it.  Removed here (1 GET, 1 DELETE) when
        nothing is in it: a CreateNetwork that failed, an adopted network."""
        if marks.UUID.match(req.PoolID):  # kuryr-libnetwork's: the subnetpool itself
            pool = self.neutron.find_subnetpool(req.PoolID)
            if pool is not None and self.defaults.is_users_pool_of_kuryr(pool) \
                    and not self.neutron.subnets(subnet_pool_id=pool.id):
                self.neutron.delete_subnetpool(pool.id)
            return
        pool_id = _parse_pool(req.PoolID)
        if pool_id.token:
            self.state.drop_pending_pool(pool_id.token)
        self.state.unreserve_cidr(pool_id.cidr)
        if pool_id.subnetpool and not self.neutron.subnets(subnet_pool_id=pool_id.subnetpool):
            self.neutron.delete_subnetpool(pool_id.subnetpool)

    # -- addresses --------------------------------------------------------------------------
    def request_address(self, req: models.RequestAddressRequest) -> models.RequestAddressResponse:
        if marks.UUID.match(req.PoolID):
            return self._request_address_in_migrated_pool(req)
        pool = _parse_pool(req.PoolID)
        options = req.Options or {}
        prefixlen = ipaddress.ip_network(pool.cidr).prefixlen
        wanted = _check_address(req.Address, pool.cidr) if req.Address else None
        if options.get("RequestAddressType") == models.GATEWAY_REQUEST:
            return models.RequestAddressResponse(
                Address=f"{wanted or self._gateway_for(pool)}/{prefixlen}")
        net = self.networks.by_pool(pool)
        subnet = net.subnet_of_pool(pool.cidr, pool.ip_range) if net else None
        if net is None or subnet is None:
            raise errors.NotFound(
                f"no Neutron subnet for pool {pool.cidr} yet: Kuryr IPAM needs the Kuryr "
                "network driver (docker network create -d kuryr --ipam-driver kuryr)")
        return self._reserve_in(net, subnet, wanted, options)

    def _reserve_in(self, net: NetworkRecord, subnet: Subnet, wanted: str | None,
                    options: dict[str, str]) -> models.RequestAddressResponse:
        """A container's address in ``subnet``, with the subnet's own prefix: an
        adopted subnet may be the --ip-range only (the layout kuryr-libnetwork makes)."""
        if wanted:
            _check_address(wanted, subnet.cidr)
        address = self.ports.reserve(net, subnet, wanted,
                                     name=options.get(models.ENDPOINT_NAME_OPTION, ""),
                                     mac=options.get(models.MAC_OPTION, ""))
        return models.RequestAddressResponse(
            Address=f"{address}/{ipaddress.ip_network(subnet.cidr).prefixlen}")

    # -- networks kuryr-libnetwork made (in-place migration, docs/migrating.md) -------------
    # Its pool ids are Neutron subnetpool UUIDs, kept by dockerd for the networks
    # it made: kuryrPool-<cidr> (one subnet), or a default pool (one subnet per
    # network placed in it).
    def _request_address_in_migrated_pool(
            self, req: models.RequestAddressRequest) -> models.RequestAddressResponse:
        wanted = req.Address.split("/", maxsplit=1)[0] if req.Address else None
        net, subnet = self._migrated_subnet(req.PoolID, wanted)
        options = req.Options or {}
        if options.get("RequestAddressType") == models.GATEWAY_REQUEST:
            gateway = _check_address(wanted, subnet.cidr) if wanted else (
                subnet.gateway_ip or ranges.first_host(subnet.cidr))
            return models.RequestAddressResponse(
                Address=f"{gateway}/{ipaddress.ip_network(subnet.cidr).prefixlen}")
        return self._reserve_in(net, subnet, wanted, options)

    def _migrated_subnet(self, subnetpool_id: str,
                         address: str | None) -> tuple[NetworkRecord, Subnet]:
        """The subnet of a Docker network in the subnetpool (1 GET; 1 more for a
        network not seen since start-up)."""
        found = []
        for subnet in self.neutron.subnets(subnet_pool_id=subnetpool_id):
            if address and ipaddress.ip_address(address) not in ipaddress.ip_network(
                    subnet.cidr):
                continue
            net = self.networks.by_neutron_id(subnet.network_id)
            if net is not None:
                found.append((net, subnet))
        if not found:
            raise errors.NotFound(f"no subnet of a Docker network is in subnetpool "
                                  f"{subnetpool_id} (a pool id of kuryr-libnetwork)")
        if len(found) > 1:
            raise errors.Conflict(
                f"subnetpool {subnetpool_id} (a pool id of kuryr-libnetwork) has subnets "
                f"of {len(found)} Docker networks "
                f"({', '.join(subnet.cidr for _, subnet in found)}): which one this address "
                "is for cannot be told; give the address (--ip) or re-create the network "
                "with Kuryr (docs/migrating.md)")
        return found[0]

    def _release_address_in_migrated_pool(self, req: models.ReleaseAddressRequest) -> None:
        address = req.Address.split("/", maxsplit=1)[0]
        try:
            net, subnet = self._migrated_subnet(req.PoolID, address)
        except errors.NotFound:
            return  # the network is gone, and its ports with it
        if subnet.gateway_ip != address:
            self.ports.release(net, address)

    def _gateway_for(self, pool: marks.PoolId) -> str:
        pending = self.state.pending_pool(pool.token) if pool.token else None
        if pending is not None and pending.gateway:
            return pending.gateway
        return ranges.first_host(pool.cidr)

    def release_address(self, req: models.ReleaseAddressRequest) -> None:
        if marks.UUID.match(req.PoolID):
            self._release_address_in_migrated_pool(req)
            return
        pool = _parse_pool(req.PoolID)
        address = _check_address(req.Address, pool.cidr)
        net = self.networks.by_pool(pool)
        if net is None:
            return  # the network is gone, and its ports with it
        subnet = net.subnet_of_pool(pool.cidr, pool.ip_range)
        if subnet is None or subnet.gateway_ip == address:
            return  # a gateway address is not a port
        self.ports.release(net, address)
