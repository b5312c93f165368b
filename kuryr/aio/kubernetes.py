"""The all-in-one stack's Kubernetes 1.20 cluster (`kuryr-aio up --k8s`).

etcd (Debian), kube-apiserver, kube-controller-manager, kube-scheduler and
kubelet (built once by `build-k8s`), a containerd of the stack's own (its own
socket, root and state; dockerd keeps its own) with images made locally, and
Kuryr's CNI as the only pod network.  No kube-proxy: pods are on Neutron
ports, their packets never cross the host's netfilter.

Everything listens on loopback only (etcd, the API server, the kubelet's and
the control plane's health ports).  Every process is started and stopped by
PID like the rest of the stack.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.request
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING

from kuryr import config as kuryr_config
from kuryr.aio import kubernetes_build, packages, procs
from kuryr.aio.docker import Docker, busybox_rootfs
from kuryr.aio.k8s_pki import Pki
from kuryr.aio.keystone import service_project_file
from kuryr.aio.layout import (
    POD_CIDR,
    POD_NETWORK,
    PUBLIC_NETWORK,
    SERVICE_NETWORK,
    Layout,
)
from kuryr.aio.outside import stack_neutron
from kuryr.aio.plugin import KuryrPlugin
from kuryr.binding.ovs import OVS
from kuryr.cni import install as cni_install
from kuryr.k8s.host_reach import HostReach
from kuryr.localhttp import UnixHTTPConnection
from kuryr.neutron.client import connect

if TYPE_CHECKING:
    from openstack.network.v2._proxy import Proxy as NetworkProxy

API_PORT = 6443
ETCD_CLIENT = "http://127.0.0.1:2379"
ETCD_PEER = "http://127.0.0.1:2380"
# The Services' range (issue 14 gives them Octavia load balancers); the API
# server's own Service takes its first address.
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
# Neutron's subnet of the Services' VIPs holds the API server's range (its lower
# half) and keeps its own allocations (the router's interface, any port Octavia
# makes without an address) in the upper half, which the API server never hands out.
SERVICE_SUBNET_CIDR = "10.96.0.0/15"
SERVICE_SUBNET_GATEWAY = "10.97.255.254"
SERVICE_SUBNET_POOL = {"start": "10.97.0.2", "end": "10.97.255.253"}
# Joins the pods' and the Services' subnets (an OVN load balancer is reached
# through a router on its members' and clients' subnets), with its gateway on
# the external network for the floating IPs of Services of type LoadBalancer.
ROUTER = "kuryr-aio-router"
PAUSE_IMAGE = "docker.io/kuryr-aio/pause:1"
PAUSE_BUILD = "kuryr-aio/pause-build:1"  # dockerd's name while it is made
BUSYBOX_BUILD = "kuryr-aio/busybox-build:1"
IMAGE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
BUSYBOX_IMAGE = "docker.io/library/busybox:latest"
K8S_PACKAGES = {"etcd": "etcd-server", "/usr/lib/cni/loopback": "containernetworking-plugins"}
CONTAINERD_NS = "k8s.io"
RBAC_MANIFEST = Path(__file__).parent.parent / "k8s" / "manifests" / "rbac.yaml"


def kubeconfig(layout: Layout) -> Path:
    """The cluster admin's kubeconfig (`kuryr-aio env` exports it as KUBECONFIG)."""
    return pki_of(layout).kubeconfig("admin")


def pki_of(layout: Layout) -> Pki:
    return Pki(layout.k8s_dir / "pki", layout.host, SERVICE_IP)


def api_url() -> str:
    return f"https://127.0.0.1:{API_PORT}"


def kubectl_path(layout: Layout) -> Path:
    return layout.kubectl_dir / "usr" / "bin" / "kubectl"


def kubectl(layout: Layout, *args: str, timeout: float = 60, check: bool = True,
            input_text: str | None = None) -> str:
    return procs.run([str(kubectl_path(layout)), f"--kubeconfig={kubeconfig(layout)}",
                      *args], timeout=timeout, check=check, input_text=input_text)


