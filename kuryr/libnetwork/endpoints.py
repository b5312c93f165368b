"""Docker endpoints: a Neutron port bound to this host, a veth plugged into the
host's switch, and the wait until OVN has wired it.

Neutron requests: CreateEndpoint 1 PUT (device_id, owner); Join 0 (OVS says
when the port is wired); DeleteEndpoint 1 DELETE.
"""

from __future__ import annotations

import logging
import time

from kuryr import errors
from kuryr.binding import netlink
from kuryr.binding.ovs import OVSError
from kuryr.binding.vif import VIF
from kuryr.libnetwork import ipam, models, networks, ports
from kuryr.libnetwork.context import Context, PortInfo
from kuryr.neutron import marks

LOG = logging.getLogger(__name__)


def _vif(ctx: Context, port: PortInfo, mtu: int | None) -> VIF:
    return VIF(port_id=port.id, mac=port.mac, vif_type=port.vif_type,
               bridge=port.bridge or ctx.conf.binding.ovs_bridge, mtu=mtu)


def _port_for_endpoint(ctx: Context, network_id: str, endpoint_id: str) -> PortInfo:
    """The endpoint's port: cached, else found by device_id (1 GET after a restart)."""
    with ctx.lock:
        known = ctx.endpoints.get(endpoint_id)
    if known is not None:
        return known
    net = networks.network_for_docker_id(ctx, network_id)
    found = ctx.neutron.ports(network_id=net.neutron_id, device_id=endpoint_id)
    if not found:
        # Kuryr may have stopped before Neutron recorded the endpoint (a
        # background write); the OVS interface remembers it.
        port_id = ctx.ovs.port_of_endpoint(endpoint_id)
        found = [ctx.neutron.get_port(port_id)] if port_id else []
    if not found:
        raise errors.NotFound(f"endpoint {endpoint_id[:12]} has no Neutron port")
    port = ipam.port_info(found[0], adopted=marks.PORT_EXISTING_TAG in found[0].tags)
    port.endpoint_id = endpoint_id
    with ctx.lock:
        ctx.endpoints[endpoint_id] = port
    ctx.remember_port(port)
    return port


def _port_for_new_endpoint(ctx: Context, req: models.CreateEndpointRequest,
                           net_id: str) -> PortInfo | None:
    iface = req.Interface or models.EndpointInterface()
    addresses = [a.split("/")[0] for a in (iface.Address, iface.AddressIPv6) if a]
    with ctx.lock:
        port = next((ctx.ports_by_address[a] for a in addresses
                     if a in ctx.ports_by_address), None)
    if port is not None:
        return port
    # Not made by this process: Kuryr restarted since RequestAddress, or Docker's
    # own IPAM handed out the address.
    filters: dict = {"network_id": net_id}
    if addresses:
        filters["fixed_ips"] = [f"ip_address={addresses[0]}"]
    else:
        filters["device_id"] = req.EndpointID
    found = ctx.neutron.ports(**filters)
    return ipam.port_info(found[0], adopted=marks.PORT_EXISTING_TAG in found[0].tags) \
        if found else None


