"""Kuryr for Kubernetes from its image: kuryr/k8s/manifests/kuryr.yaml run on
the cluster of `kuryr-aio up --k8s`, the node daemon and the controller started
by kubelet from kuryr/kuryr-k8s (built here by tools/build-image's module,
nothing pulled) instead of from the checkout.

The stack's own daemon and controller are stopped (by their pidfiles) for the
test and started again (`kuryr-aio up`) at the end, whatever happened; the
manifests' objects, the test's pods and what install-cni wrote are removed.
"""

from __future__ import annotations

import configparser
import io
import ipaddress
import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from lightkube import Client, KubeConfig

from kuryr.aio import image, kubernetes
from kuryr.aio.kubernetes import Containerd, KuryrCniDaemon, KuryrController
from kuryr.aio.layout import POD_CIDR, Layout
from kuryr.aio.procs import StackError
from kuryr.k8s import api as k8s_api
from kuryr.neutron import marks

from . import helpers
from .test_zzz_k8s import exec_in, get_pod, http_get, kubectl

pytestmark = pytest.mark.k8s
MANIFEST = Path(kubernetes.__file__).parent.parent / "k8s" / "manifests" / "kuryr.yaml"
NAMESPACE = "kube-system"
# The manifest's paths on the node (kept as they are: a real cluster's).
RUN_DIR = Path("/run/kuryr")
SOCKET = RUN_DIR / "cni.sock"
HTTPD = ["sh", "-c", "echo ok > /var/www/index.html && exec httpd -f -p 8080 -h /var/www"]


class Clock:
    """Seconds per step, printed as they end (pytest -s shows them)."""

    def __init__(self) -> None:
        self.start = self.last = time.monotonic()
        self.steps: list[tuple[str, float]] = []

    def lap(self, step: str) -> None:
        now = time.monotonic()
        self.steps.append((step, now - self.last))
        print(f"[manifests] {step}: {now - self.last:.1f} s "
              f"(total {now - self.start:.1f} s)", flush=True)
        self.last = now


def aio_kuryr_conf(layout: Layout) -> str:
    """The stack's kuryr.conf (noauth Neutron on 127.0.0.1, its pod network),
    for Kuryr in pods: the service account instead of the stack's kubeconfig
    file, the manifest's socket, and no Docker plugin (`kuryr status` in the
    pod checks Neutron, OVS, the daemon and the controller)."""
    conf = configparser.RawConfigParser()
    conf.optionxform = str  # type: ignore[assignment,method-assign]
    conf.read(layout.kuryr_conf)
    for option in ("docker_uri", "state_dir", "docker_netns_dir"):
        conf.remove_option("DEFAULT", option)
    conf.set("DEFAULT", "kuryr_uri", "")
    conf.set("kubernetes", "kubeconfig", "")
    conf.set("kubernetes", "daemon_socket", str(SOCKET))
    out = io.StringIO()
    conf.write(out)
    return out.getvalue()


def adapted_manifest(layout: Layout, built: image.Image) -> list[dict]:
    """kuryr.yaml as operators get it, adapted here (never in the file) to the
    all-in-one cluster."""
    docs = [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]
    containerd = Containerd(layout)
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind == "ConfigMap" and name == "kuryr-config":
            doc["data"]["kuryr.conf"] = aio_kuryr_conf(layout)
        if kind == "ConfigMap" and name == "kuryr-api-server":
            # The stack's API server listens on all the host's addresses and its
            # certificate names 127.0.0.1: hostNetwork pods reach it on loopback.
            # (The Service address kubelet would give, 10.96.0.1, has no route
            # on this host but the default one: it must never be used here.)
            doc["data"] = {"KUBERNETES_SERVICE_HOST": "127.0.0.1",
                           "KUBERNETES_SERVICE_PORT": str(kubernetes.API_PORT)}
        spec = doc.get("spec", {}).get("template", {}).get("spec")
        if spec is None:
            continue
        for container in spec.get("initContainers", []) + spec["containers"]:
            # This build, from containerd (tools/build-image --containerd):
            # nothing may be pulled.
            container["image"] = built.tags[0]
            container["imagePullPolicy"] = "Never"
        for volume in spec.get("volumes", []):
            # The stack's containerd reads its CNI plugins and network
            # configuration from its own directories, not /opt/cni/bin and
            # /etc/cni/net.d (containerd.toml).
            if volume["name"] == "cni-bin":
                volume["hostPath"]["path"] = str(containerd.cni_bin)
            if volume["name"] == "cni-conf":
                volume["hostPath"]["path"] = str(containerd.cni_conf)
    return docs


def as_list(docs: list[dict]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})


def pods_of(layout: Layout, app: str) -> list[dict]:
    out = kubectl(layout, "get", "pods", "-n", NAMESPACE, "-l", f"app={app}", "-o", "json")
    return json.loads(out)["items"]


