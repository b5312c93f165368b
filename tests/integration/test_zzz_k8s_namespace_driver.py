"""`kuryr cni-daemon` with pod_network_driver = namespace, end to end on the
running all-in-one stack and its Kubernetes cluster, without changing either.

The test starts its OWN daemon (own kuryr.conf, own socket under tmp_path),
makes its own Neutron networks and Kubernetes Namespaces (unique names), writes
each Namespace's network annotation itself (as the controller would), and
drives the real `kuryr-cni` against network namespaces standing in for pods.
No Pod is created in the cluster.  Everything it made is removed at teardown.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from lightkube import Client, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace
from lightkube.types import PatchType

from kuryr.binding import netlink
from kuryr.binding.vif import VIF
from kuryr.k8s.namespaces import network_annotation
from kuryr.neutron import marks

from . import test_cni_daemon as base
from .test_cni_daemon import CniDaemon, wait_until

# The shared daemon test's fixtures (Neutron, OVS, clean-up, a unique suffix).
cleanup, neutron, ovs, unique = base.cleanup, base.neutron, base.ovs, base.unique

ADMIN_KUBECONFIG = Path("/var/lib/kuryr-aio/k8s/pki/admin.kubeconfig")
KURYR_KUBECONFIG = Path("/var/lib/kuryr-aio/k8s/pki/kuryr.kubeconfig")
CIDRS = ("10.214.0.0/24", "10.215.0.0/24")
WAIT = 3.0  # [kubernetes] namespace_network_wait of the test's daemon

# After test_zzz_k8s.py (file order): the cluster is up by then, so the Docker
# tests before never run beside it.  `cluster` brings it up when run alone.
pytestmark = [*base.pytestmark, pytest.mark.k8s]


@pytest.fixture(scope="module")
def kube(cluster):
    return Client(config=KubeConfig.from_file(str(ADMIN_KUBECONFIG)), trust_env=False)


def _delete_network_and_ports(neutron, ovs, network_id: str) -> None:
    for port in neutron.api.ports(network_id=network_id):
        vif = VIF(port.id, port.mac_address)
        ovs.unplug(vif.host_ifname)
        netlink.delete_link(vif.host_ifname)
        neutron.api.delete_port(port.id, ignore_missing=True)
    neutron.api.delete_network(network_id, ignore_missing=True)


@pytest.fixture
def ns_nets(neutron, ovs, cleanup, unique):
    """Two Neutron networks with one subnet each, as the controller makes them."""
    made = []
    for i, cidr in enumerate(CIDRS):
        net = neutron.api.create_network(name=f"test-cnins-{unique}-{i}")
        cleanup(lambda net=net: _delete_network_and_ports(neutron, ovs, net.id))
        subnet = neutron.api.create_subnet(network_id=net.id, ip_version=4, cidr=cidr,
                                           gateway_ip=cidr.replace("0/24", "1"),
                                           is_dhcp_enabled=False, name=net.name)
        made.append(neutron.get_subnet(subnet.id))
    return made


@pytest.fixture
def k8s_namespaces(kube, cleanup, unique):
    """Three Namespaces of the test's own: two to annotate, one left without."""
    names = [f"cnins-{unique}-{i}" for i in range(3)]
    for name in names:
        kube.create(Namespace(metadata=ObjectMeta(name=name)))
        cleanup(lambda name=name: kube.delete(Namespace, name))
    return names


def annotate(kube, name: str, value: str) -> None:
    kube.patch(Namespace, name, {"metadata": {"annotations": {
        marks.K8S_NETWORK_ANNOTATION: value}}}, patch_type=PatchType.MERGE)


@pytest.fixture
def daemon(tmp_path, cleanup):
    return base.start_daemon(
        tmp_path, cleanup,
        {"pod_network_driver": "namespace", "kubeconfig": str(KURYR_KUBECONFIG),
         "namespace_network_wait": str(WAIT), "pool_size": "1"},
        # gc off: the shared stack's leftovers are not this test's.
        {"gc": {"interval": "0"}})


@pytest.fixture
def sandboxes(cleanup, unique):
    return base.make_sandboxes(cleanup, f"cnins-{unique}", 3)


def cni_in(command: str, daemon: CniDaemon, cid: str, sandbox: str, namespace: str,
           pod: str, uid: str = "") -> tuple[int, dict | None]:
    return base.cni(command, daemon, cid, sandbox, pod, uid, namespace=namespace)