def _api_get(layout: Layout, path: str, timeout: float = 5) -> dict:
    pki = pki_of(layout)
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    ctx.load_cert_chain(str(pki.cert("admin")), str(pki.key("admin")))
    with urllib.request.urlopen(api_url() + path, context=ctx,  # noqa: S310 - https only
                                timeout=timeout) as resp:
        body = resp.read()
    return json.loads(body) if body.startswith(b"{") else {"text": body.decode()}


class KubeTools:
    """The software: Debian's etcd and CNI plugins, Debian's kubectl (unpacked
    into the cache: another package may own /usr/bin/kubectl), and the
    control plane and kubelet built from Debian's source (`build-k8s`)."""

    name = "kubernetes-software"

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    @property
    def logs(self) -> list[Path]:
        return [self.layout.log("apt"), self.layout.kubernetes_dir / "build.log"]

    def problems(self) -> list[str]:
        found = []
        missing = packages.missing_packages(K8S_PACKAGES)
        if missing:
            found.append(f"Debian packages not installed: {' '.join(missing)}")
        if not kubectl_path(self.layout).exists():
            found.append(f"Debian's kubectl is not unpacked in {self.layout.kubectl_dir}")
        if not kubernetes_build.is_built(self.layout.kubernetes_bin):
            found.append("Kubernetes is not built (kuryr-aio build-k8s)")
        return found

    def up(self) -> None:
        packages.install(packages.missing_packages(K8S_PACKAGES), log=self.layout.log("apt"))
        if not kubectl_path(self.layout).exists():
            self._unpack_kubectl()
        kubernetes_build.build(self.layout)

    def _unpack_kubectl(self) -> None:
        where = self.layout.kubectl_dir
        shutil.rmtree(where, ignore_errors=True)
        where.mkdir(parents=True)
        procs.run(["apt-get", "download", "kubernetes-client"],
                  cwd=where, log=self.layout.log("apt"), timeout=600)
        debs = sorted(where.glob("kubernetes-client_*.deb"))
        if not debs:
            raise procs.StackError(f"apt-get download left no kubernetes-client in {where}")
        procs.run(["dpkg-deb", "-x", str(debs[0]), str(where)], timeout=120)
        debs[0].unlink()

    def down(self) -> None:
        """Software stays (and the build cache is outside what --purge wipes)."""


class _Daemon:
    """A foreground daemon of the cluster, by PID; subclasses say how to start and probe it."""

    name = ""
    expect = ""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.pidfile = layout.pidfile(self.name)

    @property
    def logs(self) -> list[Path]:
        return [self.layout.log(self.name)]

    def argv(self) -> list[str]:
        raise NotImplementedError

    def answers(self) -> bool:
        raise NotImplementedError

    def prepare(self) -> None:
        """Files the daemon needs before it starts."""

    def problems(self) -> list[str]:
        if not procs.pid_alive(self.pidfile, self.expect):
            return [f"{self.name} is not running"]
        try:
            ok = self.answers()
        except Exception as exc:  # noqa: BLE001 - any failure is the answer
            return [f"{self.name} does not answer: {exc}"]
        return [] if ok else [f"{self.name} is not ready"]

    def up(self) -> None:
        self.prepare()
        if not procs.pid_alive(self.pidfile, self.expect):
            procs.spawn(self.argv(), pidfile=self.pidfile, log=self.layout.log(self.name))
        probe = procs.answers_or_died(self.pidfile, self._answers)
        if not procs.wait_for(probe, 120) or not procs.running(self.pidfile):
            raise procs.StackError(f"{self.name} did not come up "
                                   f"(log: {self.layout.log(self.name)})")

    def _answers(self) -> bool:
        try:
            return self.answers()
        except Exception:  # noqa: BLE001 - not yet
            return False

    def down(self) -> None:
        procs.stop(self.pidfile, self.expect, timeout=30)


def _cmdline(pidfile: Path) -> str:
    try:
        pid = int(pidfile.read_text().strip())
        # Arguments each followed by a space, so a match names a whole argument.
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, ValueError):
        return ""


