"""A node deleted from the cluster: its pods' Neutron ports go with it.

The node's CNI daemon cannot clean up after itself (the node is gone, or
leaving for good), so the controller deletes, once Kubernetes has deleted the
Node, the ports Kuryr for Kubernetes made for that host: pods', pooled and
reserved ones (marks.K8S_OWNERS) and the node's own probe port.  The node's
name is its Neutron binding host (kubelet's default, as the daemon's).
Docker's ports of the same host, and anyone else's, are never touched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from kuryr import errors
from kuryr.neutron import marks
from kuryr.neutron.client import Neutron

LOG = logging.getLogger(__name__)
NODE_OWNERS = (*marks.K8S_OWNERS.all, marks.K8S_HOST_DEVICE_OWNER)


@dataclass(frozen=True)
class NodePorts:
    neutron: Neutron

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
