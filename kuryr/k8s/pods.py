"""Pods' network attachments: the CNI verbs on the core's port lifecycle.

An attachment is one CNI container id (the endpoint id in the core): its port
is a ready pooled port (no Neutron request on ADD's path; the pod is recorded
in the background), plugged into br-int, wired (OVS ovn-installed), and its
veth's container end moved into the pod's namespace and addressed here, since
no runtime does that for a CNI plugin.

What survives a restart is local: OVS names the container id on the port's
interface (external_ids kuryr-endpoint-id), so a restarted daemon finds every
attachment without asking the API server.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kuryr import errors
from kuryr.binding import netlink
from kuryr.binding.vif import VIF
from kuryr.cni.protocol import Dns, Interface, IPConfig, Result, Route
from kuryr.core.binder import vif_of
from kuryr.core.keyed import KeyedLocks
from kuryr.core.lull import Lull
from kuryr.core.model import Lease, NetworkRecord
from kuryr.core.ports import EndpointRecord, PortLifecycle
from kuryr.k8s.models import CniRequest
from kuryr.k8s.networks import PodNetworks
from kuryr.neutron import marks
from kuryr.neutron.types import Port, Subnet
from kuryr.publish.netns import is_netns

LOG = logging.getLogger(__name__)
RECENTLY_DELETED = 1024  # container ids remembered after DEL (a repeated DEL is a no-op)


class InvalidEnvironment(errors.InvalidInput):
    """A CNI_* value the request carries is unusable (the netns path...)."""


class InterfaceNotAsSet(errors.KuryrError):
    """CHECK: the pod's interface is missing or not as ADD set it up."""


@dataclass(frozen=True)
class Sandbox:
    """Where an attachment's interface is: the pod's namespace and its name there."""

    netns: str
    ifname: str


