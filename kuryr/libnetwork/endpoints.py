"""Docker endpoints: the core's port lifecycle, in Docker's verbs.

Neutron requests: CreateEndpoint 0 on the critical path with a pooled port
(1 PUT in the background records the endpoint); Join 0 (OVS says when the
port is wired); DeleteEndpoint 0 on the critical path (the port goes back to
the pool, or 1 DELETE in the background).
"""

from __future__ import annotations

from kuryr import errors
from kuryr.binding.vif import VIF
from kuryr.core.ports import PortLifecycle
from kuryr.libnetwork import models
from kuryr.libnetwork.networks import Networks
from kuryr.libnetwork.ports import Publishing


class Endpoints:
    def __init__(self, networks: Networks, ports: PortLifecycle, publishing: Publishing,
                 veth_dst_prefix: str) -> None:
        self.networks = networks
        self.ports = ports
        self.publishing = publishing
        self.veth_dst_prefix = veth_dst_prefix

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