def busybox_pod(name: str, namespace: str, command: list[str], probe: bool) -> dict:
    container: dict = {"name": "main", "image": "busybox:latest", "imagePullPolicy": "Never",
                       "command": command}
    if probe:
        # kubelet probes from the host's namespace: through the node's own port.
        container["readinessProbe"] = {"httpGet": {"path": "/", "port": 8080},
                                       "periodSeconds": 1, "failureThreshold": 30}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"containers": [container], "terminationGracePeriodSeconds": 0,
                     "automountServiceAccountToken": False}}


class Swap:
    """The stack's daemon and controller out, the manifests' in; everything back."""

    def __init__(self, layout: Layout, docs: list[dict], clock: Clock) -> None:
        self.layout = layout
        self.docs = docs
        self.clock = clock
        containerd = Containerd(layout)
        # What install-cni overwrites in the stack's CNI directories.
        self.cni_files = {path: (path.read_bytes(), path.stat().st_mode & 0o777)
                          for path in (containerd.cni_bin / "kuryr-cni",
                                       containerd.cni_conf / "10-kuryr.conflist")}
        self.run_dir_existed = RUN_DIR.exists()

    def stop_stack_kuryr(self) -> None:
        for process in (KuryrController(self.layout), KuryrCniDaemon(self.layout)):
            process.down()  # SIGTERM to the PID in its pidfile (checked to be it)
            assert not process.pidfile.exists(), process.name

    def apply(self) -> None:
        account = [d for d in self.docs if d["kind"] == "ServiceAccount"]
        kubectl(self.layout, "apply", "-f", "-", input_text=as_list(account))
        # Pods of a service account are admitted once its token exists (the
        # controller-manager makes it): waiting here spares the DaemonSet's backoff.
        helpers.wait_until(lambda: kubectl(
            self.layout, "get", "serviceaccount", "-n", NAMESPACE, "kuryr",
            "-o", "jsonpath={.secrets[*].name}").strip(), 30, interval=0.2)
        kubectl(self.layout, "apply", "-f", "-", input_text=as_list(self.docs))

    def diagnose(self) -> None:
        """What went wrong with the manifests' pods, printed (the test's output)."""
        for args in (("get", "events", "-n", NAMESPACE, "--sort-by=.lastTimestamp"),
                     ("describe", "pods", "-n", NAMESPACE, "-l",
                      "app in (kuryr-cni,kuryr-controller)"),
                     ("logs", "-n", NAMESPACE, "-l", "app=kuryr-cni", "--all-containers",
                      "--tail=60"),
                     ("logs", "-n", NAMESPACE, "-l", "app=kuryr-controller", "--tail=60")):
            print(f"$ kubectl {' '.join(args)}", flush=True)
            print(kubernetes.kubectl(self.layout, *args, check=False), flush=True)

    def delete_manifests(self) -> None:
        self.remove_leftovers()
        self.clock.lap("teardown: manifests' objects and pods deleted")

    def remove_leftovers(self) -> None:
        """The manifests' objects deleted, their pods gone (none: at once)."""
        kubectl(self.layout, "delete", "--ignore-not-found", "--wait=true", "-f", "-",
                input_text=as_list(self.docs), timeout=180)
        # The DaemonSet's and Deployment's pods go after their owners: the
        # stack's daemon must not start beside a daemon still stopping.
        gone = helpers.wait_until(lambda: not (pods_of(self.layout, "kuryr-cni")
                                               + pods_of(self.layout, "kuryr-controller")),
                                  120, interval=1)
        assert gone, "the manifests' pods did not go away"

    def restore_files(self) -> None:
        for path, (data, mode) in self.cni_files.items():
            tmp = path.with_name(f".{path.name}.restore")  # not a name containerd reads
            tmp.write_bytes(data)
            tmp.chmod(mode)
            tmp.replace(path)
        SOCKET.unlink(missing_ok=True)
        if not self.run_dir_existed and RUN_DIR.is_dir():
            RUN_DIR.rmdir()

    def restore_stack_kuryr(self) -> None:
        up = subprocess.run([helpers.aio_command(), "up"], capture_output=True, text=True,
                            timeout=600, check=False)
        assert up.returncode == 0, up.stdout + up.stderr
        status = subprocess.run([helpers.aio_command(), "status"], capture_output=True,
                                text=True, timeout=120, check=False)
        assert status.returncode == 0, status.stdout + status.stderr
        self.clock.lap("teardown: the stack's daemon and controller back, status OK")


