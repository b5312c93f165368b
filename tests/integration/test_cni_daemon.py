"""`kuryr cni-daemon` end to end on the running all-in-one stack, without
Kubernetes: the real `kuryr-cni` executable, two network namespaces standing in
for pods, the daemon as a subprocess on its own Neutron network.

This module uses none of conftest's stack fixtures (they run `kuryr-aio up`):
it needs the stack already running, and touches only what it makes itself.
"""

from __future__ import annotations

import configparser
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from pyroute2 import netns

from kuryr.binding import netlink
from kuryr.binding.ovs import OVS
from kuryr.binding.vif import VIF
from kuryr.k8s.host_reach import interface_for
from kuryr.neutron import marks
from kuryr.neutron.client import connect_endpoint

AIO_CONF = Path("/var/lib/kuryr-aio/kuryr.conf")
NEUTRON = "http://127.0.0.1:9696"
BIN = Path(sys.executable).parent
CIDR = "10.213.0.0/24"


# No skip when the stack is down: the fixtures bring it up (conftest's `stack`), so
# these tests run in CI (a skip decided at collection, before the stack came up,
# once kept them from ever running there).
pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns, veth, OVS)")]


def wait_until(check, timeout: float, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(step)


@pytest.fixture
def cleanup():
    callbacks = []
    yield callbacks.append
    for callback in reversed(callbacks):
        try:
            callback()
        except Exception as exc:  # noqa: BLE001 - the others still run
            print(f"cleanup failed: {exc}")


@pytest.fixture(scope="module")
def neutron(stack):
    client = connect_endpoint(NEUTRON)
    yield client
    client.close()


@pytest.fixture(scope="module")
def ovs(stack):
    switch = OVS()
    yield switch
    switch.close()


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
def pod_net(neutron, ovs, cleanup, unique):
    net = neutron.api.create_network(name=f"test-cnid-{unique}")

    def delete_network():
        # After the daemon stopped: its ready pooled ports stay plugged (as they
        # would for its next start); this network's are removed here.
        # The node's own port of this network (its probe interface) goes too.
        ovs.unplug(interface_for(net.id))
        for port in neutron.api.ports(network_id=net.id):
            vif = VIF(port.id, port.mac_address)
            ovs.unplug(vif.host_ifname)
            netlink.delete_link(vif.host_ifname)
            neutron.api.delete_port(port.id, ignore_missing=True)
        neutron.api.delete_network(net.id, ignore_missing=True)

    cleanup(delete_network)
    subnet = neutron.api.create_subnet(network_id=net.id, ip_version=4, cidr=CIDR,
                                       gateway_ip="10.213.0.1", is_dhcp_enabled=False,
                                       name=f"test-cnid-{unique}")
    return net, subnet


class CniDaemon:
    """`kuryr cni-daemon` as a subprocess of this test, stopped by its PID."""

    def __init__(self, conf: Path, sock: Path, log: Path) -> None:
        self.conf, self.sock, self.log = conf, sock, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "kuryr"), "cni-daemon", "--config-file", str(self.conf)],
                stdout=log, stderr=subprocess.STDOUT)
        assert wait_until(self._answers, 60), self.log.read_text()[-3000:]

    def _answers(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(str(self.sock))
            return True
        except OSError:
            return False
        finally:
            probe.close()

    def kill(self, sig: int) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, sig)
        self.proc.wait(30)


def start_daemon(tmp_path: Path, cleanup, kubernetes: dict[str, str],
                 sections: dict[str, dict[str, str]]) -> CniDaemon:
    """A daemon of the test's own: the stack's Neutron and OVS settings, the
    test's [kubernetes] (its socket added) and other ``sections``."""
    aio = configparser.ConfigParser(interpolation=None)
    aio.read(AIO_CONF)
    conf = configparser.ConfigParser(interpolation=None)
    for section in ("neutron", "binding"):
        conf[section] = dict(aio[section]) if aio.has_section(section) else {}
    conf.read_dict(sections)
    conf["kubernetes"] = {**kubernetes, "daemon_socket": str(tmp_path / "cni.sock")}
    path = tmp_path / "kuryr.conf"
    with path.open("w") as out:
        conf.write(out)
    running = CniDaemon(path, tmp_path / "cni.sock", tmp_path / "daemon.log")
    cleanup(lambda: running.kill(signal.SIGTERM))
    running.start()
    return running


@pytest.fixture
def daemon(tmp_path, pod_net, cleanup):
    net, _ = pod_net
    return start_daemon(tmp_path, cleanup,
                        {"pod_network_driver": "shared", "pod_network": net.id,
                         "pool_size": "2"}, {})