def node_address(layout: Layout) -> str:
    """The node's own address on the pod network: the port through which kubelet's
    probes reach pods, made here with the CNI daemon's code and credentials (the
    daemon finds it again at its start), before the API server that advertises it."""
    conf = kuryr_config.load(KuryrPlugin(layout).config_args)
    neutron = connect(conf)
    ovs = OVS(conf.binding.ovsdb_connection)
    try:
        net = neutron.find_network(POD_NETWORK)
        subnet = neutron.subnets(network_id=net.id)[0]
        host = conf.host or socket.gethostname()
        port = HostReach(neutron, ovs, conf.kubernetes.node_name or host, host,
                         conf.binding.ovs_bridge).ensure(net.id, subnet, net.mtu)
    finally:
        ovs.close()
        neutron.close()
    return next(f.ip_address for f in port.fixed_ips if f.subnet_id == subnet.id)


class Etcd(_Daemon):
    name = "etcd"
    expect = "etcd"

    def argv(self) -> list[str]:
        return ["etcd", "--name", "kuryr-aio",
                f"--data-dir={self.layout.k8s_dir / 'etcd'}",
                f"--listen-client-urls={ETCD_CLIENT}", f"--advertise-client-urls={ETCD_CLIENT}",
                f"--listen-peer-urls={ETCD_PEER}", f"--initial-advertise-peer-urls={ETCD_PEER}",
                f"--initial-cluster=kuryr-aio={ETCD_PEER}",
                "--listen-metrics-urls=http://127.0.0.1:2381"]

    def prepare(self) -> None:
        self.layout.k8s_dir.mkdir(parents=True, exist_ok=True)
        self.layout.k8s_dir.chmod(0o700)

    def answers(self) -> bool:
        with urllib.request.urlopen(ETCD_CLIENT + "/health", timeout=3) as resp:  # noqa: S310
            return json.loads(resp.read()).get("health") == "true"


class KubeApiserver(_Daemon):
    name = "kube-apiserver"
    expect = "kube-apiserver"

    advertised = ""  # the node's address on the pod network (prepare)

    def prepare(self) -> None:
        pki_of(self.layout).make(api_url())
        if not self.advertised:
            self.advertised = node_address(self.layout)

    def _advertises_recorded_address(self) -> bool:
        """What `up` found last is what the running server advertises (no
        Neutron request: `status` stays cheap)."""
        try:
            recorded = self.advertised_file.read_text().strip()
        except FileNotFoundError:
            return False
        return f"--advertise-address={recorded} " in _cmdline(self.pidfile)

    def argv(self) -> list[str]:
        pki = pki_of(self.layout)
        return [
            str(self.layout.kubernetes_bin / "kube-apiserver"),
            # Pods reach the API server through its Service, default/kubernetes,
            # whose endpoint is the advertised address: the node's own address on
            # the pod network (Kuryr makes the Service an OVN load balancer with
            # it as member).  It takes one bind address, and the host's clients
            # use loopback (which stays up when ovs-vswitchd restarts): so it
            # listens on all the host's addresses, as kube-apiserver does by
            # default, and answers nothing without a client certificate or token.
            "--bind-address=0.0.0.0", f"--secure-port={API_PORT}", "--insecure-port=0",
            f"--advertise-address={self.advertised}", "--anonymous-auth=false",
            f"--etcd-servers={ETCD_CLIENT}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            f"--client-ca-file={pki.ca_cert}",
            f"--tls-cert-file={pki.serving_cert}", f"--tls-private-key-file={pki.serving_key}",
            f"--kubelet-client-certificate={pki.cert('apiserver-kubelet-client')}",
            f"--kubelet-client-key={pki.key('apiserver-kubelet-client')}",
            f"--kubelet-certificate-authority={pki.ca_cert}",
            "--kubelet-preferred-address-types=Hostname,InternalIP",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--allow-privileged=true",
            "--enable-admission-plugins=NodeRestriction",
            "--profiling=false",
        ]

    def answers(self) -> bool:
        return _api_get(self.layout, "/readyz").get("text", "").strip() == "ok"

    @property
    def advertised_file(self) -> Path:
        return self.layout.k8s_dir / "kube-apiserver.advertised"

    def problems(self) -> list[str]:
        found = super().problems()
        if not found and not self._advertises_recorded_address():
            found.append("kube-apiserver does not advertise the node's address on the pod "
                         "network (`kuryr-aio up` restarts it)")
        stamp = self.layout.k8s_rbac_stamp
        if not found and (not stamp.exists() or stamp.read_text() != RBAC_MANIFEST.read_text()):
            found.append("Kuryr's RBAC is not applied (or changed since)")
        return found

    def up(self) -> None:
        self.prepare()
        if procs.pid_alive(self.pidfile, self.expect) and \
                f"--advertise-address={self.advertised} " not in _cmdline(self.pidfile):
            self.down()  # started before it advertised this address (or another)
        self.advertised_file.write_text(self.advertised)
        super().up()
        # Kuryr's role: what it may read and write (the same file as for a real cluster).
        kubectl(self.layout, "apply", "-f", str(RBAC_MANIFEST))
        self.layout.k8s_rbac_stamp.write_text(RBAC_MANIFEST.read_text())


