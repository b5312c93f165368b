"""Kubernetes Services as Octavia load balancers (OVN provider) on the real
cluster of `kuryr-aio up --k8s`: ClusterIP from pods (no kube-proxy: pods are
Neutron ports on OVN), UDP, the API server's own Service, type LoadBalancer
from the stack's outside namespace, and what a deletion leaves."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request

import pytest

from kuryr.aio import procs
from kuryr.aio.layout import OUTSIDE_NETNS, Layout
from kuryr.k8s.services import FINALIZER

from . import helpers
from .test_zzz_k8s import exec_in, kubectl, run_pods

pytestmark = pytest.mark.k8s
# A page naming the backend that served it.
WEB = ["sh", "-c", ("mkdir -p /var/www && hostname > /var/www/index.html && "
                    "exec httpd -f -p 8080 -h /var/www")]
API_SERVICE_IP = "10.96.0.1"
# busybox has no UDP server or client: these pods run the host's Python, its
# /usr mounted read-only (nothing else of the host).
HOST_PYTHON_VOLUMES = [{"name": name, "hostPath": {"path": path}}
                       for name, path in (("usr", "/usr"), ("lib", "/usr/lib"),
                                          ("lib64", "/usr/lib64"))]
HOST_PYTHON_MOUNTS = [{"name": name, "mountPath": path, "readOnly": True}
                      for name, path in (("usr", "/usr"), ("lib", "/lib"), ("lib64", "/lib64"))]
UDP_ECHO = ("import os, socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.bind(('', 5353))\n"
            "while True:\n"
            "    data, peer = s.recvfrom(2048)\n"
            "    s.sendto(os.uname().nodename.encode() + b' ' + data, peer)\n")


def pod(name: str, ns: str, labels: dict | None = None, command: list[str] | None = None,
        host_python: bool = False) -> dict:
    container: dict = {"name": "main", "image": "busybox", "imagePullPolicy": "IfNotPresent",
                       "command": command or ["sleep", "3600"]}
    spec: dict = {"containers": [container], "terminationGracePeriodSeconds": 0,
                  "automountServiceAccountToken": False}
    if host_python:
        container["volumeMounts"] = HOST_PYTHON_MOUNTS
        spec["volumes"] = HOST_PYTHON_VOLUMES
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels or {}}, "spec": spec}


def service(name: str, ns: str, ports: list[dict], selector: dict | None = None,
            kind: str = "ClusterIP") -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"type": kind, "selector": selector or {"app": "web"}, "ports": ports}}


def apply(layout: Layout, *docs: dict) -> None:
    kubectl(layout, "apply", "-f", "-", input_text=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": list(docs)}))


def cluster_ip(layout: Layout, ns: str, name: str) -> str:
    return get_service(layout, ns, name)["spec"]["clusterIP"]


def get_service(layout: Layout, ns: str, name: str) -> dict:
    return json.loads(kubectl(layout, "get", "service", "-n", ns, name, "-o", "json"))


def served_by(layout: Layout, client: dict, address: str, port: int = 80,
              tries: int = 1) -> list[str]:
    """The pages (backend names) of ``tries`` GETs through ``address``, one
    kubectl exec; "" for a connection that got nothing (refused, timed out)."""
    script = ('for i in $(seq "$2"); do printf \'GET / HTTP/1.0\\r\\n\\r\\n\' | '
              'nc -w 2 "$0" "$1" | tail -n 1; echo "#"; done')
    out = exec_in(layout, client, "sh", "-c", script, address, str(port), str(tries)).stdout
    return [chunk.strip() for chunk in out.split("#")[:-1]]


def octavia_lbs(layout: Layout, name: str) -> list[dict]:
    url = f"{layout.octavia_url}/v2/lbaas/loadbalancers?name={name}"
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback
        return [lb for lb in json.loads(resp.read())["loadbalancers"]
                if lb["provisioning_status"] != "DELETED"]


def test_cluster_ip_reaches_both_backends_and_follows_scale_up_and_down(cluster, namespace):
    ns = namespace()
    client, *_ = run_pods(cluster, [pod("client", ns)] + [
        pod(f"web-{i}", ns, {"app": "web"}, WEB) for i in range(2)], timeout=120)
    apply(cluster, service("web", ns, [{"name": "http", "port": 80, "targetPort": 8080}]))
    address = cluster_ip(cluster, ns, "web")
    assert helpers.wait_until(lambda: served_by(cluster, client, address) != [""], 60,
                              interval=0.5), "the cluster IP never answered"
    # Octavia's OVN load balancer hashes source ports: both backends over repeated connections.
    assert set(served_by(cluster, client, address, tries=20)) == {"web-0", "web-1"}
    run_pods(cluster, [pod("web-2", ns, {"app": "web"}, WEB)])
    assert helpers.wait_until(
        lambda: "web-2" in served_by(cluster, client, address, tries=6), 60, interval=0.5)
    kubectl(cluster, "delete", "pod", "-n", ns, "web-0", "web-1", "web-2", "--wait=true")
    # No backend: refused or timed out, within nc's 2 s, not a hang.
    assert helpers.wait_until(
        lambda: served_by(cluster, client, address, tries=2) == ["", ""], 60, interval=0.5)
    run_pods(cluster, [pod("web-3", ns, {"app": "web"}, WEB)])
    assert helpers.wait_until(
        lambda: served_by(cluster, client, address) == ["web-3"], 60, interval=0.5)
    assert len(octavia_lbs(cluster, f"kuryr/{ns}/web")) == 1


def test_a_udp_service_answers(cluster, namespace):
    ns = namespace()
    client, _ = run_pods(cluster, [
        pod("client", ns, host_python=True),
        pod("echo", ns, {"app": "echo"}, ["/usr/bin/python3", "-c", UDP_ECHO],
            host_python=True)])
    apply(cluster, service("echo", ns, [{"name": "dns", "protocol": "UDP", "port": 53,
                                        "targetPort": 5353}], selector={"app": "echo"}))
    address = cluster_ip(cluster, ns, "echo")
    ask = ("import socket, sys\n"
           "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
           "s.settimeout(2)\n"
           "s.sendto(b'ping', (sys.argv[1], 53))\n"
           "print(s.recvfrom(2048)[0].decode())\n")

    def answer() -> str:
        return exec_in(cluster, client, "/usr/bin/python3", "-c", ask, address).stdout.strip()

    assert helpers.wait_until(lambda: answer() == "echo ping", 60, interval=0.5)


def test_pods_reach_the_api_server_through_its_service(cluster, namespace):
    """default/kubernetes: its endpoint is the node's own address on the pod network."""
    ns = namespace()
    (client,) = run_pods(cluster, [pod("client", ns)])
    request = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 \"$0\" 443"
    # Plain HTTP to a TLS server: Go's answer proves the API server took the connection.
    assert helpers.wait_until(lambda: "HTTP request to an HTTPS server" in exec_in(
        cluster, client, "sh", "-c", request, API_SERVICE_IP).stdout, 60, interval=1)


