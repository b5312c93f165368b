"""kuryr/k8s/manifests/kuryr.yaml: what must agree inside it, and with the code.

Run on the real cluster by tests/integration/test_zzz_k8s_manifests.py; these
are the invariants an edit could break without the API server noticing."""

from __future__ import annotations

import configparser
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kuryr import config, status
from kuryr.k8s import factory

MANIFEST = Path(config.__file__).parent / "k8s" / "manifests" / "kuryr.yaml"


@pytest.fixture(scope="module")
def docs() -> dict[str, dict]:
    return {f"{d['kind']}/{d['metadata']['name']}": d
            for d in yaml.safe_load_all(MANIFEST.read_text()) if d}


def pod_spec(docs: dict[str, dict], name: str) -> dict:
    return docs[name]["spec"]["template"]["spec"]


def container(docs: dict[str, dict], name: str, which: str) -> dict:
    spec = pod_spec(docs, name)
    [found] = [c for c in spec.get("initContainers", []) + spec["containers"]
               if c["name"] == which]
    return found


def conf_text(docs: dict[str, dict]) -> str:
    return docs["ConfigMap/kuryr-config"]["data"]["kuryr.conf"]


def test_the_daemons_socket_is_the_same_in_the_config_the_conflist_and_the_probe(docs):
    parser = configparser.RawConfigParser()
    parser.read_string(conf_text(docs))
    socket = parser.get("kubernetes", "daemon_socket")
    install = container(docs, "DaemonSet/kuryr-cni", "install-cni")["command"]
    assert install[install.index("--socket") + 1] == socket
    probe = container(docs, "DaemonSet/kuryr-cni", "cni-daemon")["readinessProbe"]
    assert json.loads(probe["exec"]["command"][-1])["daemon_socket"] == socket
    mounts = {m["name"]: m["mountPath"]
              for m in container(docs, "DaemonSet/kuryr-cni", "cni-daemon")["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(docs, "DaemonSet/kuryr-cni")["volumes"]}
    # The same directory on the node (where kuryr-cni connects) and in the pod.
    assert str(Path(socket).parent) == mounts["kuryr-run"] == \
        volumes["kuryr-run"]["hostPath"]["path"]


def test_the_plugin_and_conflist_go_to_the_nodes_standard_cni_directories(docs):
    install = container(docs, "DaemonSet/kuryr-cni", "install-cni")
    mounts = {m["name"]: m["mountPath"] for m in install["volumeMounts"]}
    volumes = {v["name"]: v["hostPath"]["path"]
               for v in pod_spec(docs, "DaemonSet/kuryr-cni")["volumes"] if "hostPath" in v}
    command = install["command"]
    assert command[command.index("--bin-dir") + 1] == mounts["cni-bin"]
    assert command[command.index("--conf-dir") + 1] == mounts["cni-conf"]
    assert volumes["cni-bin"] == "/opt/cni/bin"
    assert volumes["cni-conf"] == "/etc/cni/net.d"
    # Run by the runtime on the node, with the node's Python.
    assert command[command.index("--interpreter") + 1] == "/usr/bin/python3"


def test_nothing_is_privileged_and_the_daemon_has_only_its_two_capabilities(docs):
    for name in ("DaemonSet/kuryr-cni", "Deployment/kuryr-controller"):
        spec = pod_spec(docs, name)
        for c in spec.get("initContainers", []) + spec["containers"]:
            context = c.get("securityContext", {})
            assert not context.get("privileged"), c["name"]
            assert context["capabilities"]["drop"] == ["ALL"], c["name"]
            assert context["readOnlyRootFilesystem"] is True, c["name"]
            added = context["capabilities"].get("add", [])
            # The API server refuses no_new_privs with CAP_SYS_ADMIN (it would
            # not hold); everything else runs with it.
            assert ("allowPrivilegeEscalation" not in context) == ("SYS_ADMIN" in added)
            assert context.get("allowPrivilegeEscalation", False) is False, c["name"]
    daemon = container(docs, "DaemonSet/kuryr-cni", "cni-daemon")["securityContext"]
    assert sorted(daemon["capabilities"]["add"]) == ["NET_ADMIN", "SYS_ADMIN"]
    controller = container(docs, "Deployment/kuryr-controller", "controller")
    assert "add" not in controller["securityContext"]["capabilities"]
    assert pod_spec(docs, "Deployment/kuryr-controller")["securityContext"]["runAsNonRoot"]


def test_pods_network_namespaces_are_mounted_from_the_real_path_with_propagation(docs):
    spec = pod_spec(docs, "DaemonSet/kuryr-cni")
    [volume] = [v for v in spec["volumes"] if v["name"] == "netns"]
    # containerd checks the propagation of the path as written: /var/run is a link.
    assert volume["hostPath"]["path"] == "/run/netns"
    [mount] = [m for m in container(docs, "DaemonSet/kuryr-cni", "cni-daemon")["volumeMounts"]
               if m["name"] == "netns"]
    assert mount["mountPropagation"] == "HostToContainer"


def test_the_daemon_writes_sysctls_where_the_hosts_proc_sys_net_is_mounted(docs):
    daemon = container(docs, "DaemonSet/kuryr-cni", "cni-daemon")
    env = {e["name"]: e.get("value") for e in daemon["env"]}
    [mount] = [m for m in daemon["volumeMounts"] if m["name"] == "proc-sys-net"]
    # runc refuses mount points inside /proc.
    assert not mount["mountPath"].startswith("/proc/")
    assert env["KURYR_PROC_SYS_NET"] == mount["mountPath"]
    [volume] = [v for v in pod_spec(docs, "DaemonSet/kuryr-cni")["volumes"]
                if v["name"] == "proc-sys-net"]
    assert volume["hostPath"]["path"] == "/proc/sys/net"
    probe = ("import kuryr.binding.netlink as n; "
             "print(n.IPV6_CONF); print(n.IPV4_CONF)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env={"KURYR_PROC_SYS_NET": env["KURYR_PROC_SYS_NET"]},
                         check=True, timeout=60).stdout.split()
    assert out == [f"{mount['mountPath']}/ipv6/conf", f"{mount['mountPath']}/ipv4"]


def test_both_pods_reach_the_api_server_named_in_one_configmap(docs):
    api_server = docs["ConfigMap/kuryr-api-server"]["data"]
    assert set(api_server) == {"KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"}
    for name, which in (("DaemonSet/kuryr-cni", "cni-daemon"),
                        ("Deployment/kuryr-controller", "controller")):
        spec = pod_spec(docs, name)
        assert spec["hostNetwork"] is True
        assert spec["serviceAccountName"] == "kuryr"
        env_from = container(docs, name, which)["envFrom"]
        # Not optional: without it the Service's address would be used, which a
        # node's own namespace does not reach without kube-proxy.
        assert env_from == [{"configMapRef": {"name": "kuryr-api-server"}}]
    parser = configparser.RawConfigParser()
    parser.read_string(conf_text(docs))
    assert parser.get("kubernetes", "kubeconfig") == ""  # the service account


def test_the_controllers_lease_holder_is_its_pods_name(docs, monkeypatch):
    env = container(docs, "Deployment/kuryr-controller", "controller")["env"]
    [holder] = [e for e in env if e["name"] == "KURYR_POD_NAME"]
    assert holder["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    monkeypatch.setenv("KURYR_POD_NAME", "kuryr-controller-abc-12345")
    assert factory.lease_holder() == "kuryr-controller-abc-12345"
    monkeypatch.delenv("KURYR_POD_NAME")
    assert factory.lease_holder()  # the host name


def test_every_container_runs_a_command_of_the_image(docs):
    commands = {"kuryr", "kuryr-cni-install", "sh"}
    for name in ("DaemonSet/kuryr-cni", "Deployment/kuryr-controller"):
        spec = pod_spec(docs, name)
        for c in spec.get("initContainers", []) + spec["containers"]:
            assert c["image"] == "kuryr/kuryr-k8s:latest"
            assert c["command"][0] in commands, shlex.join(c["command"])
            if c["command"][0] == "kuryr":
                assert c["command"][2:] == ["--config-file", "/etc/kuryr/kuryr.conf"]


def test_kuryr_status_in_the_pods_skips_the_docker_checks(docs, tmp_path):
    path = tmp_path / "kuryr.conf"
    path.write_text(conf_text(docs))
    names = [name for name, _ in status.checks_for(config.load([], [str(path)]))]
    assert names == ["neutron", "ovs"]  # + cni-daemon, k8s-controller where the socket is
    docker_host = config.load([], [])
    assert {"plugin-discovery", "plugin", "docker"} <= \
        {name for name, _ in status.checks_for(docker_host)}