class PodAttachments:
    def __init__(self, ports: PortLifecycle, networks: PodNetworks,
                 pooled: Callable[[], set[str]], ours_in_ovs: Callable[[], dict[str, str]],
                 lull: Lull | None = None) -> None:
        self.ports = ports
        self.networks = networks
        self._pooled = pooled  # ports the pool holds: never an attachment's
        self._ours_in_ovs = ours_in_ovs  # container id -> port id, this daemon's, from OVS
        self._lock = threading.Lock()
        self._sandboxes: dict[str, Sandbox] = {}  # container id -> (since ADD, this process)
        self._deleted: collections.OrderedDict[str, None] = collections.OrderedDict()
        # One CNI verb at a time per container: runtimes do overlap them (kubelet's
        # StopPodSandbox and RemovePodSandbox each send a DEL, seen 0.3 s apart while
        # the first still ran).  Held across the verb's work, Neutron included: only
        # the same container's next verb waits, and it must.
        self._per_container = KeyedLocks()
        self._lull = lull  # ADDs in flight hold the daemon's background writes

    # -- ADD ------------------------------------------------------------------------------
    def add(self, req: CniRequest) -> Result:
        cid = _required(req)
        netns = _netns(req.netns)
        with self._starting(), self._per_container.hold(cid):
            return self._add(req, cid, netns)

    def _starting(self) -> contextlib.AbstractContextManager[None]:
        return self._lull.starting() if self._lull is not None else contextlib.nullcontext()

    def _add(self, req: CniRequest, cid: str, netns: str) -> Result:
        net = self.networks.network_for(req.namespace)
        subnet = self.networks.subnet_of(net)
        with self._lock:
            self._deleted.pop(cid, None)
        lease = self._attachment(net, cid)
        made = lease is None
        if lease is None:
            lease = self.ports.attach_ready(net, subnet, cid, _record_for(req))
        try:
            self.ports.join(net, cid, netns)  # plugged (again if lost) and wired
            address = self._put_in_sandbox(net, subnet, lease.port, netns, req.ifname)
        except Exception:
            if made:  # nothing of a failed ADD stays (the runtime may never DEL)
                self._detach(net, cid, Sandbox(netns, req.ifname))
            raise
        with self._lock:
            self._sandboxes[cid] = Sandbox(netns, req.ifname)
        return _result(lease.port, address, subnet, netns, req.ifname)

    def _put_in_sandbox(self, net: NetworkRecord, subnet: Subnet, port: Port, netns: str,
                        ifname: str) -> str:
        """The port's veth end in the pod's namespace as ``ifname``, addressed, with
        the default route; already there (a repeated ADD): left as it is."""
        address = f"{_address_on(port, subnet)}/{subnet.prefixlen}"
        with _host_failure(f"cannot read {ifname} in {netns}"):
            found = netlink.interface_in_netns(netns, ifname)
        if found is not None:
            mac, addresses = found
            if mac.lower() == port.mac_address.lower() and address in addresses:
                return address
            raise errors.Conflict(f"{netns} already has an interface {ifname} "
                                  f"({mac}, {', '.join(addresses) or 'no address'}), not "
                                  f"port {port.id}'s")
        vif = self._vif(net, port)
        if not self.ports.binder.is_free(vif):
            raise errors.KuryrError(f"the container end {vif.container_ifname} of port "
                                    f"{port.id} is neither in the host's namespace nor "
                                    f"{ifname} in {netns}")
        with _host_failure(f"cannot move {vif.container_ifname} into {netns}"):
            netlink.move_into_netns(vif.container_ifname, netns, ifname, [address],
                                    [subnet.gateway_ip] if subnet.gateway_ip else [])
        return address

    # -- DEL ------------------------------------------------------------------------------
    def delete(self, req: CniRequest) -> None:
        """Idempotent: an unknown container, or one deleted already, is a success."""
        cid = _required(req, netns=False)
        with self._per_container.hold(cid):
            self._detach(self._network_of_attachment(cid), cid,
                         Sandbox(req.netns, req.ifname))

    def _detach(self, net: NetworkRecord | None, cid: str, sandbox: Sandbox) -> None:
        lease = self._attachment(net, cid) if net is not None else None
        with self._lock:
            self._sandboxes.pop(cid, None)
            self._deleted[cid] = None
            while len(self._deleted) > RECENTLY_DELETED:
                self._deleted.popitem(last=False)
        if net is None or lease is None:
            return
        self._take_back_from_sandbox(self._vif(net, lease.port), sandbox)
        # Back to the pool when its veth end is in the host's namespace again, else
        # (the namespace is gone, and the veth with it) unplugged and deleted.
        self.ports.detach(net, cid)

    def _take_back_from_sandbox(self, vif: VIF, sandbox: Sandbox) -> None:
        """Best effort: the interface returns to the host's namespace so the port can
        serve the next pod.  The namespace may be gone already (then so is the veth)."""
        if not (sandbox.netns and sandbox.ifname and _is_netns_path(sandbox.netns)):
            return
        try:
            netlink.move_out_of_netns(sandbox.netns, sandbox.ifname, vif.container_ifname)
        except Exception as exc:  # noqa: BLE001 - then the port is deleted, not pooled
            LOG.warning("cannot take %s back from %s: %s", sandbox.ifname, sandbox.netns, exc)

    # -- CHECK ----------------------------------------------------------------------------
    def check(self, req: CniRequest) -> None:
        cid = _required(req)
        netns = _netns(req.netns)
        with self._per_container.hold(cid):
            self._check(req, cid, netns)

    def _check(self, req: CniRequest, cid: str, netns: str) -> None:
        net = self._network_of_attachment(cid)
        lease = self._attachment(net, cid) if net is not None else None
        if net is None or lease is None:
            raise errors.NotFound(f"container {cid[:12]} has no Kuryr attachment")
        subnet = self.networks.subnet_of(net)
        address = f"{_address_on(lease.port, subnet)}/{subnet.prefixlen}"
        with _host_failure(f"cannot read {req.ifname} in {netns}"):
            found = netlink.interface_in_netns(netns, req.ifname)
        if found is None:
            raise InterfaceNotAsSet(f"{netns} has no interface {req.ifname}")
        mac, addresses = found
        if mac.lower() != lease.port.mac_address.lower() or address not in addresses:
            raise InterfaceNotAsSet(f"{req.ifname} in {netns} is {mac} with "
                                    f"{', '.join(addresses) or 'no address'}; port "
                                    f"{lease.port.id} is {lease.port.mac_address} {address}")

    # -- GC -------------------------------------------------------------------------------
    def collect(self, req: CniRequest) -> list[str]:
        """Detach every attachment of this daemon the runtime does not list as valid;
        the container ids detached.  An attachment found only in OVS (made before
        a restart) is matched by container id alone: OVS does not record ifname."""
        valid = {(a.containerID, a.ifname) for a in req.validAttachments}
        valid_ids = {cid for cid, _ in valid}
        with self._lock:
            known = dict(self._sandboxes)
        gone = []
        for cid in sorted(set(known) | set(self._ours_in_ovs())):
            sandbox = known.get(cid)
            if (cid, sandbox.ifname) in valid if sandbox else cid in valid_ids:
                continue
            with self._per_container.hold(cid):
                self._detach(self._network_of_attachment(cid), cid,
                             sandbox or Sandbox("", ""))
            gone.append(cid)
        return gone

    # -- finding an attachment --------------------------------------------------------------
    def _attachment(self, net: NetworkRecord, cid: str) -> Lease | None:
        """The container's lease: known to this process, else (after a restart)
        found through the OVS interface naming it; None when it has none."""
        known = self.ports.state.endpoint(cid)
        if known is not None:
            return known
        if self._port_of_past_attachment(cid) is None:
            return None
        try:
            return self.ports.endpoint(net, cid)
        except errors.NotFound:
            return None

    def _port_of_past_attachment(self, cid: str) -> str | None:
        """After a restart: the port the container's OVS interface names."""
        port_id = self.ports.binder.port_of_endpoint(cid)
        with self._lock:
            deleted = cid in self._deleted
        # An interface still naming a deleted container is on its way back to
        # the pool or out: not an attachment.
        if port_id is None or deleted or port_id in self._pooled():
            return None
        return port_id

    def _network_of_attachment(self, cid: str) -> NetworkRecord | None:
        """The network the container's port is on, found from the attachment, not
        from the pod's namespace: DEL must work for a namespace being deleted
        (its annotation gone) and GC names no pod.  None: no attachment."""
        known = self.ports.state.endpoint(cid)
        try:
            if known is not None:
                return self.networks.network_by_id(known.network_id)
            port_id = self._port_of_past_attachment(cid)
            return self.networks.network_of_port(port_id) if port_id else None
        except errors.NotFound:  # the port went meanwhile, or is on no pod network
            return None

    def _vif(self, net: NetworkRecord, port: Port) -> VIF:
        return vif_of(port, net.mtu, self.ports.settings.default_bridge)