class KubeControllerManager(_Daemon):
    name = "kube-controller-manager"
    expect = "kube-controller-manager"

    def argv(self) -> list[str]:
        pki = pki_of(self.layout)
        config = pki.kubeconfig("controller-manager")
        return [
            str(self.layout.kubernetes_bin / "kube-controller-manager"),
            f"--kubeconfig={config}", f"--authentication-kubeconfig={config}",
            f"--authorization-kubeconfig={config}",
            "--bind-address=127.0.0.1", "--port=0",
            f"--service-account-private-key-file={pki.sa_key}",
            f"--root-ca-file={pki.ca_cert}", "--use-service-account-credentials=true",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--cluster-signing-cert-file={pki.ca_cert}",
            # The CA's key signs nothing for kubelets here (their certificates
            # are made by kuryr-aio), but the flag pair must be complete.
            f"--cluster-signing-key-file={pki.ca_key}",
            "--leader-elect=false", "--profiling=false",
        ]

    def answers(self) -> bool:
        return _health(10257)


class KubeScheduler(_Daemon):
    name = "kube-scheduler"
    expect = "kube-scheduler"

    def argv(self) -> list[str]:
        config = pki_of(self.layout).kubeconfig("scheduler")
        return [str(self.layout.kubernetes_bin / "kube-scheduler"),
                f"--kubeconfig={config}", f"--authentication-kubeconfig={config}",
                f"--authorization-kubeconfig={config}",
                "--bind-address=127.0.0.1", "--port=0", "--leader-elect=false",
                "--profiling=false"]

    def answers(self) -> bool:
        return _health(10259)


def _health(port: int) -> bool:
    # Self-signed serving certificates; /healthz is open to anonymous callers.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # a loopback health probe: nothing secret either way
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz",
                                context=ctx, timeout=3) as resp:
        return resp.read().strip() == b"ok"


CONTAINERD_CONFIG = """\
# Written by kuryr-aio: the cluster's own containerd (dockerd runs its own).
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri.v1"]

[grpc]
  address = "{socket}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # Pods' OOM scores no lower than containerd's own: lowering one needs
  # CAP_SYS_RESOURCE, which a host that is itself a container may not grant
  # (runc then fails every sandbox: "can't get final child's PID from pipe").
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
"""