def create_endpoint(ctx: Context,
                    req: models.CreateEndpointRequest) -> models.CreateEndpointResponse:
    net = networks.network_for_docker_id(ctx, req.NetworkID)
    with ctx.lock:
        if req.EndpointID in ctx.endpoints:
            return models.CreateEndpointResponse(Interface={})  # replayed request
    port = _port_for_new_endpoint(ctx, req, net.neutron_id)
    if port is None:
        port = _create_port_for_foreign_ipam(ctx, req, net.neutron_id)
    wanted_mac = (req.Interface.MacAddress if req.Interface else "").lower()
    extra = ports.endpoint_port_attrs(ctx, port, req.EndpointID, req.Options)
    if wanted_mac and wanted_mac != port.mac.lower():
        # docker run --mac-address: the port takes the user's MAC.
        extra["mac_address"] = wanted_mac
    if extra:
        # Security groups must be in place before the container starts.
        try:
            updated = ctx.neutron.update_port(
                port.id, device_id=req.EndpointID, device_owner=marks.DEVICE_OWNER,
                binding_host_id=ctx.host, **extra)
        except Exception:
            if port.expose_group:
                ctx.neutron.delete_security_group(port.expose_group)
                port.expose_group = None
            raise
        port.security_groups = list(updated.security_group_ids or [])
        port.vif_type = updated.binding_vif_type or port.vif_type
        port.bridge = (updated.binding_vif_details or {}).get("bridge_name") or port.bridge
        if port.mac.lower() != updated.mac_address.lower():
            _unplug(ctx, _vif(ctx, port, net.mtu))  # a pooled veth has the old MAC
            port.mac = updated.mac_address
    port.endpoint_id = req.EndpointID
    try:
        _plug(ctx, _vif(ctx, port, net.mtu), req.EndpointID)
    except Exception:
        _unplug(ctx, _vif(ctx, port, net.mtu))
        raise
    port.plain = not extra and not port.adopted
    if not extra:
        # The port is bound to this host since RequestAddress: recording the
        # endpoint changes nothing about its packets, so the container does not wait.
        port_id, endpoint_id, host = port.id, req.EndpointID, ctx.host
        ctx.later(port_id, f"record endpoint {endpoint_id[:12]} on port {port_id}",
                  lambda: ctx.neutron.update_port(
                      port_id, device_id=endpoint_id, device_owner=marks.DEVICE_OWNER,
                      binding_host_id=host))
    with ctx.lock:
        ctx.endpoints[req.EndpointID] = port
    ctx.remember_port(port)
    # Docker left the MAC to Kuryr (RequiresMACAddress false): the port's.
    iface = {} if wanted_mac else {"MacAddress": port.mac}
    return models.CreateEndpointResponse(Interface=iface)


def _create_port_for_foreign_ipam(ctx: Context, req: models.CreateEndpointRequest,
                                  net_id: str) -> PortInfo:
    iface = req.Interface or models.EndpointInterface()
    fixed_ips = [{"ip_address": a.split("/")[0]} for a in (iface.Address, iface.AddressIPv6) if a]
    attrs = {"network_id": net_id, "device_owner": marks.UNBOUND_DEVICE_OWNER,
             "binding_host_id": ctx.host, "name": marks.PORT_NAME_PREFIX + req.EndpointID[:12]}
    if fixed_ips:
        attrs["fixed_ips"] = fixed_ips
    if iface.MacAddress:
        attrs["mac_address"] = iface.MacAddress
    return ipam.port_info(ctx.neutron.create_port(**attrs))


def _plug(ctx: Context, vif: VIF, endpoint_id: str = "") -> None:
    netlink.create_veth(vif)
    if vif.vif_type == "bridge":
        netlink.attach_to_linux_bridge(vif.host_ifname, vif.bridge)
        return
    if vif.vif_type not in ("ovs", "unbound", "binding_failed"):
        raise errors.InvalidInput(f"Neutron bound the port as vif_type {vif.vif_type!r}, "
                                  "which Kuryr cannot plug on this host")
    if vif.vif_type == "binding_failed":
        raise errors.BackendUnavailable(
            f"Neutron could not bind port {vif.port_id} to host {ctx.host}: is this host "
            "an OVN chassis (or running a Neutron agent) under that name? ([DEFAULT] host)")
    try:
        ctx.ovs.plug(vif, endpoint_id=endpoint_id)
    except OVSError as exc:
        raise errors.BackendUnavailable(str(exc)) from exc


def _unplug(ctx: Context, vif: VIF) -> None:
    try:
        ctx.ovs.unplug(vif.host_ifname)
    except Exception as exc:  # noqa: BLE001 - the veth must go regardless
        LOG.warning("could not remove %s from OVS: %s", vif.host_ifname, exc)
    try:
        netlink.delete_link(vif.host_ifname)
    except netlink.LinkError as exc:  # logged: the garbage collector retries
        LOG.warning("could not delete %s: %s", vif.host_ifname, exc)