def _required(req: CniRequest, netns: bool = True) -> str:
    missing = [name for name, value in (("containerId", req.containerId),
                                        ("ifname", req.ifname),
                                        *((("netns", req.netns),) if netns else ()))
               if not value]
    if missing:
        raise InvalidEnvironment(f"{req.command} needs {', '.join(missing)}")
    return req.containerId


def _netns(path: str) -> str:
    if not _is_netns_path(path):
        raise InvalidEnvironment(f"CNI_NETNS {path!r} is not a network namespace")
    return path


def _is_netns_path(path: str) -> bool:
    try:
        return Path(path).is_absolute() and is_netns(Path(path).stat())
    except OSError:
        return False


def _record_for(req: CniRequest) -> EndpointRecord:
    """The pod in Neutron: device_id its uid (the container id when the runtime
    names no pod), its port named and tagged after it."""
    pod = req.pod
    if pod is None:
        return EndpointRecord(device_id=req.containerId,
                              name=f"{marks.K8S_POD_PORT_NAME_PREFIX}{req.containerId[:12]}")
    return EndpointRecord(device_id=pod.uid or req.containerId,
                          name=marks.pod_port_name(pod.namespace, pod.name),
                          tags=(marks.pod_tag(pod.namespace, pod.name),))


def _address_on(port: Port, subnet: Subnet) -> str:
    address = next((f.ip_address for f in port.fixed_ips if f.subnet_id == subnet.id), None)
    if address is None:
        raise errors.BackendUnavailable(f"port {port.id} has no address on {subnet.cidr}")
    return address


def _result(port: Port, address: str, subnet: Subnet, netns: str, ifname: str) -> Result:
    gateway = subnet.gateway_ip or ""
    return Result(
        interfaces=(Interface(name=ifname, mac=port.mac_address, sandbox=netns),),
        ips=(IPConfig(address=address, gateway=gateway, interface=0),),
        routes=(Route(dst="0.0.0.0/0", gw=gateway),) if gateway else (),
        dns=Dns())


@contextlib.contextmanager
def _host_failure(what: str) -> Iterator[None]:
    """A netlink failure is the node's: a KuryrError naming what was being done."""
    try:
        yield
    except errors.KuryrError:
        raise
    except Exception as exc:  # pyroute2 raises NetlinkError, OSError...
        raise errors.KuryrError(f"{what}: {exc}") from exc