class Containerd(_Daemon):
    name = "containerd"
    expect = "containerd"

    @property
    def socket(self) -> Path:
        return self.layout.run / "containerd" / "containerd.sock"

    @property
    def cni_bin(self) -> Path:
        return self.layout.k8s_dir / "cni" / "bin"

    @property
    def cni_conf(self) -> Path:
        return self.layout.k8s_dir / "cni" / "net.d"

    @property
    def config(self) -> Path:
        return self.layout.k8s_dir / "containerd.toml"

    def prepare(self) -> None:
        self.layout.k8s_dir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(CONTAINERD_CONFIG.format(
            root=self.layout.k8s_dir / "containerd", state=self.layout.run / "containerd",
            socket=self.socket, pause=PAUSE_IMAGE, cni_bin=self.cni_bin,
            cni_conf=self.cni_conf))
        self._install_cni()

    def _install_cni(self) -> None:
        """kuryr-cni as the only network, installed as on any node
        (kuryr-cni-install: the self-contained plugin and its conflist), and the
        loopback plugin containerd runs for every pod's `lo`."""
        cni_install.install(self.cni_bin, self.cni_conf, str(self.layout.cni_socket))
        link = self.cni_bin / "loopback"
        target = Path("/usr/lib/cni/loopback")
        if not (link.is_symlink() and link.readlink() == target):
            link.unlink(missing_ok=True)
            link.symlink_to(target)

    def argv(self) -> list[str]:
        return ["containerd", "--config", str(self.config)]

    def ctr(self, *args: str, timeout: float = 120, stdin: bytes | None = None) -> str:
        return procs.run(["ctr", "--address", str(self.socket), "--namespace", CONTAINERD_NS,
                          *args], timeout=timeout)

    def answers(self) -> bool:
        return bool(self.ctr("version", timeout=10))

    def sandboxes(self) -> list[str]:
        """The runtime's live tasks (pod sandboxes and their containers)."""
        return self.ctr("tasks", "list", "--quiet", timeout=30).split()

    def down(self) -> None:
        if procs.pid_alive(self.pidfile, self.expect):
            self._kill_tasks()
        super().down()

    def _kill_tasks(self) -> None:
        """Containers kubelet did not stop: their shims outlive containerd."""
        try:
            tasks = self.sandboxes()
        except procs.StackError:
            return
        for task in tasks:
            procs.run(["ctr", "--address", str(self.socket), "--namespace", CONTAINERD_NS,
                       "tasks", "kill", "--signal", "SIGKILL", task], check=False, timeout=30)
        procs.wait_for(lambda: not self.sandboxes(), 20, interval=0.5)

    def images(self) -> set[str]:
        return set(self.ctr("images", "list", "--quiet", timeout=30).split())

    def problems(self) -> list[str]:
        found = super().problems()
        if found:
            return found
        plugin = self.cni_bin / "kuryr-cni"
        if plugin.is_symlink() or not plugin.is_file() or \
                plugin.read_bytes() != cni_install.plugin_bytes():
            return [f"{plugin} is not this checkout's kuryr-cni"]
        missing = {PAUSE_IMAGE, BUSYBOX_IMAGE} - self.images()
        return [f"containerd lacks images {' '.join(sorted(missing))}"] if missing else []

    def up(self) -> None:
        super().up()
        if {PAUSE_IMAGE, BUSYBOX_IMAGE} - self.images():
            self._import_images()

    def _import_images(self) -> None:
        """busybox (as `image: busybox` names it) and a pause image, made from
        the host's static busybox like the stack's Docker image: nothing is
        pulled.  dockerd builds them (`docker import`), containerd imports them."""
        docker = Docker(self.layout)
        rootfs = self.layout.k8s_dir / "busybox-rootfs.tar"
        archive = self.layout.k8s_dir / "images.tar"
        made = {BUSYBOX_BUILD: ['CMD ["sh"]'],
                # The sandbox's only process: sleeps until the pod is stopped (SIGKILL).
                PAUSE_BUILD: ['CMD ["sleep", "2147483647"]']}
        try:
            rootfs.write_bytes(busybox_rootfs())
            for tag, changes in made.items():
                # containerd, unlike dockerd, gives a process no default PATH.
                argv = ["import", "--change", f"ENV PATH={IMAGE_PATH}"]
                for change in changes:
                    argv += ["--change", change]
                docker.cli(*argv, str(rootfs), tag, timeout=120)
            docker.cli("save", "-o", str(archive), *made, timeout=120)
            self.ctr("images", "import", str(archive))
            self.ctr("images", "tag", "--force", f"docker.io/{BUSYBOX_BUILD}", BUSYBOX_IMAGE)
            self.ctr("images", "tag", "--force", f"docker.io/{PAUSE_BUILD}", PAUSE_IMAGE)
            self.ctr("images", "remove", f"docker.io/{BUSYBOX_BUILD}", f"docker.io/{PAUSE_BUILD}")
        finally:
            rootfs.unlink(missing_ok=True)
            archive.unlink(missing_ok=True)
            docker.cli("rmi", *made, check=False, timeout=60)


