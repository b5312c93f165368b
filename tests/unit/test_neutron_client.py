"""The request counter, exercised over real HTTP against a tiny local server."""

import json
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kuryr import config
from kuryr.neutron.client import connect


class FakeNeutron(BaseHTTPRequestHandler):
    """Answers version discovery and network listing like neutron-server."""

    def do_GET(self):
        port = self.server.server_address[1]
        if self.path in ("/", ""):
            body = {"versions": [{"id": "v2.0", "status": "CURRENT", "links": [
                {"rel": "self", "href": f"http://127.0.0.1:{port}/v2.0/"}]}]}
        elif self.path.startswith("/v2.0/networks"):
            body = {"networks": [{"id": "n1", "name": "one"}]}
        elif self.path.startswith("/v2.0/ports"):
            self.server.paths.append(self.path)
            body = {"ports": [{"id": "p1", "network_id": "n1", "mac_address": "fa:16:3e:0:0:1",
                               "binding:host_id": "node-7"}]}
        else:
            self.send_response(404)
            self.end_headers()
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_neutron():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeNeutron)
    server.paths = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server.paths
    server.shutdown()


def test_requests_are_counted_per_operation(tmp_path, fake_neutron):
    fake_neutron, _ = fake_neutron
    path = tmp_path / "kuryr.conf"
    path.write_text(f"[neutron]\nauth_type = none\nendpoint = {fake_neutron}\n")
    neutron = connect(config.load([], [str(path)]))
    list(neutron.api.networks())  # warms version discovery
    with neutron.counter.operation() as tally:
        nets = list(neutron.api.networks())
        list(neutron.api.networks(name="one"))
    assert [n.id for n in nets] == ["n1"]
    assert tally.by_method == {"GET": 2}
    assert tally.writes == 0
    assert neutron.counter.total["GET"] >= 3


def test_a_hosts_ports_are_filtered_by_neutron_not_here(tmp_path, fake_neutron):
    """Every host's collector lists its ports each pass: the filter must be in
    the request, or each pass downloads every port of the cloud."""
    endpoint, paths = fake_neutron
    path = tmp_path / "kuryr.conf"
    path.write_text(f"[neutron]\nauth_type = none\nendpoint = {endpoint}\n")
    neutron = connect(config.load([], [str(path)]))
    ports = neutron.ports(binding_host_id="node-7", device_owner="compute:kuryr")
    assert [p.binding_host_id for p in ports] == ["node-7"]
    (sent,) = paths
    assert "binding%3Ahost_id=node-7" in sent or "binding:host_id=node-7" in sent
    assert "device_owner=compute%3Akuryr" in sent


def test_tallies_are_separate_per_thread(tmp_path, fake_neutron):
    fake_neutron, _ = fake_neutron
    path = tmp_path / "kuryr.conf"
    path.write_text(f"[neutron]\nauth_type = none\nendpoint = {fake_neutron}\n")
    neutron = connect(config.load([], [str(path)]))
    list(neutron.api.networks())
    results = {}

    def work(name, calls):
        with neutron.counter.operation() as tally:
            for _ in range(calls):
                list(neutron.api.networks())
        results[name] = tally.total

    threads = [threading.Thread(target=work, args=(i, i + 1)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {0: 1, 1: 2, 2: 3, 3: 4}


class _Pools:
    """The two calls find_subnetpool makes, over a fixed list of pools."""

    def __init__(self, pools, project):
        self.pools, self.project = pools, project
        self.session = self

    def get_subnet_pool(self, ref):
        from openstack import exceptions
        for pool in self.pools:
            if pool.id == ref:
                return pool
        raise exceptions.ResourceNotFound(f"no subnetpool {ref}")

    def subnet_pools(self, name):
        return [p for p in self.pools if p.name == name]

    def get_project_id(self):
        return self.project


def _neutron_over(pools, project):
    from types import SimpleNamespace

    from kuryr.neutron.client import Neutron, RequestCounter
    return Neutron(SimpleNamespace(network=_Pools(pools, project)), RequestCounter())


def _pool(pool_id, project):
    from types import SimpleNamespace
    return SimpleNamespace(id=pool_id, name="kuryr", project_id=project,
                           prefixes=["10.0.0.0/8"], default_prefix_length=24)


def test_of_several_subnetpools_with_the_name_kuryr_uses_its_own_projects():
    neutron = _neutron_over([_pool("theirs", "p1"), _pool("ours", "p2")], project="p2")
    assert neutron.find_subnetpool("kuryr").id == "ours"
    assert neutron.find_subnetpool("theirs").id == "theirs"  # an id is taken as it is
    assert _neutron_over([], "p2").find_subnetpool("kuryr") is None


def test_an_ambiguous_subnetpool_name_is_a_clear_error():
    from kuryr import errors
    neutron = _neutron_over([_pool("a", "p1"), _pool("b", "p3")], project=None)
    with pytest.raises(errors.Conflict, match="2 subnetpools are named 'kuryr'"):
        neutron.find_subnetpool("kuryr")


class ResettingNeutron(FakeNeutron):
    """Resets the connection of the first POST without answering, as a server
    closing an idle keep-alive connection at the moment a request arrives."""

    resets_left = 1

    def do_POST(self):
        if ResettingNeutron.resets_left:
            ResettingNeutron.resets_left -= 1
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        data = json.dumps({"network": {"id": "n2", "name": "two"}}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_a_request_on_a_connection_reset_without_an_answer_is_sent_once_more(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), ResettingNeutron)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        path = tmp_path / "kuryr.conf"
        path.write_text("[neutron]\nauth_type = none\n"
                        f"endpoint = http://127.0.0.1:{server.server_address[1]}\n")
        neutron = connect(config.load([], [str(path)]))
        assert neutron.api.create_network(name="two").id == "n2"
        assert ResettingNeutron.resets_left == 0
    finally:
        server.shutdown()
