"""Services' load balancers in Octavia (the OVN provider by default).

Every load balancer Kuryr makes carries two tags: ``kuryr.k8s.lb`` (Kuryr's)
and ``kuryr.k8s.svc:<uid>`` (the Service's uid: a Service deleted and made
again under the same name is another Service, with another load balancer).
Listeners and their pools are named "<PROTOCOL>:<port>".

Requests go through openstacksdk's authenticated load-balancer adapter as
plain REST: the two calls that keep Kuryr's round trips low are not in its
proxy: the status tree (load balancer, listeners, pools, members in one GET)
and the batch member update (a pool's members in one PUT).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from openstack import exceptions as os_exc
from oslo_config import cfg

from kuryr.config import OCTAVIA_GROUP
from kuryr.lbaas.model import (
    Busy,
    Listener,
    LoadBalancer,
    Member,
    SeenListener,
    SeenLoadBalancer,
    Status,
)
from kuryr.neutron.client import RequestCounter, openstack_connection

LOG = logging.getLogger(__name__)



def member_body(member: Member) -> dict[str, Any]:
    return {"address": member.address, "protocol_port": member.port,
            "subnet_id": member.subnet_id}


def pool_body(lb: LoadBalancer, listener: Listener) -> dict[str, Any]:
    return {"name": listener.name, "protocol": str(listener.protocol),
            "lb_algorithm": lb.algorithm,
            "members": [member_body(m) for m in sorted(listener.members)]}


def listener_body(listener: Listener) -> dict[str, Any]:
    return {"name": listener.name, "protocol": str(listener.protocol),
            "protocol_port": listener.port}


def load_balancer_body(lb: LoadBalancer, provider: str) -> dict[str, Any]:
    """A fully populated create: the load balancer, its listeners, their pools
    and members in one request (one provisioning round instead of 2 + 2 per port)."""
    project = {"project_id": lb.project_id} if lb.project_id else {}
    return {"name": lb.name, "vip_address": lb.vip_address, "vip_subnet_id": lb.vip_subnet_id,
            "provider": provider, "tags": [*lb.tags, lb.owner_tag], **project,
            "listeners": [{**listener_body(lst), "default_pool": pool_body(lb, lst)}
                          for lst in lb.listeners]}


def seen_from_status(lb: dict[str, Any], tree: dict[str, Any]) -> SeenLoadBalancer:
    """The load balancer from its GET and its status tree.  Its status is
    pending while any part is: the OVN provider reports the load balancer
    ACTIVE before a pool's members are done, and Octavia refuses changes to a
    pending part."""
    listeners = []
    statuses = [lb["provisioning_status"], tree.get("provisioning_status") or "ACTIVE"]
    for lst in tree.get("listeners", []):
        pools = lst.get("pools") or []
        pool = pools[0] if pools else None
        members = (pool or {}).get("members", [])
        statuses += [part.get("provisioning_status") or "ACTIVE"
                     for part in [lst, *pools, *members]]
        listeners.append(SeenListener(
            id=lst["id"], name=lst.get("name") or "", pool_id=pool["id"] if pool else None,
            members=frozenset((m["address"], int(m["protocol_port"])) for m in members)))
    status = next((Status(s) for s in statuses if Status(s).pending), Status(statuses[0]))
    return SeenLoadBalancer(id=lb["id"], status=status,
                            vip_address=lb.get("vip_address") or "",
                            vip_port_id=lb.get("vip_port_id") or "",
                            listeners=tuple(listeners))


class Octavia:
    """A :class:`kuryr.lbaas.model.LoadBalancerDriver` on Octavia's v2 API."""

    def __init__(self, adapter: Any, provider: str,  # noqa: ANN401 - openstacksdk's proxy
                 counter: RequestCounter | None = None) -> None:
        self._api = adapter
        self._provider = provider
        self.counter = counter or RequestCounter()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None,
              ok_missing: bool = False) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"json": body} if body is not None else {}
        resp = self._api.request(path, method, **kwargs)
        if ok_missing and resp.status_code == 404:  # noqa: PLR2004
            return {}
        if resp.status_code == 409:  # noqa: PLR2004 - "immutable": busy with an earlier change
            raise Busy(f"Octavia {method} {path}: {resp.text[:200]}")
        os_exc.raise_from_response(resp, f"Octavia {method} {path}")
        return resp.json() if resp.content else {}

    def find(self, owner_tag: str) -> SeenLoadBalancer | None:
        found = self._call("GET", f"/lbaas/loadbalancers?tags={owner_tag}")["loadbalancers"]
        live = [lb for lb in found if lb["provisioning_status"] != Status.DELETED]
        if not live:
            return None
        if len(live) > 1:
            LOG.warning("%d load balancers carry %s: using %s", len(live), owner_tag,
                        live[0]["id"])
        lb = live[0]
        tree = self._call("GET", f"/lbaas/loadbalancers/{lb['id']}/status", ok_missing=True)
        if not tree:  # deleted between the two reads
            return None
        return seen_from_status(lb, tree["statuses"]["loadbalancer"])

    def owned(self, tag: str) -> list[tuple[str, tuple[str, ...]]]:
        found = self._call("GET", f"/lbaas/loadbalancers?tags={tag}")["loadbalancers"]
        return [(lb["id"], tuple(lb.get("tags") or ())) for lb in found]

    def create(self, lb: LoadBalancer) -> None:
        made = self._call("POST", "/lbaas/loadbalancers",
                          {"loadbalancer": load_balancer_body(lb, self._provider)})
        LOG.info("load balancer %s (%s) for %s: VIP %s, %d listener(s)",
                 made["loadbalancer"]["id"], lb.name, lb.owner_tag, lb.vip_address,
                 len(lb.listeners))

    def create_listener(self, lb_id: str, lb: LoadBalancer, listener: Listener) -> None:
        self._call("POST", "/lbaas/listeners",
                   {"listener": {**listener_body(listener), "loadbalancer_id": lb_id}})

    def create_pool(self, lb: LoadBalancer, listener_id: str, listener: Listener) -> None:
        self._call("POST", "/lbaas/pools",
                   {"pool": {**pool_body(lb, listener), "listener_id": listener_id}})

    def delete_listener(self, listener: SeenListener) -> None:
        if listener.pool_id is not None:
            self._call("DELETE", f"/lbaas/pools/{listener.pool_id}", ok_missing=True)
            return  # the listener goes on the next pass, once the pool's delete is done
        self._call("DELETE", f"/lbaas/listeners/{listener.id}", ok_missing=True)

    def replace_members(self, pool_id: str, members: Sequence[Member]) -> None:
        self._call("PUT", f"/lbaas/pools/{pool_id}/members",
                   {"members": [member_body(m) for m in sorted(members)]})

    def delete(self, lb_id: str) -> None:
        self._call("DELETE", f"/lbaas/loadbalancers/{lb_id}?cascade=true", ok_missing=True)


def connect(conf: cfg.ConfigOpts, counter: RequestCounter | None = None) -> Octavia:
    """Octavia on [neutron]'s credentials and [octavia]'s endpoint."""
    counter = counter or RequestCounter()
    group = conf[OCTAVIA_GROUP]
    overrides: dict[str, Any] = {}
    if group.endpoint_override:
        overrides["load_balancer_endpoint_override"] = group.endpoint_override
    conn = openstack_connection(conf, counter, **overrides)
    return Octavia(conn.load_balancer, group.provider, counter)