KUBELET_CONFIG = {
    "kind": "KubeletConfiguration",
    "apiVersion": "kubelet.config.k8s.io/v1beta1",
    "address": "127.0.0.1",
    "healthzBindAddress": "127.0.0.1",
    "readOnlyPort": 0,
    "cgroupDriver": "cgroupfs",
    "failSwapOn": False,
    "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                       "x509": {"clientCAFile": ""}},
    "authorization": {"mode": "Webhook"},
    "serializeImagePulls": False,
    # kubelet's own API client: 5 requests/s (burst 10) by default, which alone
    # keeps a burst of 50 pods' status updates (Running, podIP) waiting ~10 s
    # on one node (measured with the bridge plugin: p99 39 s).
    "kubeAPIQPS": 50,
    "kubeAPIBurst": 100,
    # No disk-pressure evictions on a shared development machine.
    "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                     "imagefs.available": "1%"},
    "imageGCHighThresholdPercent": 100,
}


def kubelet_address(host: str) -> str:
    """Where kubelet listens: the loopback address the host's name resolves to
    (the API server reaches kubelet by that name for exec and logs: Debian
    names the host 127.0.1.1), else 127.0.0.1.  Never an outside address."""
    try:
        resolved = ipaddress.ip_address(socket.gethostbyname(host))
    except (OSError, ValueError):
        return "127.0.0.1"
    return str(resolved) if resolved.is_loopback else "127.0.0.1"


class Kubelet(_Daemon):
    name = "kubelet"
    expect = "kubelet"

    @property
    def config(self) -> Path:
        return self.layout.k8s_dir / "kubelet.json"

    def prepare(self) -> None:
        conf = json.loads(json.dumps(KUBELET_CONFIG))
        conf["authentication"]["x509"]["clientCAFile"] = str(pki_of(self.layout).ca_cert)
        conf["address"] = kubelet_address(self.layout.host)
        conf["tlsCertFile"] = str(pki_of(self.layout).kubelet_serving_cert)
        conf["tlsPrivateKeyFile"] = str(pki_of(self.layout).kubelet_serving_key)
        self.config.write_text(json.dumps(conf, indent=1) + "\n")

    def argv(self) -> list[str]:
        containerd = Containerd(self.layout)
        return [
            str(self.layout.kubernetes_bin / "kubelet"),
            f"--kubeconfig={pki_of(self.layout).kubeconfig('kubelet')}",
            f"--config={self.config}",
            f"--root-dir={self.layout.k8s_dir / 'kubelet'}",
            f"--hostname-override={self.layout.host}",
            "--container-runtime=remote",
            f"--container-runtime-endpoint=unix://{containerd.socket}",
            "--image-service-endpoint=unix://" + str(containerd.socket),
        ]

    def answers(self) -> bool:
        # Its own health first: the node's Ready condition outlives a restart.
        with urllib.request.urlopen("http://127.0.0.1:10248/healthz",
                                    timeout=3) as resp:
            if resp.read().strip() != b"ok":
                return False
        node = _api_get(self.layout, f"/api/v1/nodes/{self.layout.host}")
        conditions = node.get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def down(self) -> None:
        if procs.pid_alive(self.pidfile, self.expect):
            self._stop_pods()
        super().down()
        self._unmount_pod_volumes()

    def _stop_pods(self) -> None:
        """Delete every pod and wait (bounded) until kubelet has torn their
        sandboxes down through the runtime, so Kuryr's CNI DEL frees their
        ports: `down` leaves no pod running and no port behind."""
        try:
            kubectl(self.layout, "delete", "pods", "--all", "--all-namespaces",
                    "--grace-period=0", "--force", "--wait=false", timeout=60)
        except procs.StackError:
            return  # the API server is gone: nothing to ask
        containerd = Containerd(self.layout)
        procs.wait_for(lambda: not containerd.sandboxes(), 90, interval=1)

    def _unmount_pod_volumes(self) -> None:
        """kubelet leaves its pods' volume mounts (tmpfs secrets) when it stops."""
        root = str(self.layout.k8s_dir / "kubelet") + "/"
        try:
            mounts = Path("/proc/self/mounts").read_text().splitlines()
        except OSError:
            return
        targets = [line.split()[1] for line in mounts if line.split()[1].startswith(root)]
        for target in sorted(targets, key=len, reverse=True):
            subprocess.run(["/bin/umount", target], check=False, capture_output=True, timeout=30)