def outside_get(address: str, port: int = 80) -> str:
    """GET from the stack's outside namespace (the external network's far end)."""
    script = ("import socket, sys\n"
              "s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)\n"
              "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n"
              "data = b''\n"
              "while chunk := s.recv(4096):\n"
              "    data += chunk\n"
              "print(data.split(b'\\r\\n\\r\\n', 1)[-1].decode().strip())\n")
    return subprocess.run(["ip", "netns", "exec", OUTSIDE_NETNS, "python3", "-c", script,
                           address, str(port)], capture_output=True, text=True, timeout=30,
                          check=False).stdout.strip()


def test_a_load_balancer_service_answers_from_outside_and_its_floating_ip_goes_with_it(
        cluster, namespace, neutron):
    ns = namespace()
    run_pods(cluster, [pod(f"web-{i}", ns, {"app": "web"}, WEB) for i in range(2)])
    # The backends' security groups admit the outside (the project's default group
    # admits only its members): a NetworkPolicy says so, as it would on any cluster.
    apply(cluster, {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                    "metadata": {"name": "web-from-outside", "namespace": ns},
                    "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                             "policyTypes": ["Ingress"],
                             "ingress": [{"from": [{"ipBlock": {"cidr": "198.51.100.0/24"}}],
                                          "ports": [{"protocol": "TCP", "port": 8080}]}]}},
          service("web", ns, [{"name": "http", "port": 80, "targetPort": 8080}],
                  kind="LoadBalancer"))

    def external_ip() -> str:
        ingress = (get_service(cluster, ns, "web").get("status", {})
                   .get("loadBalancer", {}).get("ingress") or [{}])
        return ingress[0].get("ip", "")

    assert helpers.wait_until(lambda: external_ip() != "", 60, interval=0.5)
    fip = external_ip()
    assert helpers.wait_until(lambda: outside_get(fip) in ("web-0", "web-1"), 60, interval=1)
    assert {outside_get(fip) for _ in range(12)} == {"web-0", "web-1"}
    uid = get_service(cluster, ns, "web")["metadata"]["uid"]
    kubectl(cluster, "delete", "service", "-n", ns, "web", "--wait=true", timeout=120)
    assert not octavia_lbs(cluster, f"kuryr/{ns}/web")
    assert not [f for f in neutron.api.ips() if f.description.endswith(uid)]


