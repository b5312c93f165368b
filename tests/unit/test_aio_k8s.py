"""kuryr-aio's Kubernetes cluster: certificates, configs, order (pure parts)."""

import json
import tomllib

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kuryr.aio import debian_services, kubernetes, stack
from kuryr.aio.k8s_pki import Pki
from kuryr.aio.layout import Layout


def _cert(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_pki_signs_every_identity_with_one_ca_and_keeps_keys_root_only(tmp_path):
    pki = Pki(tmp_path / "pki", "node-1", "10.96.0.1")
    pki.make("https://127.0.0.1:6443")
    assert pki.missing() == []
    ca = _cert(pki.ca_cert)
    ca_key = ca.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    for who in ("admin", "kubelet", "kuryr", "controller-manager", "scheduler"):
        cert = _cert(pki.cert(who))
        cert.verify_directly_issued_by(ca)
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        assert pki.key(who).stat().st_mode & 0o777 == 0o600
    kubelet = _cert(pki.cert("kubelet")).subject
    assert kubelet.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:node-1"
    assert kubelet.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:nodes"
    kuryr = _cert(pki.cert("kuryr")).subject
    assert kuryr.get_attributes_for_oid(NameOID.ORGANIZATION_NAME) == []  # no system:masters
    assert (tmp_path / "pki").stat().st_mode & 0o777 == 0o700


def test_api_server_certificate_names_loopback_and_the_service_address(tmp_path):
    pki = Pki(tmp_path / "pki", "node-1", "10.96.0.1")
    pki.make("https://127.0.0.1:6443")
    serving = _cert(pki.serving_cert)
    serving.verify_directly_issued_by(_cert(pki.ca_cert))
    names = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(a) for a in names.get_values_for_type(x509.IPAddress)} == {
        "127.0.0.1", "10.96.0.1"}
    assert "kubernetes.default.svc" in names.get_values_for_type(x509.DNSName)


def test_kubelet_serves_with_a_certificate_of_the_ca(tmp_path):
    pki = Pki(tmp_path / "pki", "node-1", "10.96.0.1")
    pki.make("https://127.0.0.1:6443")
    serving = _cert(pki.kubelet_serving_cert)
    serving.verify_directly_issued_by(_cert(pki.ca_cert))
    names = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "node-1" in names.get_values_for_type(x509.DNSName)
    usage = serving.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_pki_is_made_once(tmp_path):
    pki = Pki(tmp_path / "pki", "node-1", "10.96.0.1")
    pki.make("https://127.0.0.1:6443")
    before = {p: p.read_bytes() for p in pki.files()}
    pki.make("https://127.0.0.1:6443")
    assert {p: p.read_bytes() for p in pki.files()} == before


def test_kubeconfig_points_at_the_api_server_with_the_identity(tmp_path):
    pki = Pki(tmp_path / "pki", "node-1", "10.96.0.1")
    pki.make("https://127.0.0.1:6443")
    doc = json.loads(pki.kubeconfig("kuryr").read_text())
    assert doc["clusters"][0]["cluster"] == {"server": "https://127.0.0.1:6443",
                                             "certificate-authority": str(pki.ca_cert)}
    assert doc["users"][0]["user"]["client-certificate"] == str(pki.cert("kuryr"))
    assert pki.kubeconfig("kuryr").stat().st_mode & 0o777 == 0o600