def test_pods_of_two_namespaces_get_ports_on_their_networks(
        daemon, kube, k8s_namespaces, ns_nets, sandboxes, neutron, ovs, unique):
    for name, subnet in zip(k8s_namespaces[:2], ns_nets, strict=True):
        annotate(kube, name, network_annotation(subnet))
    ids = [uuid.uuid4().hex * 2 for _ in range(2)]
    uids = [str(uuid.uuid4()) for _ in range(2)]
    results = []
    for i in range(2):
        status, result = cni_in("ADD", daemon, ids[i], sandboxes[i], k8s_namespaces[i],
                                f"web-{i}", uids[i])
        assert status == 0, (result, daemon.log.read_text()[-3000:])
        results.append(result)
    for result, subnet in zip(results, ns_nets, strict=True):
        address = result["ips"][0]["address"]
        assert address.startswith(subnet.cidr.rsplit(".", 1)[0] + "."), result
        assert result["ips"][0]["gateway"] == subnet.gateway_ip

    # Each pod's port is on its namespace's network, recorded as the pod's.
    def recorded(i: int):
        found = [p for p in neutron.api.ports(network_id=ns_nets[i].network_id)
                 if p.device_id == uids[i]]
        return found[0] if found and found[0].tags else None

    pod_ports = []
    for i in range(2):
        port = wait_until(lambda i=i: recorded(i), 15)
        assert port is not None, list(neutron.api.ports(network_id=ns_nets[i].network_id))
        assert port.device_owner == marks.K8S_DEVICE_OWNER
        assert port.mac_address == results[i]["interfaces"][0]["mac"]
        assert port.tags == [f"kuryr.k8s.pod:{k8s_namespaces[i]}/web-{i}"]
        pod_ports.append(port.id)

    # The pool of each namespace's network was asked for on its first pod.
    def pooled(i: int):
        return [p for p in neutron.api.ports(network_id=ns_nets[i].network_id)
                if p.device_owner == marks.K8S_POOL_DEVICE_OWNER]
    assert wait_until(lambda: pooled(0) and pooled(1), 20)

    # CHECK finds each; DEL (twice) cleans up, the interface leaves the sandbox.
    for i in range(2):
        assert cni_in("CHECK", daemon, ids[i], sandboxes[i], k8s_namespaces[i],
                      f"web-{i}") == (0, None)
        assert cni_in("DEL", daemon, ids[i], sandboxes[i], k8s_namespaces[i],
                      f"web-{i}") == (0, None)
        assert cni_in("DEL", daemon, ids[i], sandboxes[i], k8s_namespaces[i],
                      f"web-{i}") == (0, None)
        assert netlink.interface_in_netns(f"/var/run/netns/{sandboxes[i]}", "eth0") is None

    def no_pod_port():
        return not any(p.device_owner == marks.K8S_DEVICE_OWNER or p.device_id
                       for i in range(2)
                       for p in neutron.api.ports(network_id=ns_nets[i].network_id))
    assert wait_until(no_pod_port, 20)
    assert not any(cid in ids for cid in ovs.endpoint_ports())


def test_a_namespace_without_its_annotation_is_try_again_after_the_wait(
        daemon, k8s_namespaces, sandboxes):
    cid = uuid.uuid4().hex * 2
    started = time.monotonic()
    status, error = cni_in("ADD", daemon, cid, sandboxes[2], k8s_namespaces[2], "late")
    took = time.monotonic() - started
    seen = (status, error, took, daemon.log.read_text()[-2000:])
    assert status == 1, seen
    assert error is not None, seen
    assert error["code"] == 11, seen
    assert k8s_namespaces[2] in error["msg"], seen
    # The bounded wait, plus the plugin's start and a loaded host's slack.
    assert WAIT - 0.5 <= took < WAIT + 30, seen
    assert netlink.interface_in_netns(f"/var/run/netns/{sandboxes[2]}", "eth0") is None


def test_a_bad_annotation_is_a_clear_error(daemon, kube, k8s_namespaces, sandboxes):
    annotate(kube, k8s_namespaces[2], "{not json")
    status, error = cni_in("ADD", daemon, uuid.uuid4().hex * 2, sandboxes[2],
                           k8s_namespaces[2], "bad")
    assert status == 1
    assert error is not None
    assert error["code"] == 7, error
    assert f"namespace {k8s_namespaces[2]}" in error["msg"]
    assert "is not JSON" in error["msg"]
