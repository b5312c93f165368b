"""Kubernetes pods on Neutron ports: the real cluster of `kuryr-aio up --k8s`
(kube-apiserver, kubelet, containerd), Kuryr's CNI and its node daemon."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from kuryr.aio import kubernetes, procs
from kuryr.aio.layout import POD_CIDR, Layout
from kuryr.aio.procs import StackError
from kuryr.binding import netlink
from kuryr.k8s.nodes import NODE_FINALIZER
from kuryr.neutron import marks

from . import helpers

pytestmark = pytest.mark.k8s
POOL_SIZE = 50  # [kubernetes] pool_size in the stack's kuryr.conf
HTTPD = ["sh", "-c", "echo ok > /var/www/index.html && exec httpd -f -p 8080 -h /var/www"]


def kubectl(layout: Layout, *args: str, input_text: str | None = None,
            timeout: float = 120) -> str:
    return kubernetes.kubectl(layout, *args, input_text=input_text, timeout=timeout)


def pod_doc(name: str, namespace: str, labels: dict[str, str] | None = None,
            command: list[str] | None = None, readiness: bool = True) -> dict:
    container: dict = {"name": "main", "image": "busybox", "imagePullPolicy": "IfNotPresent",
                       "command": command or HTTPD}
    if readiness:
        # kubelet probes from the host's namespace: through the node's own port.
        container["readinessProbe"] = {"httpGet": {"path": "/", "port": 8080},
                                       "periodSeconds": 1, "failureThreshold": 30}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
            "spec": {"containers": [container], "terminationGracePeriodSeconds": 0,
                     "automountServiceAccountToken": False}}


def run_pods(layout: Layout, docs: list[dict], timeout: float = 120) -> list[dict]:
    manifest = {"apiVersion": "v1", "kind": "List", "items": docs}
    kubectl(layout, "apply", "-f", "-", input_text=json.dumps(manifest))
    for doc in docs:
        meta = doc["metadata"]
        kubectl(layout, "wait", "-n", meta["namespace"], "--for=condition=Ready",
                f"pod/{meta['name']}", f"--timeout={int(timeout)}s", timeout=timeout + 30)
    return [get_pod(layout, d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs]


def get_pod(layout: Layout, namespace: str, name: str) -> dict:
    return json.loads(kubectl(layout, "get", "pod", "-n", namespace, name, "-o", "json"))


def exec_in(layout: Layout, pod: dict, *argv: str) -> subprocess.CompletedProcess:
    meta = pod["metadata"]
    return subprocess.run(
        [str(kubernetes.kubectl_path(layout)), f"--kubeconfig={kubernetes.kubeconfig(layout)}",
         "exec", "-n", meta["namespace"], meta["name"], "--", *argv],
        capture_output=True, text=True, timeout=60, check=False)


def http_get(layout: Layout, pod: dict, address: str, port: int = 8080) -> str:
    """GET / from inside ``pod`` (busybox nc: its static wget crashes resolving)."""
    request = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 \"$0\" \"$1\""
    return exec_in(layout, pod, "sh", "-c", request, address, str(port)).stdout


def pod_ports(neutron) -> dict[str, list]:
    """Pods' Neutron ports (Kuryr for Kubernetes' container owner) by device_id."""
    found: dict[str, list] = {}
    for port in neutron.ports(device_owner=marks.K8S_DEVICE_OWNER):
        found.setdefault(port.device_id, []).append(port)
    return found


def orphan_veths(neutron, host: str) -> set[str]:
    """Host ends of veths (tap<port id[:11]>) whose Neutron port bound here is gone."""
    live = {p.id[:11] for p in neutron.ports(binding_host_id=host)}
    return {n for n in netlink.link_names()
            if n.startswith("tap") and len(n) == 14 and n[3:] not in live}


def pool_ports(neutron, host: str) -> list:
    return neutron.ports(binding_host_id=host, device_owner=marks.K8S_POOL_DEVICE_OWNER)


def test_pods_of_two_namespaces_reach_each_other_on_neutron_ports(cluster, namespace,
                                                                  neutron):
    a, b = namespace(), namespace()
    pod_a, pod_b = run_pods(cluster, [pod_doc("web", a), pod_doc("web", b)])
    ip_a, ip_b = pod_a["status"]["podIP"], pod_b["status"]["podIP"]
    for ip in (ip_a, ip_b):
        assert ipaddress.ip_address(ip) in ipaddress.ip_network(POD_CIDR)
    # Ready: kubelet's HTTP probe from the host reached each pod.
    answer = http_get(cluster, pod_a, ip_b)
    assert answer.splitlines()[-1:] == ["ok"], answer
    assert exec_in(cluster, pod_b, "ping", "-c", "1", "-W", "2", ip_a).returncode == 0

    def recorded():
        ports = pod_ports(neutron)
        return all(pod["metadata"]["uid"] in ports for pod in (pod_a, pod_b)) and ports
    ports = helpers.wait_until(recorded, 20)
    assert ports, "the pods' ports were not recorded with their uid"
    for pod, ip in ((pod_a, ip_a), (pod_b, ip_b)):
        [port] = ports[pod["metadata"]["uid"]]
        assert port.binding_host_id == cluster.host
        assert [f.ip_address for f in port.fixed_ips] == [ip]
        assert port.status == "ACTIVE"


def test_twenty_pods_deleted_leave_no_port_or_veth(cluster, namespace, neutron):
    ns = namespace()
    # Earlier tests' leftovers (a dockerd killed mid-test) are not this test's.
    orphans_before = orphan_veths(neutron, cluster.host)
    pods = run_pods(cluster, [pod_doc(f"p{i}", ns, readiness=False,
                                      command=["sleep", "3600"]) for i in range(20)],
                    timeout=180)
    uids = {p["metadata"]["uid"] for p in pods}
    assert len({p["status"]["podIP"] for p in pods}) == 20
    kubectl(cluster, "delete", "pods", "--all", "-n", ns, "--wait=true", timeout=180)

    def nothing_left():
        return not (uids & set(pod_ports(neutron))) \
            and orphan_veths(neutron, cluster.host) <= orphans_before
    assert helpers.wait_until(nothing_left, 60, interval=1), (
        f"left: ports {uids & set(pod_ports(neutron))}, "
        f"veths {orphan_veths(neutron, cluster.host) - orphans_before}")
    # Recycled ports wait in the pool (up to twice its size) for the next pods.
    # (A refill made while the pods started may still be landing.)
    assert helpers.wait_until(
        lambda: len(pool_ports(neutron, cluster.host)) <= 2 * POOL_SIZE, 30, interval=1), \
        f"{len(pool_ports(neutron, cluster.host))} ports wait in the pool"


def test_daemon_killed_during_pod_starts_leaves_one_port_per_pod(cluster, namespace,
                                                                 neutron):
    ns = namespace()
    pidfile = cluster.pidfile("kuryr-cni-daemon")
    docs = [pod_doc(f"c{i}", ns, readiness=False, command=["sleep", "3600"])
            for i in range(8)]
    kubectl(cluster, "apply", "-f", "-",
            input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
    time.sleep(1.0)  # some ADDs in flight, some done, some not started
    os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)
    controller = cluster.pidfile("kuryr-k8s-controller").read_text().split()[0]
    os.kill(int(controller), signal.SIGKILL)
    proc = subprocess.run([helpers.aio_command(), "up"], text=True, check=False)
    assert proc.returncode == 0
    pods = run_pods(cluster, docs, timeout=180)
    ports = helpers.wait_until(
        lambda: (found := pod_ports(neutron)) and all(
            p["metadata"]["uid"] in found for p in pods) and found, 30)
    assert ports
    for pod in pods:
        assert len(ports[pod["metadata"]["uid"]]) == 1, pod["metadata"]["name"]
    kubectl(cluster, "delete", "pods", "--all", "-n", ns, "--wait=true", timeout=180)
    uids = {p["metadata"]["uid"] for p in pods}
    assert helpers.wait_until(lambda: not (uids & set(pod_ports(neutron))), 60)


def policy_doc(name: str, namespace: str, spec: dict) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def answers(layout: Layout, client: dict, address: str) -> bool:
    return http_get(layout, client, address).splitlines()[-1:] == ["ok"]


def test_network_policy_denies_then_admits_exactly_the_labelled_pod(cluster, namespace):
    ns = namespace()
    web, friend, stranger = run_pods(cluster, [
        pod_doc("web", ns, labels={"app": "web"}),
        pod_doc("friend", ns, labels={"role": "client"}),
        pod_doc("stranger", ns)])
    address = web["status"]["podIP"]
    assert answers(cluster, friend, address)
    assert answers(cluster, stranger, address)
    deny = policy_doc("deny-ingress", ns, {"podSelector": {}, "policyTypes": ["Ingress"]})
    kubectl(cluster, "apply", "-f", "-", input_text=json.dumps(deny))
    # OVN enforces it: both connections refused (time out), not just unanswered.
    assert helpers.wait_until(lambda: not answers(cluster, friend, address), 60, interval=1)
    assert not answers(cluster, stranger, address)
    allow = policy_doc("allow-clients", ns, {
        "podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                     "ports": [{"protocol": "TCP", "port": 8080}]}]})
    kubectl(cluster, "apply", "-f", "-", input_text=json.dumps(allow))
    assert helpers.wait_until(lambda: answers(cluster, friend, address), 60, interval=1)
    assert not answers(cluster, stranger, address)
    # The isolated pod stays Ready: kubelet's probes come from the node's own port.
    kubectl(cluster, "wait", "-n", ns, "--for=condition=Ready", "pod/web", "--timeout=30s")
    kubectl(cluster, "delete", "networkpolicy", "-n", ns, "deny-ingress", "allow-clients",
            "--wait=true")
    assert helpers.wait_until(lambda: answers(cluster, stranger, address), 60, interval=1)


def test_one_of_two_controllers_holds_the_lease_and_the_other_takes_over_when_it_expires(
        cluster, unique):
    """Leader election on a Lease of its own (the stack's controller keeps its)."""
    from lightkube import Client, KubeConfig
    from lightkube.resources.coordination_v1 import Lease

    from kuryr.k8s.api import KubeApi

    kube = KubeApi(Client(KubeConfig.from_file(str(kubernetes.kubeconfig(cluster)))))
    name, duration = f"kt-lease-{unique}", 3
    try:
        assert kube.hold_lease("a", duration, name=name)
        assert not kube.hold_lease("b", duration, name=name)  # a's is fresh
        assert kube.hold_lease("a", duration, name=name)  # renewed
        time.sleep(duration + 1)  # a stops renewing: its Lease expires
        assert kube.hold_lease("b", duration, name=name)
        assert not kube.hold_lease("a", duration, name=name)  # a, back, sees b lead
        kube.release_lease("a", name=name)  # not a's: nothing happens
        assert not kube.hold_lease("a", duration, name=name)
        kube.release_lease("b", name=name)  # b stops cleanly: a leads at once
        assert kube.hold_lease("a", duration, name=name)
    finally:
        kube._client.delete(Lease, name, namespace="kube-system")


def test_kuryr_status_covers_the_cni_daemon_and_the_controller(cluster):
    kuryr = str(Path(helpers.aio_command()).parent / "kuryr")
    proc = subprocess.run([kuryr, "status"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "KURYR_CONFIG_FILE": str(cluster.kuryr_conf)},
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("OK    cni-daemon:") for line in lines), lines
    assert any(line.startswith("OK    k8s-controller:") for line in lines), lines


def test_deployment_manifests_are_valid_for_the_api_server(cluster):
    """The DaemonSet, Deployment, RBAC and ConfigMap of docs/kubernetes.md, checked by
    the real API server (server-side dry run: validated and admitted, not stored)."""
    manifests = Path(kubernetes.__file__).parent.parent / "k8s" / "manifests"
    out = kubectl(cluster, "apply", "--dry-run=server", "-f", str(manifests / "rbac.yaml"),
                  "-f", str(manifests / "kuryr.yaml"))
    for kind in ("clusterrole.rbac.authorization.k8s.io/kuryr", "serviceaccount/kuryr",
                 "configmap/kuryr-config", "daemonset.apps/kuryr-cni",
                 "deployment.apps/kuryr-controller"):
        assert kind in out, out


def test_a_deleted_nodes_pod_ports_are_collected_and_no_one_elses(cluster, neutron, unique):
    node = f"kt-node-{unique}"
    net = neutron.find_network("kuryr-aio-pods")
    made = {owner: neutron.api.create_port(network_id=net.id, device_owner=owner,
                                           binding_host_id=node, name=f"kt-{unique}")
            for owner in (marks.K8S_DEVICE_OWNER, marks.K8S_POOL_DEVICE_OWNER,
                          marks.DEVICE_OWNER)}
    try:
        doc = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}
        kubectl(cluster, "apply", "-f", "-", input_text=json.dumps(doc))
        time.sleep(2)  # the controller has seen it (a Node it never saw is not collected)
        kubectl(cluster, "delete", "node", node)

        def left():
            return {p.device_owner for p in neutron.ports(binding_host_id=node)}
        assert helpers.wait_until(lambda: left() == {marks.DEVICE_OWNER}, 30, interval=1), \
            left()
    finally:
        for port in made.values():
            neutron.api.delete_port(port.id, ignore_missing=True)