def test_a_service_deleted_at_once_leaves_no_load_balancer_or_vip_port(cluster, namespace,
                                                                        neutron):
    """Deleted while its load balancer is still PENDING_CREATE: the finalizer holds
    the Service until the load balancer could be deleted."""
    ns = namespace()
    apply(cluster, service("brief", ns, [{"name": "http", "port": 80}]))
    doc = get_service(cluster, ns, "brief")
    address = doc["spec"]["clusterIP"]
    assert helpers.wait_until(lambda: FINALIZER in get_service(cluster, ns, "brief")
                              ["metadata"].get("finalizers", []), 30, interval=0.2)
    kubectl(cluster, "delete", "service", "-n", ns, "brief", "--wait=true", timeout=120)
    assert not octavia_lbs(cluster, f"kuryr/{ns}/brief")
    assert helpers.wait_until(lambda: not [
        p for p in neutron.ports() if any(f.ip_address == address for f in p.fixed_ips)],
        30, interval=0.5), f"the VIP port of {address} is left"


def test_endpoints_changed_while_the_controller_is_down_are_served_after_its_restart(
        cluster, namespace):
    ns = namespace()
    client, _ = run_pods(cluster, [pod("client", ns), pod("web-0", ns, {"app": "web"}, WEB)])
    apply(cluster, service("web", ns, [{"name": "http", "port": 80, "targetPort": 8080}]))
    address = cluster_ip(cluster, ns, "web")
    assert helpers.wait_until(lambda: served_by(cluster, client, address) == ["web-0"], 60,
                              interval=0.5)
    pidfile = cluster.pidfile("kuryr-k8s-controller")
    assert procs.stop(pidfile, "k8s-controller", timeout=30)  # SIGTERM, by its PID
    try:
        run_pods(cluster, [pod("web-1", ns, {"app": "web"}, WEB)])
        kubectl(cluster, "delete", "pod", "-n", ns, "web-0", "--wait=true")
    finally:
        up = subprocess.run([helpers.aio_command(), "up", "--k8s"], check=False)
        assert up.returncode == 0
    started = time.monotonic()
    assert helpers.wait_until(lambda: served_by(cluster, client, address, tries=3)
                              == ["web-1"] * 3, 60, interval=0.5)
    print(f"served by the new backend {time.monotonic() - started:.1f} s after the restart")
    assert len(octavia_lbs(cluster, f"kuryr/{ns}/web")) == 1