def join(ctx: Context, req: models.JoinRequest) -> models.JoinResponse:
    net = networks.network_for_docker_id(ctx, req.NetworkID)
    port = _port_for_endpoint(ctx, req.NetworkID, req.EndpointID)
    vif = _vif(ctx, port, net.mtu)
    port.netns = req.SandboxKey or port.netns
    if not netlink.link_exists(vif.host_ifname):
        _plug(ctx, vif, req.EndpointID)  # the veth was lost (host reboot, manual cleanup)
    _wait_until_wired(ctx, vif)
    gateways = {s.version: s.gateway for s in net.subnets
                if s.gateway and s.id in port.addresses.values()}
    routes = [models.StaticRoute(Destination=dest, RouteType=0, NextHop=hop)
              for s in net.subnets if s.id in port.addresses.values()
              for dest, hop in s.host_routes]
    return models.JoinResponse(
        InterfaceName=models.InterfaceName(SrcName=vif.container_ifname,
                                           DstPrefix=ctx.conf.binding.veth_dst_prefix),
        Gateway=gateways.get(4, ""), GatewayIPv6=gateways.get(6, ""), StaticRoutes=routes)


def _wait_until_wired(ctx: Context, vif: VIF) -> None:
    """Return only when traffic can flow, so the container never starts deaf."""
    timeout = ctx.conf.neutron.vif_plugging_timeout
    started = time.monotonic()
    if vif.vif_type == "bridge":
        wired = _wait_active(ctx, vif.port_id, timeout)
    else:
        wired = ctx.ovs.wait_installed(vif.host_ifname, timeout)
    if wired:
        LOG.debug("port %s wired in %.2f s", vif.port_id, time.monotonic() - started)
        return
    message = (f"port {vif.port_id} was not wired within {timeout} s "
               "(is ovn-controller running and connected?)")
    if ctx.conf.neutron.vif_plugging_is_fatal:
        raise errors.BackendUnavailable(message)
    LOG.warning("%s; starting the container anyway", message)


def _wait_active(ctx: Context, port_id: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ctx.neutron.get_port(port_id).status == "ACTIVE":
            return True
        time.sleep(0.5)
    return False


def leave(ctx: Context, req: models.EndpointRequest) -> None:
    """Docker moves the interface back out of the container; DeleteEndpoint removes it."""


def delete_endpoint(ctx: Context, req: models.EndpointRequest) -> None:
    try:
        port = _port_for_endpoint(ctx, req.NetworkID, req.EndpointID)
    except errors.NotFound:
        return  # already deleted: Docker replays
    with ctx.lock:
        net = ctx.networks.get(req.NetworkID)
    ports.revoke(ctx, port, req.EndpointID)
    if net is not None and ctx.pool is not None and ctx.pool.recycle(net, port):
        # Back in the pool, still bound and plugged: the next container takes it
        # with no Neutron request, and no port is deleted and created again.
        ipam.forget_port(ctx, port, release=False)
        port_id = port.id
        ctx.later(port_id, f"return port {port_id} to the pool",
                  lambda: ctx.neutron.update_port(port_id, device_id="",
                                                  device_owner=marks.POOL_DEVICE_OWNER))
    else:
        # The container has left: removing its veth and OVS port (~40 ms of OVSDB
        # and netlink) is cleanup Docker need not wait for.  A crash in between
        # leaves a veth without a port, which the garbage collector removes.
        ctx.cleaner.submit(_unplug, ctx, _vif(ctx, port, net.mtu if net else None))
        ipam.forget_port(ctx, port, release=True)
    with ctx.lock:
        ctx.endpoints.pop(req.EndpointID, None)


def oper_info(ctx: Context, req: models.EndpointRequest) -> models.OperInfoResponse:
    with ctx.lock:
        port = ctx.endpoints.get(req.EndpointID)
    if port is None:
        return models.OperInfoResponse(Value={})
    return models.OperInfoResponse(Value={
        "neutron.port.id": port.id,
        "neutron.net.id": port.network_id,
        "host.iface": VIF(port_id=port.id, mac=port.mac).host_ifname,
        "vif.type": port.vif_type,
    })


def program_external(ctx: Context, req: models.EndpointRequest) -> None:
    """Serve the container's published ports (-p, -P) on the host."""
    if not (req.Options or {}).get(models.PORTMAP_OPTION):
        return
    port = _port_for_endpoint(ctx, req.NetworkID, req.EndpointID)
    ports.program(ctx, port, req.EndpointID, req.Options)


def revoke_external(ctx: Context, req: models.EndpointRequest) -> None:
    try:
        port = _port_for_endpoint(ctx, req.NetworkID, req.EndpointID)
    except errors.NotFound:
        port = None
    ports.revoke(ctx, port, req.EndpointID)