def test_containerd_is_the_stacks_own_with_kuryr_as_the_only_network(tmp_path):
    layout = Layout(base=tmp_path / "lib", run=tmp_path / "run", host="h1")
    containerd = kubernetes.Containerd(layout)
    containerd.prepare()
    conf = tomllib.loads(containerd.config.read_text())
    assert conf["grpc"]["address"] == str(tmp_path / "run" / "containerd" / "containerd.sock")
    assert conf["root"].startswith(str(tmp_path / "lib"))
    cri = conf["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == kubernetes.PAUSE_IMAGE
    assert cri["cni"]["max_conf_num"] == 1
    conflists = list(containerd.cni_conf.iterdir())
    assert [p.name for p in conflists] == ["10-kuryr.conflist"]
    conflist = json.loads(conflists[0].read_text())
    assert conflist["plugins"] == [{"type": "kuryr-cni",
                                    "daemon_socket": str(layout.cni_socket)}]
    plugin = containerd.cni_bin / "kuryr-cni"
    assert plugin.is_file()
    assert plugin.stat().st_mode & 0o777 == 0o755
    assert (containerd.cni_bin / "loopback").is_symlink()
    containerd.prepare()  # again: links kept, nothing raises


def test_cluster_is_added_only_when_asked_and_stopped_before_the_rest(tmp_path):
    layout = Layout(base=tmp_path, run=tmp_path / "run", host="h1")
    names = [c.name for c in stack.components(layout)]
    assert "kubelet" not in names
    assert "KUBECONFIG" not in stack.env_exports(layout)
    layout.k8s_mode_file.touch()
    names = [c.name for c in stack.components(layout)]
    # Pods need the network and the API server; kubelet drains the node at
    # `down` only once nothing schedules or makes pods any more.
    assert names.index("kubelet") > names.index("containerd") > names.index("kube-apiserver")
    assert names.index("kube-scheduler") > names.index("kubelet")
    assert names.index("kube-controller-manager") > names.index("kubelet")
    assert names.index("pod-network") > names.index("neutron")
    assert f"export KUBECONFIG={tmp_path}/k8s/pki/admin.kubeconfig\n" in \
        stack.env_exports(layout)


def test_debian_etcd_service_is_stopped_like_the_others():
    assert "etcd.service" in debian_services.DEBIAN_UNITS


def test_kubelet_listens_on_loopback_only():
    assert kubernetes.KUBELET_CONFIG["address"] == "127.0.0.1"
    assert kubernetes.KUBELET_CONFIG["readOnlyPort"] == 0
    assert kubernetes.KUBELET_CONFIG["authentication"]["anonymous"] == {"enabled": False}


def test_control_plane_listens_on_loopback_only(tmp_path):
    layout = Layout(base=tmp_path, run=tmp_path / "run", host="h1")
    etcd = kubernetes.Etcd(layout).argv()
    urls = [a.split("=", 1)[1] for a in etcd if "-urls=" in a]
    assert len(urls) == 5  # client, advertised client, peer, advertised peer, metrics
    assert all(u.startswith("http://127.0.0.1:") for u in urls)
    for daemon in (kubernetes.KubeControllerManager, kubernetes.KubeScheduler):
        argv = daemon(layout).argv()
        assert "--bind-address=127.0.0.1" in argv
        assert not any(a.startswith("--insecure-bind-address") for a in argv)


def test_the_api_server_is_reached_from_pods_and_answers_no_one_anonymous(tmp_path):
    """Its Service's endpoint is the node's address on the pod network: it
    listens there too (one bind address: all), and only to credentials."""
    layout = Layout(base=tmp_path, run=tmp_path / "run", host="h1")
    server = kubernetes.KubeApiserver(layout)
    server.advertised = "10.244.0.7"
    argv = server.argv()
    assert "--advertise-address=10.244.0.7" in argv
    assert "--anonymous-auth=false" in argv
    assert "--insecure-port=0" in argv
    assert not any(a.startswith("--insecure-bind-address") for a in argv)


def test_kubelet_listens_where_the_host_name_resolves_if_that_is_loopback(monkeypatch):
    answers = {"debian": "127.0.1.1", "public": "192.0.2.7"}

    def resolve(name):
        if name not in answers:
            raise kubernetes.socket.gaierror(name)
        return answers[name]

    monkeypatch.setattr(kubernetes.socket, "gethostbyname", resolve)
    assert kubernetes.kubelet_address("debian") == "127.0.1.1"
    assert kubernetes.kubelet_address("public") == "127.0.0.1"
    assert kubernetes.kubelet_address("unknown") == "127.0.0.1"
