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