def test_the_manifests_run_kuryr_from_its_image(cluster, neutron, cleanup, unique):
    clock = Clock()
    built, done = image.build(cluster, docker_host=cluster.docker_host, containerd=True)
    for line in done or [f"{built.tags[0]} already built ({built.build_id})"]:
        print(f"[manifests] build-image: {line}", flush=True)
    clock.lap("image built and in containerd")

    swap = Swap(cluster, adapted_manifest(cluster, built), clock)
    cleanup(swap.restore_stack_kuryr)  # callbacks run in reverse: this one last
    cleanup(swap.restore_files)
    cleanup(swap.delete_manifests)
    swap.remove_leftovers()  # of an interrupted run
    swap.stop_stack_kuryr()
    swap.apply()
    # Never the Service address from the host's namespace (it would leave the machine).
    [api_server] = [d for d in swap.docs if d["metadata"]["name"] == "kuryr-api-server"]
    assert api_server["data"]["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
    try:
        for what in ("daemonset/kuryr-cni", "deployment/kuryr-controller"):
            kubectl(cluster, "rollout", "status", "-n", NAMESPACE, what, "--timeout=120s",
                    timeout=150)
    except StackError:
        swap.diagnose()
        raise
    clock.lap("stack's Kuryr stopped, manifests applied, pods Ready")

    [daemon_pod] = pods_of(cluster, "kuryr-cni")
    [controller_pod] = pods_of(cluster, "kuryr-controller")
    for pod in (daemon_pod, controller_pod):
        assert pod["spec"]["nodeName"] == cluster.host
        [status] = pod["status"]["containerStatuses"]
        assert status["image"].endswith(built.tags[0]), status["image"]
    # The runtime's conflist is install-cni's: it names the pod's socket, on the node.
    conflist = json.loads((Containerd(cluster).cni_conf / "10-kuryr.conflist").read_text())
    assert conflist["plugins"][0]["daemon_socket"] == str(SOCKET)
    assert SOCKET.is_socket()
    plugin = (Containerd(cluster).cni_bin / "kuryr-cni").read_bytes()
    assert plugin.startswith(b"#!/usr/bin/python3 -IS\n")  # the node's Python runs it
    # The controller in its pod leads: the Lease names the pod.
    kube = k8s_api.KubeApi(Client(KubeConfig.from_file(str(kubernetes.kubeconfig(cluster)))))
    assert helpers.wait_until(
        lambda: _lease_holder(kube) == controller_pod["metadata"]["name"], 60, interval=1), \
        _lease_holder(kube)
    # `kuryr status` in the daemon's pod: Neutron, OVS, the daemon, the controller.
    checks = exec_in(cluster, daemon_pod, "kuryr", "status", "--config-file",
                     "/etc/kuryr/kuryr.conf")
    assert checks.returncode == 0, checks.stdout + checks.stderr
    for name in ("neutron", "ovs", "cni-daemon", "k8s-controller"):
        assert f"OK    {name}:" in checks.stdout, checks.stdout
    clock.lap("image's daemon and controller checked")

    ns = f"kt-{unique}-manifests"
    kubectl(cluster, "create", "namespace", ns)

    def delete_namespace() -> None:
        kubectl(cluster, "delete", "namespace", ns, "--wait=true", "--ignore-not-found",
                timeout=180)
        clock.lap("teardown: test namespace deleted")
    cleanup(delete_namespace)
    docs = [busybox_pod("web", ns, HTTPD, probe=True),
            busybox_pod("client", ns, ["sleep", "3600"], probe=False)]
    kubectl(cluster, "apply", "-f", "-", input_text=as_list(docs))
    for doc in docs:
        kubectl(cluster, "wait", "-n", ns, "--for=condition=Ready",
                f"pod/{doc['metadata']['name']}", "--timeout=90s", timeout=120)
    web, client = get_pod(cluster, ns, "web"), get_pod(cluster, ns, "client")
    clock.lap("busybox pods Ready (the web pod's probe came from the host)")

    uids = {pod["metadata"]["uid"]: pod["status"]["podIP"] for pod in (web, client)}
    ports = helpers.wait_until(lambda: (found := _pod_ports(neutron, uids))
                               and len(found) == len(uids) and found, 30, interval=0.5)
    assert ports, f"the pods' ports were not recorded: {_pod_ports(neutron, uids)}"
    for uid, address in uids.items():
        assert ipaddress.ip_address(address) in ipaddress.ip_network(POD_CIDR)
        port = ports[uid]
        assert port.binding_host_id == cluster.host
        assert [f.ip_address for f in port.fixed_ips] == [address]
        assert port.status == "ACTIVE"
    answer = http_get(cluster, client, web["status"]["podIP"])
    assert answer.splitlines()[-1:] == ["ok"], answer
    assert exec_in(cluster, client, "ping", "-c", "1", "-W", "2",
                   web["status"]["podIP"]).returncode == 0
    clock.lap("Neutron ports bound here and ACTIVE, web reached from client")

    kubectl(cluster, "delete", "pod", "-n", ns, "web", "client", "--wait=true", timeout=120)
    assert helpers.wait_until(lambda: not _pod_ports(neutron, uids), 60, interval=0.5), \
        f"ports left: {_pod_ports(neutron, uids)}"
    clock.lap("pods deleted, their ports released")
    print(f"[manifests] test body {time.monotonic() - clock.start:.1f} s; "
          "teardown restores the stack's Kuryr", flush=True)


def _pod_ports(neutron, uids: dict[str, str]) -> dict:
    return {port.device_id: port
            for port in neutron.ports(device_owner=marks.K8S_DEVICE_OWNER)
            if port.device_id in uids}


def _lease_holder(kube: k8s_api.KubeApi) -> str | None:
    age = kube.lease_age()
    return age[0] if age else None