def test_a_node_deleted_while_the_controller_is_down_is_collected_when_it_is_back(
        cluster, neutron, unique):
    node = f"kt-gone-{unique}"
    net = neutron.find_network("kuryr-aio-pods")
    port = neutron.api.create_port(network_id=net.id, device_owner=marks.K8S_POOL_DEVICE_OWNER,
                                   binding_host_id=node, name=f"kt-{unique}")
    try:
        doc = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}
        kubectl(cluster, "apply", "-f", "-", input_text=json.dumps(doc))

        def finalizers() -> list[str] | None:
            try:
                found = json.loads(kubectl(cluster, "get", "node", node, "-o", "json"))
            except StackError:
                return None  # gone
            return found["metadata"].get("finalizers") or []
        assert helpers.wait_until(lambda: NODE_FINALIZER in (finalizers() or []), 30,
                                  interval=0.5), finalizers()
        pidfile = cluster.pidfile("kuryr-k8s-controller")
        os.kill(int(pidfile.read_text().split()[0]), signal.SIGTERM)
        assert helpers.wait_until(lambda: not procs.running(pidfile), 30, interval=0.5)
        kubectl(cluster, "delete", "node", node, "--wait=false")
        time.sleep(3)
        assert finalizers() == [NODE_FINALIZER]  # held: terminating, not gone
        assert neutron.api.get_port(port.id) is not None
        proc = subprocess.run([helpers.aio_command(), "up"], text=True, check=False)
        assert proc.returncode == 0
        assert helpers.wait_until(lambda: finalizers() is None, 60, interval=1), finalizers()
        assert not list(neutron.api.ports(binding_host_id=node))
    finally:
        neutron.api.delete_port(port.id, ignore_missing=True)
        with contextlib.suppress(StackError):  # the test failed half-way: let it go
            kubectl(cluster, "patch", "node", node, "--type=merge", "-p",
                    '{"metadata": {"finalizers": null}}')
