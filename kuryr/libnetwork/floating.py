"""Neutron-native publishing: a floating IP with port forwardings.

With ``[publish] floating_ip_network`` set, every published port also becomes
a port forwarding FIP:HostPort -> container:Port on one floating IP per host,
reachable from the external network.  The container's subnet is attached to
Kuryr's router (gateway on that network) the first time it publishes.
Everything lives in Neutron, so a restart has nothing to rebuild.

Neutron requests: 1 POST per published port at start, 1 GET + 1 DELETE per
port at stop; once per process: the router and floating IP (found or made);
once per subnet: the router interface.
"""

from __future__ import annotations

import logging
import threading

from kuryr import errors
from kuryr.neutron import marks
from kuryr.neutron.client import Neutron
from kuryr.neutron.types import Port
from kuryr.publish.spec import Published

LOG = logging.getLogger(__name__)


class FloatingPublisher:
    def __init__(self, neutron: Neutron, host: str, external_network: str,
                 router_name: str) -> None:
        self.neutron = neutron
        self.host = host
        self.external_network = external_network
        self.router_name = router_name
        self._lock = threading.Lock()  # guards the fields below; never held across a request
        self._ready = threading.Event()  # the router and floating IP are known
        self._setting_up = False
        self._router: str | None = None
        self._fip: str | None = None
        self._subnets: set[str] = set()  # attached to the router by this process

    @property
    def enabled(self) -> bool:
        return bool(self.external_network)

    def _setup(self) -> tuple[str, str]:
        """(router id, floating IP id), found or created once per process: the first
        caller makes the requests, the others wait for its result (a second
        publisher must not make a second router)."""
        while True:
            with self._lock:
                if self._router is not None and self._fip is not None:
                    return self._router, self._fip
                mine = not self._setting_up
                if mine:
                    self._setting_up = True
                    self._ready.clear()
            if mine:
                break
            self._ready.wait(timeout=60)
        try:
            router_id, fip_id = self._find_or_make()
            with self._lock:
                self._router, self._fip = router_id, fip_id
            return router_id, fip_id
        finally:
            with self._lock:
                self._setting_up = False
            self._ready.set()  # done, or failed: a waiter tries again

    def _find_or_make(self) -> tuple[str, str]:
        external = self.neutron.find_network(self.external_network)
        router = self.neutron.find_router(self.router_name)
        if router is None:
            router = self.neutron.create_router(self.router_name, external.id)
        description = marks.publishing_ip_description(self.host)
        fips = self.neutron.floating_ips(description, external.id)
        fip = fips[0] if fips else self.neutron.create_floating_ip(external.id, description)
        LOG.info("publishing through floating IP %s (router %s)", fip.floating_ip_address,
                 router.id)
        return router.id, fip.id

    def _attach_subnets(self, router_id: str, port: Port) -> None:
        for subnet_id in {f.subnet_id for f in port.fixed_ips}:
            with self._lock:
                if subnet_id in self._subnets:
                    continue
            try:
                self.neutron.add_router_interface(router_id, subnet_id)
            except (errors.InvalidInput, errors.Conflict) as exc:
                if "already has" not in str(exc) and "overlaps" not in str(exc):
                    raise
            with self._lock:
                self._subnets.add(subnet_id)

    def forward(self, port: Port, published: list[Published]) -> None:
        router_id, fip_id = self._setup()
        self._attach_subnets(router_id, port)
        ipv4 = [f.ip_address for f in port.fixed_ips if ":" not in f.ip_address]
        if not ipv4:
            raise errors.InvalidInput("floating IP publishing needs an IPv4 address")
        try:
            for item in published:
                self.neutron.create_port_forwarding(
                    fip_id, protocol=item.proto, internal_ip_address=ipv4[0],
                    internal_port=item.container_port, internal_port_id=port.id,
                    external_port=item.host_port)
        except Exception:
            self.unforward(port.id)
            raise

    def unforward(self, port_id: str) -> None:
        if not self.enabled:
            return
        _, fip_id = self._setup()
        for forwarding in self.neutron.port_forwardings(fip_id, internal_port_id=port_id):
            self.neutron.delete_port_forwarding(fip_id, forwarding.id)

    def detach_subnets(self, subnet_ids: list[str], known_only: bool = True) -> None:
        """Before a network is deleted: take its subnets off Kuryr's router.

        ``known_only``: just the subnets this process attached (no request for the
        others); a restarted Kuryr finds out from Neutron refusing the delete."""
        if not self.enabled:
            return
        with self._lock:
            if known_only:
                subnet_ids = [s for s in subnet_ids if s in self._subnets]
        if not subnet_ids:
            return
        router_id, _ = self._setup()
        for subnet_id in subnet_ids:
            try:
                self.neutron.remove_router_interface(router_id, subnet_id)
            except errors.Conflict as exc:
                # The router is every host's: on a network the dockerds of several
                # hosts share, another host's forwardings may still need it.
                LOG.info("subnet %s stays on router %s (still used): %s",
                         subnet_id, router_id, exc)
            with self._lock:
                self._subnets.discard(subnet_id)