def make_sandboxes(cleanup, prefix: str, count: int) -> list[str]:
    """Named network namespaces standing in for pods, removed at teardown."""
    names = [f"{prefix}-{i}" for i in range(count)]
    for name in names:
        netns.create(name)
        cleanup(lambda name=name: netns.remove(name) if name in netns.listnetns() else None)
    return names


@pytest.fixture
def pods(cleanup, unique):
    return make_sandboxes(cleanup, f"cnid-{unique}", 2)


def cni(command: str, daemon: CniDaemon, container_id: str, ns: str, pod: str = "",
        uid: str = "", namespace: str = "test") -> tuple[int, dict | None]:
    """The real kuryr-cni, for a pod of Kubernetes ``namespace`` in netns ``ns``."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command,
           "CNI_CONTAINERID": container_id, "CNI_NETNS": f"/var/run/netns/{ns}",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}
    if pod:
        env["CNI_ARGS"] = (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};"
                           f"K8S_POD_NAME={pod};K8S_POD_UID={uid}")
    config = {"cniVersion": "0.4.0", "name": "kuryr", "type": "kuryr-cni",
              "daemon_socket": str(daemon.sock)}
    proc = subprocess.run([str(BIN / "kuryr-cni")], input=json.dumps(config).encode(),
                          env=env, capture_output=True, timeout=90, check=False)
    out = proc.stdout.decode().strip()
    return proc.returncode, json.loads(out) if out else None


def ping(ns: str, address: str) -> bool:
    return subprocess.run(["nsenter", f"--net=/var/run/netns/{ns}", "busybox", "ping", "-c1",
                           "-W2", address], capture_output=True, check=False).returncode == 0


def test_add_ping_check_del_and_nothing_left(daemon, pods, neutron, ovs, pod_net, unique):
    net, _ = pod_net
    ids = [uuid.uuid4().hex * 2 for _ in pods]
    uids = [str(uuid.uuid4()) for _ in pods]
    results = []
    for cid, ns, uid, i in zip(ids, pods, uids, range(2), strict=True):
        status, result = cni("ADD", daemon, cid, ns, pod=f"web-{unique}-{i}", uid=uid)
        assert status == 0, result
        results.append(result)
    addresses = [r["ips"][0]["address"].split("/")[0] for r in results]
    for result, ns in zip(results, pods, strict=True):
        assert result["cniVersion"] == "0.4.0"
        assert result["interfaces"][0]["name"] == "eth0"
        assert result["interfaces"][0]["sandbox"] == f"/var/run/netns/{ns}"
        assert result["ips"][0]["address"].endswith("/24")
        assert result["ips"][0]["gateway"] == "10.213.0.1"
        assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.213.0.1"}]
    assert wait_until(lambda: ping(pods[0], addresses[1]), 15)
    assert ping(pods[1], addresses[0])

    # Each pod's port: bound here, the pod's owner, uid, name and tag (in the background).
    host = socket.gethostname()

    def recorded(i: int):
        found = [p for p in neutron.api.ports(network_id=net.id)
                 if p.device_id == uids[i]]
        return found[0] if found and found[0].tags else None

    pod_port_ids = []
    for i in range(2):
        port = wait_until(lambda i=i: recorded(i), 15)
        pod_port_ids.append(port.id)
        assert port is not None
        assert (port.device_owner, port.binding_host_id, port.mac_address) == (
            marks.K8S_DEVICE_OWNER, host, results[i]["interfaces"][0]["mac"])
        assert port.name == f"kuryr-pod-test/web-{unique}-{i}"
        assert port.tags == [f"kuryr.k8s.pod:test/web-{unique}-{i}"]

    # ADD again: the same answer, no "File exists".
    assert cni("ADD", daemon, ids[0], pods[0], pod=f"web-{unique}-0", uid=uids[0]) == \
        (0, results[0])
    assert cni("CHECK", daemon, ids[0], pods[0], pod=f"web-{unique}-0") == (0, None)

    for cid, ns in zip(ids, pods, strict=True):
        assert cni("DEL", daemon, cid, ns) == (0, None)
        assert cni("DEL", daemon, cid, ns) == (0, None)  # again: still a success
    status, error = cni("CHECK", daemon, ids[0], pods[0])
    assert (status, error["code"]) == (1, 3), error

    _assert_nothing_left(neutron, ovs, net.id, pod_port_ids, ids)


def _assert_nothing_left(neutron, ovs, network_id: str, pod_ports: list[str],
                         container_ids: list[str]) -> None:
    """No pod port; the network's ports are ready pooled ones (owner kuryr-k8s:pool,
    plugged, container end back in the host) or gone; no veth of a deleted port."""
    deleted = set(pod_ports)
    cids = set(container_ids)

    def settled():
        # The node's own port (probes) stays for the next start, as the pool's do.
        ports = [p for p in neutron.api.ports(network_id=network_id)
                 if p.device_owner != marks.K8S_HOST_DEVICE_OWNER]
        # Back in the pool: two background PUTs (owner/device_id, then the tags).
        in_use = [p for p in ports if p.device_owner != marks.K8S_POOL_DEVICE_OWNER
                  or p.device_id or p.tags]
        if in_use or any(ep in cids for ep in ovs.endpoint_ports()):
            return None
        links = netlink.link_names()
        managed = ovs.managed_interfaces()
        # The pods' interfaces that are not pooled ports now (deleted ports): gone.
        kept = {p.id for p in ports}
        stray = [name for name, port_id in managed.items()
                 if port_id in deleted and port_id not in kept]
        stray += [VIF(pid, "").host_ifname for pid in deleted - kept
                  if VIF(pid, "").host_ifname in links]
        for port in ports:
            vif = VIF(port.id, port.mac_address)
            if vif.host_ifname not in links or vif.container_ifname not in links:
                return None  # a pooled port is plugged, its container end at home
        return {"ports": ports, "stray": stray}

    found = wait_until(settled, 20)
    assert found is not None, [(p.id, p.device_owner, p.device_id, p.tags)
                               for p in neutron.api.ports(network_id=network_id)]
    assert not found["stray"]


def test_a_daemon_killed_after_add_finds_the_pod_again(daemon, pods, neutron, ovs, pod_net,
                                                        unique):
    net, _ = pod_net
    cid, uid = uuid.uuid4().hex * 2, str(uuid.uuid4())
    status, result = cni("ADD", daemon, cid, pods[0], pod=f"db-{unique}", uid=uid)
    assert status == 0, result
    daemon.kill(signal.SIGKILL)
    daemon.start()  # the stale socket is replaced
    assert cni("CHECK", daemon, cid, pods[0], pod=f"db-{unique}") == (0, None)
    assert cni("ADD", daemon, cid, pods[0], pod=f"db-{unique}", uid=uid) == (0, result)
    # Written again at the restart, in the background (behind the pool's refill on a
    # neutron-server with one worker).
    port = wait_until(lambda: next((p for p in neutron.api.ports(network_id=net.id)
                                    if p.device_id == uid), None), 45)
    assert port is not None
    assert port.device_owner == marks.K8S_DEVICE_OWNER
    assert cni("DEL", daemon, cid, pods[0]) == (0, None)
    assert cni("DEL", daemon, cid, pods[0]) == (0, None)
    _assert_nothing_left(neutron, ovs, net.id, [port.id], [cid])


def test_gc_detaches_what_the_runtime_no_longer_lists(daemon, pods, neutron, ovs, pod_net,
                                                      unique):
    net, _ = pod_net
    ids = [uuid.uuid4().hex * 2 for _ in pods]
    for i, (cid, ns) in enumerate(zip(ids, pods, strict=True)):
        assert cni("ADD", daemon, cid, ns, pod=f"gc-{unique}-{i}", uid=str(uuid.uuid4()))[0] == 0
    env = {"PATH": os.environ.get("PATH", ""), "CNI_COMMAND": "GC", "CNI_PATH": "/opt/cni/bin"}
    config = {"cniVersion": "1.1.0", "name": "kuryr", "type": "kuryr-cni",
              "daemon_socket": str(daemon.sock),
              "cni.dev/valid-attachments": [{"containerID": ids[0], "ifname": "eth0"}]}
    proc = subprocess.run([str(BIN / "kuryr-cni")], input=json.dumps(config).encode(),
                          env=env, capture_output=True, timeout=90, check=False)
    assert proc.returncode == 0, proc.stdout
    assert cni("CHECK", daemon, ids[0], pods[0])[0] == 0
    status, error = cni("CHECK", daemon, ids[1], pods[1])
    assert (status, error["code"]) == (1, 3), error
    assert cni("DEL", daemon, ids[0], pods[0]) == (0, None)
    _assert_nothing_left(neutron, ovs, net.id, [], ids)


def test_status_answers_while_the_daemon_runs(daemon):
    env = {"PATH": os.environ.get("PATH", ""), "CNI_COMMAND": "STATUS"}
    config = {"cniVersion": "1.1.0", "name": "kuryr", "type": "kuryr-cni",
              "daemon_socket": str(daemon.sock)}
    proc = subprocess.run([str(BIN / "kuryr-cni")], input=json.dumps(config).encode(),
                          env=env, capture_output=True, timeout=30, check=False)
    assert (proc.returncode, proc.stdout) == (0, b"")
    assert daemon.sock.stat().st_mode & 0o777 == 0o600
