"""A deleted node's ports: only Kuryr for Kubernetes' ports of that host go."""

from kuryr.k8s.nodes import NodePorts
from kuryr.neutron import marks

from .fakes import FakeNeutron


def test_a_deleted_nodes_pod_pool_and_probe_ports_go_and_nothing_else():
    neutron = FakeNeutron()
    net = neutron.add_network("pods")
    neutron.add_subnet(net.id, "10.244.0.0/16", "10.244.0.1")
    gone = {owner: neutron.add_port(net.id, f"10.244.0.{i + 10}", device_owner=owner,
                                    binding_host_id="node-2")
            for i, owner in enumerate((marks.K8S_DEVICE_OWNER, marks.K8S_POOL_DEVICE_OWNER,
                                       marks.K8S_UNBOUND_DEVICE_OWNER,
                                       marks.K8S_HOST_DEVICE_OWNER))}
    kept = [
        neutron.add_port(net.id, "10.244.0.20", device_owner=marks.DEVICE_OWNER,
                         binding_host_id="node-2"),  # Docker's, on the same host
        neutron.add_port(net.id, "10.244.0.21", device_owner="compute:nova",
                         binding_host_id="node-2"),  # a VM's
        neutron.add_port(net.id, "10.244.0.22", device_owner=marks.K8S_DEVICE_OWNER,
                         binding_host_id="node-20"),  # a node whose name starts the same
    ]
    assert NodePorts(neutron).delete_ports_of("node-2") == 4
    left = {p.id for p in neutron.ports()}
    assert not left & {p.id for p in gone.values()}
    assert {p.id for p in kept} <= left
    assert NodePorts(neutron).delete_ports_of("") == 0


class RecordingKube:
    """patch_metadata as the API server answers it: the patched object."""

    def __init__(self) -> None:
        self.patches: list[tuple[str, str, list[str]]] = []

    def patch_metadata(self, kind, obj, *, annotations=None, finalizers=None):
        self.patches.append((kind, obj["metadata"]["name"], list(finalizers or ())))
        return {**obj, "metadata": {**obj["metadata"], "finalizers": list(finalizers or ())}}


def _node(name: str, finalizers=(), deleting: bool = False) -> dict:
    meta = {"name": name, "resourceVersion": "7", "finalizers": list(finalizers)}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-01T02:00:00Z"
    return {"metadata": meta}


def test_a_node_is_held_by_the_finalizer_and_released_after_its_ports_went():
    """So a Node deleted while the controller was down is still collected."""
    from kuryr.k8s.nodes import NODE_FINALIZER

    neutron = FakeNeutron()
    net = neutron.add_network("pods")
    neutron.add_subnet(net.id, "10.244.0.0/16", "10.244.0.1")
    pod_port = neutron.add_port(net.id, "10.244.0.10", device_owner=marks.K8S_DEVICE_OWNER,
                                binding_host_id="node-3")
    kube = RecordingKube()
    nodes = NodePorts(neutron, kube)
    nodes.apply_node(_node("node-3", finalizers=["other"]))
    assert kube.patches == [("Node", "node-3", ["other", NODE_FINALIZER])]
    nodes.apply_node(_node("node-3", finalizers=["other", NODE_FINALIZER]))
    assert len(kube.patches) == 1  # held already: no request
    assert pod_port.id in neutron.ports_
    nodes.apply_node(_node("node-3", finalizers=["other", NODE_FINALIZER], deleting=True))
    assert pod_port.id not in neutron.ports_
    assert kube.patches[-1] == ("Node", "node-3", ["other"])  # only ours removed
