"""Docker endpoints: the core's port lifecycle, in Docker's verbs.

Neutron requests: CreateEndpoint 0 on the critical path with a pooled port
(1 PUT in the background records the endpoint); Join 0 (OVS says when the
port is wired); DeleteEndpoint 0 on the critical path (the port goes back to
the pool, or 1 DELETE in the background).
"""

from __future__ import annotations

import stat
from pathlib import Path

from kuryr import errors
from kuryr.binding.vif import VIF
from kuryr.core.ports import PortLifecycle
from kuryr.libnetwork import models
from kuryr.libnetwork.networks import Networks
from kuryr.libnetwork.ports import Publishing
from kuryr.publish.netns import is_netns


class Endpoints:
    def __init__(self, networks: Networks, ports: PortLifecycle, publishing: Publishing,
                 veth_dst_prefix: str, netns_dir: str) -> None:
        self.networks = networks
        self.ports = ports
        self.publishing = publishing
        self.veth_dst_prefix = veth_dst_prefix
        self.netns_dir = Path(netns_dir)  # docker_netns_dir: where SandboxKeys are

    def create(self, req: models.CreateEndpointRequest) -> models.CreateEndpointResponse:
        net = self.networks.by_docker_id(req.NetworkID)
        iface = req.Interface or models.EndpointInterface()
        addresses = [a.split("/")[0] for a in (iface.Address, iface.AddressIPv6) if a]
        wanted_mac = (iface.MacAddress or "").lower()
        if self.ports.state.endpoint(req.EndpointID) is not None:
            return models.CreateEndpointResponse(Interface={})  # replayed request
        extras = self.publishing.extras_for(req.EndpointID, addresses, req.Options, wanted_mac)
        try:
            lease = self.ports.attach(net, req.EndpointID, addresses, extras)
        except Exception:
            self.publishing.discard(extras)
            raise
        # Docker left the MAC to Kuryr (RequiresMACAddress false): the port's.
        return models.CreateEndpointResponse(
            Interface={} if wanted_mac else {"MacAddress": lease.port.mac_address})

    def join(self, req: models.JoinRequest) -> models.JoinResponse:
        if req.SandboxKey:
            check_sandbox_key(req.SandboxKey, self.netns_dir)
        net = self.networks.by_docker_id(req.NetworkID)
        lease = self.ports.join(net, req.EndpointID, req.SandboxKey)
        mine = {f.subnet_id for f in lease.port.fixed_ips}
        subnets = [s for s in net.subnets if s.id in mine]
        gateways = {s.ip_version: s.gateway_ip for s in subnets if s.gateway_ip}
        routes = [models.StaticRoute(Destination=dest, RouteType=0, NextHop=hop)
                  for s in subnets for dest, hop in s.host_routes]
        vif = VIF(port_id=lease.port.id, mac=lease.port.mac_address)
        return models.JoinResponse(
            InterfaceName=models.InterfaceName(SrcName=vif.container_ifname,
                                               DstPrefix=self.veth_dst_prefix),
            Gateway=gateways.get(4, ""), GatewayIPv6=gateways.get(6, ""), StaticRoutes=routes)

    def leave(self, req: models.EndpointRequest) -> None:
        """Docker moves the interface back out of the container; DeleteEndpoint removes it."""

    def delete(self, req: models.EndpointRequest) -> None:
        try:
            net = self.networks.by_docker_id(req.NetworkID)
        except errors.NotFound:
            net = None
        self.publishing.revoke(self._port_id(req), req.EndpointID)
        self.ports.detach(net, req.EndpointID)

    def oper_info(self, req: models.EndpointRequest) -> models.OperInfoResponse:
        lease = self.ports.state.endpoint(req.EndpointID)
        if lease is None:
            return models.OperInfoResponse(Value={})
        port = lease.port
        return models.OperInfoResponse(Value={
            "neutron.port.id": port.id,
            "neutron.net.id": port.network_id,
            "host.iface": VIF(port_id=port.id, mac=port.mac_address).host_ifname,
            "vif.type": port.vif_type or "ovs",
        })

    def program_external(self, req: models.EndpointRequest) -> None:
        """Serve the container's published ports (-p, -P) on the host."""
        if not (req.Options or {}).get(models.PORTMAP_OPTION):
            return
        net = self.networks.by_docker_id(req.NetworkID)
        lease = self.ports.endpoint(net, req.EndpointID)
        self.publishing.program(lease, req.EndpointID, req.Options)

    def revoke_external(self, req: models.EndpointRequest) -> None:
        self.publishing.revoke(self._port_id(req), req.EndpointID)

    def _port_id(self, req: models.EndpointRequest) -> str | None:
        """The endpoint's port id: known, else recorded on its OVS interface, else
        looked up in Neutron (after a restart) only when floating-IP forwardings
        may name it."""
        lease = self.ports.state.endpoint(req.EndpointID)
        if lease is not None:
            return lease.port.id
        local = self.ports.binder.port_of_endpoint(req.EndpointID)
        if local is not None or not self.publishing.floating.enabled:
            return local
        try:
            return self.ports.endpoint(self.networks.by_docker_id(req.NetworkID),
                                       req.EndpointID).port.id
        except errors.NotFound:
            return None


def check_sandbox_key(key: str, netns_dir: Path) -> None:
    """A SandboxKey names a file in Docker's netns directory that is, or will be,
    a network namespace: Kuryr later opens it and enters it (published ports).

    The file may not exist yet: with the external keys dockerd uses, the
    container's namespace is bound there only when the container starts,
    after Join.  What is there already must be a namespace, not a FIFO (which
    would hang whoever opens it), a regular file or a directory."""
    path = Path(key)
    where = netns_dir.resolve()
    if path.resolve().parent != where:
        raise errors.InvalidInput(f"SandboxKey {key!r} is not in Docker's netns directory "
                                  f"{netns_dir} (docker_netns_dir)")
    try:
        found = path.stat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise errors.InvalidInput(f"SandboxKey {key!r}: {exc.strerror}") from exc
    if not is_netns(found):
        raise errors.InvalidInput(f"SandboxKey {key!r} is {_kind(found.st_mode)}, not a "
                                  "network namespace")


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"),
             (stat.S_ISREG, "a regular file"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "a device")
