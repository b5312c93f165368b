"""Kubernetes Services as load balancers: ClusterIP without kube-proxy.

Pods are Neutron ports on OVN: their packets never cross the host's
netfilter, so kube-proxy cannot implement a cluster IP.  Each Service
becomes one load balancer (VIP = its cluster IP on [kubernetes]
service_subnet), one listener and pool per (protocol, port), and the ready
endpoint addresses as members.

State lives in the backend (the load balancer carries the Service's uid as a
tag) and in the cluster (a finalizer on the Service, so a Service deleted
while the controller is away still takes its load balancer with it).  Each
pass reads the load balancer once and makes at most one write: the backend
refuses changes while a load balancer is busy, so the pass then raises
NotReady and the queue comes back with backoff (no busy polling, no thread
held while Octavia works).  A new Service is one request: the load balancer
with every listener, pool and member in it.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kuryr.k8s.api import KubeApi, ObjectGone
from kuryr.k8s.events import NotReady, Obj, metadata
from kuryr.lbaas.model import (
    Busy,
    Listener,
    LoadBalancer,
    LoadBalancerDriver,
    Member,
    Protocol_,
    SeenLoadBalancer,
    Status,
)
from kuryr.neutron.client import Neutron
from kuryr.neutron.types import Subnet

LOG = logging.getLogger(__name__)

FINALIZER = "openstack.org/kuryr-service"
LB_TAG = "kuryr.k8s.lb"  # every Service load balancer Kuryr made
SERVICE_TAG = "kuryr.k8s.svc:"  # + the Service's uid
HANDLED_TYPES = frozenset({"ClusterIP", "NodePort", "LoadBalancer"})


def owner_tag(uid: str) -> str:
    return f"{SERVICE_TAG}{uid}"


def spec(service: Obj) -> dict[str, Any]:
    found = service.get("spec")
    return found if isinstance(found, dict) else {}


def cluster_ip(service: Obj) -> str | None:
    """The Service's cluster IP when it needs a load balancer: None for a headless
    Service (clusterIP None) or an ExternalName one (no cluster IP)."""
    svc = spec(service)
    ip = svc.get("clusterIP")
    if svc.get("type", "ClusterIP") not in HANDLED_TYPES or not isinstance(ip, str) \
            or ip in ("", "None"):
        return None
    return ip


def _members_of(port: dict[str, Any], endpoints: Obj | None,
                subnet_of: Callable[[str], str | None], unplaced: set[str]) -> set[Member]:
    """The ready addresses of ``endpoints`` serving the Service port ``port``
    (matched by name: the Endpoints' port carries the resolved target port)."""
    name = port.get("name") or ""
    protocol = port.get("protocol") or "TCP"
    members: set[Member] = set()
    for subset in (endpoints or {}).get("subsets") or []:
        target = next((p for p in subset.get("ports") or []
                       if (p.get("name") or "") == name
                       and (p.get("protocol") or "TCP") == protocol), None)
        if target is None:
            continue
        for address in subset.get("addresses") or []:  # notReadyAddresses: not served
            ip = address.get("ip") or ""
            subnet_id = subnet_of(ip)
            if subnet_id is None:
                unplaced.add(ip)
                continue
            members.add(Member(address=ip, port=int(target["port"]), subnet_id=subnet_id))
    return members


def wanted_load_balancer(service: Obj, endpoints: Obj | None, vip_subnet_id: str,
                         subnet_of: Callable[[str], str | None], project_id: str = ""
                         ) -> tuple[LoadBalancer, set[str]]:
    """The load balancer ``service`` asks for, and the endpoint addresses on no
    known pod subnet (left out: the backend could not reach them)."""
    meta = metadata(service)
    svc = spec(service)
    unplaced: set[str] = set()
    listeners = []
    for port in svc.get("ports") or []:
        try:
            protocol = Protocol_(port.get("protocol") or "TCP")
        except ValueError:
            LOG.warning("Service %s/%s: protocol %s is not load balanced", meta.get("namespace"),
                        meta.get("name"), port.get("protocol"))
            continue
        listeners.append(Listener(protocol=protocol, port=int(port["port"]),
                                  members=frozenset(_members_of(port, endpoints, subnet_of,
                                                                unplaced))))
    algorithm = "SOURCE_IP" if svc.get("sessionAffinity") == "ClientIP" else "SOURCE_IP_PORT"
    lb = LoadBalancer(owner_tag=owner_tag(str(meta.get("uid"))),
                      name=f"kuryr/{meta.get('namespace')}/{meta.get('name')}"[:255],
                      vip_address=cluster_ip(service) or "", vip_subnet_id=vip_subnet_id,
                      listeners=tuple(listeners), algorithm=algorithm, tags=(LB_TAG,),
                      project_id=project_id)
    return lb, unplaced


class MemberSubnets:
    """Which pod subnet an endpoint address is on (a member's subnet: OVN
    attaches the load balancer to it).  The subnets are listed again (1 GET)
    when an address matches none, at most every ``refresh`` seconds: a new
    namespace's subnet (namespace driver) shows up within that."""

    def __init__(self, list_subnets: Callable[[], list[Subnet]], refresh: float = 10.0) -> None:
        self._list = list_subnets
        self._refresh = refresh
        self._lock = threading.Lock()
        self._subnets: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = []
        self._listed_at = float("-inf")

    def subnet_of(self, address: str) -> str | None:
        found = self._match(address)
        if found is not None:
            return found
        with self._lock:
            stale = time.monotonic() - self._listed_at >= self._refresh
        if stale:
            self._relist()
            found = self._match(address)
        return found

    def _match(self, address: str) -> str | None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        with self._lock:
            subnets = list(self._subnets)
        matching = [(net.prefixlen, subnet_id) for net, subnet_id in subnets if ip in net]
        return max(matching)[1] if matching else None

    def _relist(self) -> None:
        subnets = [(ipaddress.ip_network(s.cidr), s.id) for s in self._list()]  # no lock held
        with self._lock:
            self._subnets = subnets
            self._listed_at = time.monotonic()


class ExternalAddresses:
    """Where a Service of type LoadBalancer is reached from outside: a floating
    IP of [kubernetes] external_network on its VIP port, described with the
    Service's owner tag (found again by it: 1 GET)."""

    def __init__(self, neutron: Neutron, network_id: str) -> None:
        self._neutron = neutron
        self._network_id = network_id

    def ensure(self, tag: str, vip_port_id: str) -> str:
        """The floating IP's address (0-1 writes)."""
        found = self._neutron.floating_ips(tag, self._network_id)
        if not found:
            return self._neutron.create_floating_ip(self._network_id, tag,
                                                    port_id=vip_port_id).floating_ip_address
        if found[0].port_id != vip_port_id:
            self._neutron.associate_floating_ip(found[0].id, vip_port_id)
        return found[0].floating_ip_address

    def release(self, tag: str) -> None:
        """Deletes the Service's floating IPs (a VIP port's deletion only
        disassociates them: they would stay allocated)."""
        for fip in self._neutron.floating_ips(tag, self._network_id):
            self._neutron.delete_floating_ip(fip.id)


class ServiceLoadBalancers:
    """Makes each Service's load balancer match the Service and its Endpoints,
    one step per pass (module docstring)."""

    def __init__(self, driver: LoadBalancerDriver, kube: KubeApi, subnets: MemberSubnets,
                 vip_subnet: Subnet, external: ExternalAddresses | None = None) -> None:
        self._driver = driver
        self._kube = kube
        self._subnets = subnets
        self._vip_subnet = vip_subnet
        self._external = external

    def apply(self, service: Obj, endpoints: Obj | None) -> None:
        try:
            self._apply(service, endpoints)
        except Busy as exc:  # a change raced Octavia's own status: as pending
            raise NotReady(str(exc)) from exc

    def _apply(self, service: Obj, endpoints: Obj | None) -> None:
        meta = metadata(service)
        if meta.get("deletionTimestamp") or cluster_ip(service) is None:
            # Deleted, or headless / ExternalName (or turned into one): whatever
            # Kuryr made goes.  Without its finalizer it made nothing (the
            # finalizer comes first): no request for a headless Service's events.
            if FINALIZER in (meta.get("finalizers") or ()):
                self._remove(service)
            return
        if spec(service).get("selector") and endpoints is None:
            return  # the endpoints controller writes them shortly: their event comes
        service = self._with_finalizer(service)
        # The load balancer is the project's of the VIP subnet (an Octavia without
        # Keystone needs one named; with Keystone it is the token's own).
        wanted, unplaced = wanted_load_balancer(service, endpoints, self._vip_subnet.id,
                                                self._subnets.subnet_of,
                                                self._vip_subnet.project_id)
        if unplaced:
            LOG.warning("Service %s/%s: endpoints %s are on no pod subnet: not members",
                        meta.get("namespace"), meta.get("name"), ", ".join(sorted(unplaced)))
        seen = self._driver.find(wanted.owner_tag)
        if seen is None:
            self._driver.create(wanted)
            raise NotReady(f"load balancer {wanted.name} is being made")
        self._converge(wanted, seen)
        self._publish(service, seen)

    def _converge(self, wanted: LoadBalancer, seen: SeenLoadBalancer) -> None:
        """One write towards ``wanted``, then NotReady; nothing when it matches."""
        if seen.status.pending:
            raise NotReady(f"load balancer {seen.id} is {seen.status}")
        if seen.status is Status.ERROR:
            LOG.error("load balancer %s (%s) is in ERROR: deleting it to make it again",
                      seen.id, wanted.name)
            self._driver.delete(seen.id)
            raise NotReady(f"load balancer {seen.id} is being made again")
        for gone in (lst for lst in seen.listeners if wanted.listener(lst.name) is None):
            self._driver.delete_listener(gone)
            raise NotReady(f"load balancer {seen.id}: removing {gone.name}")
        for listener in wanted.listeners:
            found = seen.listener(listener.name)
            if found is None:
                self._driver.create_listener(seen.id, wanted, listener)
            elif found.pool_id is None:
                self._driver.create_pool(wanted, found.id, listener)
            elif found.members != {(m.address, m.port) for m in listener.members}:
                self._driver.replace_members(found.pool_id, list(listener.members))
            else:
                continue
            raise NotReady(f"load balancer {seen.id}: updating {listener.name}")

    def _publish(self, service: Obj, seen: SeenLoadBalancer) -> None:
        """type LoadBalancer: a floating IP on the VIP, shown in the Service's
        status; released when the Service is no longer of that type."""
        if self._external is None:
            return
        tag = owner_tag(str(metadata(service).get("uid")))
        status = service.get("status") or {}
        shown = [i.get("ip") for i in (status.get("loadBalancer") or {}).get("ingress") or []]
        if spec(service).get("type") != "LoadBalancer":
            if shown:
                self._external.release(tag)
                self._kube.patch_service_status(service, {"loadBalancer": {"ingress": None}})
            return
        address = self._external.ensure(tag, seen.vip_port_id)
        if shown != [address]:
            self._kube.patch_service_status(service, {"loadBalancer": {
                "ingress": [{"ip": address}]}})

    def remove_deleted(self, service: Obj) -> None:
        """A Service the API server deleted (its DELETED event): its load
        balancer, if it is still there (its finalizer was taken off by hand),
        goes; nothing is left to release."""
        try:
            self._remove(service, released=True)
        except Busy as exc:
            raise NotReady(str(exc)) from exc

    def _remove(self, service: Obj, released: bool = False) -> None:
        """The Service's load balancer (and floating IP) deleted, then its
        finalizer released; NotReady while the backend is still busy with it."""
        meta = metadata(service)
        tag = owner_tag(str(meta.get("uid")))
        seen = self._driver.find(tag)
        if seen is not None:
            if seen.status.pending:
                raise NotReady(f"load balancer {seen.id} is {seen.status}")
            if self._external is not None:
                self._external.release(tag)
            self._driver.delete(seen.id)
            raise NotReady(f"load balancer {seen.id} is being deleted")
        if self._external is not None:
            self._external.release(tag)
        if not released:
            self._without_finalizer(service)

    def _with_finalizer(self, service: Obj) -> Obj:
        finalizers = list(metadata(service).get("finalizers") or ())
        if FINALIZER in finalizers:
            return service
        return self._kube.patch_metadata("Service", service, finalizers=[*finalizers,
                                                                         FINALIZER])

    def _without_finalizer(self, service: Obj) -> None:
        finalizers = list(metadata(service).get("finalizers") or ())
        if FINALIZER not in finalizers:
            return
        try:
            self._kube.patch_metadata("Service", service,
                                      finalizers=[f for f in finalizers if f != FINALIZER])
        except ObjectGone:
            # A DELETED event's object still names the finalizer the pass that
            # deleted the load balancer released: the Service is gone already.
            LOG.debug("Service %s/%s is gone: its finalizer with it",
                      metadata(service).get("namespace"), metadata(service).get("name"))
