"""A node deleted from the cluster: its pods' Neutron ports go with it.

The node's CNI daemon cannot clean up after itself (the node is gone, or
leaving for good), so the controller deletes, once Kubernetes has deleted the
Node, the ports Kuryr for Kubernetes made for that host: pods', pooled and
reserved ones (marks.K8S_OWNERS) and the node's own probe port.  The node's
name is its Neutron binding host (kubelet's default, as the daemon's).
Docker's ports of the same host, and anyone else's, are never touched.

Each Node carries Kuryr's finalizer, so a Node deleted while the controller
is down stays (terminating) until the controller, back, has deleted its ports
and released it: nothing is missed, and nothing is guessed from Neutron (a
host whose kubelet has not registered yet has ports and no Node: never
collected).  Without the controller, removing the finalizer by hand
(`kubectl patch node N --type=json -p '[{"op": "remove", "path":
"/metadata/finalizers/0"}]'`, or `kubectl edit`) lets the deletion finish.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kuryr import errors
from kuryr.k8s.events import Obj, metadata
from kuryr.neutron import marks
from kuryr.neutron.client import Neutron

if TYPE_CHECKING:
    from kuryr.k8s.api import KubeApi

LOG = logging.getLogger(__name__)
NODE_OWNERS = (*marks.K8S_OWNERS.all, marks.K8S_HOST_DEVICE_OWNER)
NODE_FINALIZER = "openstack.org/kuryr-node"


@dataclass(frozen=True)
class NodePorts:
    neutron: Neutron
    kube: KubeApi | None = None  # None: no finalizer (ports collected on DELETED only)

    def apply_node(self, node: Obj) -> None:
        """A Node seen (ADDED, MODIFIED): hold it with the finalizer; one being
        deleted: delete its ports, then release it."""
        meta = metadata(node)
        finalizers = list(meta.get("finalizers") or ())
        if meta.get("deletionTimestamp"):
            self.delete_ports_of(str(meta.get("name") or ""))
            if self.kube is not None and NODE_FINALIZER in finalizers:
                self.kube.patch_metadata(
                    "Node", node, finalizers=[f for f in finalizers if f != NODE_FINALIZER])
            return
        if self.kube is not None and NODE_FINALIZER not in finalizers:
            self.kube.patch_metadata("Node", node, finalizers=[*finalizers, NODE_FINALIZER])

    def delete_ports_of(self, node: str) -> int:
        """1 GET, 1 DELETE per port; how many were deleted."""
        if not node:
            return 0
        deleted = 0
        for port in self.neutron.ports(binding_host_id=node):
            if port.device_owner not in NODE_OWNERS:
                continue
            try:
                self.neutron.delete_port(port.id)
            except errors.NotFound:
                continue
            deleted += 1
        if deleted:
            LOG.info("node %s is gone: deleted its %d Kuryr for Kubernetes ports",
                     node, deleted)
        return deleted