class PodNetwork:
    """The Neutron network every pod is on (`[kubernetes] pod_network_driver =
    shared`), the Services' network of their VIPs, and the router joining the
    two (its gateway on the external network, no uplink beyond it); the
    node's own probe port joins the host to the pods' network."""

    name = "pod-network"

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    @property
    def logs(self) -> list[Path]:
        return []

    def problems(self) -> list[str]:
        try:
            neutron = stack_neutron(self.layout)
            try:
                for name in (POD_NETWORK, SERVICE_NETWORK):
                    net = neutron.api.find_network(name)
                    if net is None or not list(neutron.api.subnets(network_id=net.id)):
                        return [f"Neutron network {name!r} (or its subnet) is missing"]
                if neutron.api.find_router(ROUTER) is None:
                    return [f"Neutron router {ROUTER!r} is missing"]
            finally:
                neutron.close()
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            return [f"cannot check Neutron network {POD_NETWORK!r}: {exc}"]
        return []

    def up(self) -> None:
        neutron = stack_neutron(self.layout)
        try:
            owner = self._kuryr_project()
            pods = self._ensure_network(neutron.api, POD_NETWORK, owner, cidr=POD_CIDR)
            services = self._ensure_network(
                neutron.api, SERVICE_NETWORK, owner, cidr=SERVICE_SUBNET_CIDR,
                gateway_ip=SERVICE_SUBNET_GATEWAY, allocation_pools=[SERVICE_SUBNET_POOL])
            self._ensure_router(neutron.api, owner, [pods, services])
        finally:
            neutron.close()

    @staticmethod
    def _ensure_network(api: NetworkProxy, name: str, owner: dict[str, str],
                        **subnet: object) -> str:
        """The network ``name`` with its one IPv4 subnet (no DHCP): the subnet's id."""
        net = api.find_network(name) or api.create_network(name=name, **owner)
        found = list(api.subnets(network_id=net.id))
        if found:
            return str(found[0].id)
        made = api.create_subnet(network_id=net.id, name=name, ip_version=4,
                                 is_dhcp_enabled=False, **owner, **subnet)
        return str(made.id)

    @staticmethod
    def _ensure_router(api: NetworkProxy, owner: dict[str, str], subnets: list[str]) -> None:
        router = api.find_router(ROUTER)
        if router is None:
            public = api.find_network(PUBLIC_NETWORK)
            gateway = {"external_gateway_info": {"network_id": public.id}} if public else {}
            router = api.create_router(name=ROUTER, **owner, **gateway)
        attached = {fixed["subnet_id"]
                    for port in api.ports(device_id=router.id,
                                          device_owner="network:router_interface")
                    for fixed in port.fixed_ips}
        for subnet_id in subnets:
            if subnet_id not in attached:
                api.add_interface_to_router(router, subnet=subnet_id)

    def _kuryr_project(self) -> dict[str, str]:
        """In keystone mode the network is Kuryr's project's (Kuryr is no admin)."""
        if not self.layout.keystone_mode:
            return {}
        return {"project_id": service_project_file(self.layout).read_text().strip()}

    def down(self) -> None:
        """The network stays with Neutron's database (`down --purge` wipes both)."""


class _KuryrProcess:
    """A Kuryr command from this checkout on the stack's kuryr.conf, restarted
    by `up` when kuryr.conf changed since it started (an auth mode switch)."""

    name = ""
    command = ""  # `kuryr <command>`
    expect = ""  # in its command line (a recycled PID is never taken for it)

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.pidfile = layout.pidfile(self.name)
        self.started_conf = layout.k8s_dir / f"{self.name}.conf-started"

    @property
    def logs(self) -> list[Path]:
        return [self.layout.log(self.name)]

    def health_problem(self) -> str | None:
        """What is wrong with the running process, None when nothing."""
        return None

    def _conf_text(self) -> str:
        try:
            return self.layout.kuryr_conf.read_text()
        except FileNotFoundError:
            return ""

    def _outdated(self) -> bool:
        started = self.started_conf.read_text() if self.started_conf.exists() else ""
        return started != self._conf_text()

    def problems(self) -> list[str]:
        if not procs.pid_alive(self.pidfile, self.expect):
            return [f"{self.name} (kuryr {self.command}) is not running"]
        problem = self.health_problem()
        if problem:
            return [problem]
        if self._outdated():
            return [f"{self.name} runs with an outdated kuryr.conf (`kuryr-aio up` restarts it)"]
        return []

    def up(self) -> None:
        if self._outdated():
            self.down()
        if not procs.pid_alive(self.pidfile, self.expect):
            self.before_start()
            args = KuryrPlugin(self.layout).config_args
            procs.spawn([sys.executable, "-m", "kuryr.cli", self.command, *args],
                        pidfile=self.pidfile, log=self.layout.log(self.name))
            self.started_conf.write_text(self._conf_text())
        self.wait_started()

    def before_start(self) -> None:
        """What must be cleared before the process starts."""

    def wait_started(self) -> None:
        raise NotImplementedError

    def down(self) -> None:
        procs.stop(self.pidfile, self.expect, timeout=20)


class KuryrCniDaemon(_KuryrProcess):
    """Kuryr's CNI node daemon (`kuryr cni-daemon`), on the same kuryr.conf as
    the Docker plugin (its [kubernetes] section)."""

    name = "kuryr-cni-daemon"
    command = "cni-daemon"
    expect = "cni-daemon"

    def answers(self) -> bool:
        conn = UnixHTTPConnection(str(self.layout.cni_socket), timeout=5)
        try:
            conn.request("POST", "/v1/status", body=b'{"command": "STATUS"}',
                         headers={"Content-Type": "application/json"})
            return conn.getresponse().status == HTTPStatus.OK
        finally:
            conn.close()

    def health_problem(self) -> str | None:
        try:
            if not self.answers():
                return f"the Kuryr CNI daemon is not ready on {self.layout.cni_socket}"
        except OSError as exc:
            return f"the Kuryr CNI daemon does not answer on {self.layout.cni_socket}: {exc}"
        return None

    def before_start(self) -> None:
        # A socket left by a killed daemon would refuse kuryr-cni until replaced.
        self.layout.cni_socket.unlink(missing_ok=True)

    def wait_started(self) -> None:
        probe = procs.answers_or_died(self.pidfile, self.answers)
        if not procs.wait_for(probe, 60) or not procs.running(self.pidfile):
            raise procs.StackError("the Kuryr CNI daemon did not come up "
                                   f"(log: {self.layout.log(self.name)})")


class KuryrController(_KuryrProcess):
    """Kuryr's Kubernetes controller (`kuryr k8s-controller`): NetworkPolicy as
    security groups, nodes' garbage.  It serves nothing: alive is its health
    here (`kuryr status` reads its heartbeat Lease)."""

    name = "kuryr-k8s-controller"
    command = "k8s-controller"
    expect = "k8s-controller"

    def wait_started(self) -> None:
        # It exits at once on a bad config or an unreachable API server or Neutron.
        if procs.wait_for(lambda: not procs.running(self.pidfile), 3):
            raise procs.StackError("the Kuryr controller exited at start "
                                   f"(log: {self.layout.log(self.name)})")
