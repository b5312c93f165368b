"""The plugin API's protocol layer: models accept every message a real dockerd
sent, and errors are non-200 {"Err"} replies.  No Neutron is involved: these
paths never reach it."""

import json
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from kuryr import config, errors
from kuryr.libnetwork import app as app_module
from kuryr.libnetwork import models
from kuryr.neutron import marks
from kuryr.neutron.client import RequestCounter

from .test_core import Driver

TRACE = Path(__file__).resolve().parents[3] / "shared" / "data" / "docker-20.10-plugin-trace.jsonl"
MODELS = {
    "/IpamDriver.RequestPool": models.RequestPoolRequest,
    "/IpamDriver.ReleasePool": models.ReleasePoolRequest,
    "/IpamDriver.RequestAddress": models.RequestAddressRequest,
    "/IpamDriver.ReleaseAddress": models.ReleaseAddressRequest,
    "/NetworkDriver.CreateNetwork": models.CreateNetworkRequest,
    "/NetworkDriver.DeleteNetwork": models.NetworkRequest,
    "/NetworkDriver.CreateEndpoint": models.CreateEndpointRequest,
    "/NetworkDriver.Join": models.JoinRequest,
    "/NetworkDriver.Leave": models.EndpointRequest,
    "/NetworkDriver.DeleteEndpoint": models.EndpointRequest,
    "/NetworkDriver.EndpointOperInfo": models.EndpointRequest,
    "/NetworkDriver.ProgramExternalConnectivity": models.EndpointRequest,
    "/NetworkDriver.RevokeExternalConnectivity": models.EndpointRequest,
}


class NoNeutron:
    """Stands in for Neutron on paths that must not reach it; any use fails the test."""

    class counter:  # noqa: N801
        @staticmethod
        def operation():
            import contextlib

            from kuryr.neutron.client import RequestTally
            return contextlib.nullcontext(RequestTally())

    def __getattr__(self, name):
        raise AssertionError(f"Neutron was called ({name}) on a path that needs none")


@pytest.fixture
def client():
    conf = config.load([], [])
    driver = Driver(neutron=NoNeutron())  # type: ignore[arg-type]
    plugin = app_module.Plugin(ipam=driver.ipam, networks=driver.networks,
                               endpoints=driver.endpoints, counter=RequestCounter(),
                               call_timeout=conf.plugin_call_timeout,
                               scope=conf.capability_scope)
    # Docker names a loopback host; TestClient's default "testserver" is refused.
    yield TestClient(app_module.build_app(plugin), base_url="http://localhost")
    driver.close()


@pytest.mark.skipif(not TRACE.exists(), reason="shared/ trace not present")
def test_every_traced_docker_request_validates():
    seen = 0
    for line in TRACE.read_text().splitlines():
        entry = json.loads(line)
        model = MODELS.get(entry.get("path"))
        if model and isinstance(entry.get("req"), dict):
            model.model_validate(entry["req"])
            seen += 1
    assert seen > 50


def test_handshake_without_content_type(client):
    resp = client.post("/Plugin.Activate", content=b"")
    assert resp.status_code == 200
    assert resp.json() == {"Implements": ["NetworkDriver", "IpamDriver"]}
    caps = client.post("/IpamDriver.GetCapabilities").json()
    assert caps == {"RequiresMACAddress": False, "RequiresRequestReplay": False}
    assert client.post("/NetworkDriver.GetCapabilities").json()["Scope"] == "local"


def test_gateway_request_needs_no_neutron(client):
    resp = client.post("/IpamDriver.RequestAddress", json={
        "PoolID": "kuryr:10.1.0.0/24", "Address": "",
        "Options": {"RequestAddressType": models.GATEWAY_REQUEST}})
    assert resp.status_code == 200
    assert resp.json()["Address"] == "10.1.0.1/24"


def test_request_pool_with_subnet_names_cidr_range_token_and_subnetpool():
    from .fakes import FakeNeutron

    driver = Driver(neutron=FakeNeutron())
    try:
        got = driver.ipam.request_pool(models.RequestPoolRequest(
            AddressSpace="x", Pool="10.9.0.0/16", SubPool="10.9.1.0/24", V6=False))
    finally:
        driver.close()
    pool_id = marks.parse_pool_id(got.PoolID)
    assert (pool_id.cidr, pool_id.ip_range) == ("10.9.0.0/16", "10.9.1.0/24")
    assert pool_id.token, "every requested pool gets a token of its own"
    assert driver.neutron.subnetpools_[pool_id.subnetpool].name == "kuryrPool-10.9.0.0/16"


@pytest.mark.parametrize(("path", "body", "status", "needle"), [
    ("/IpamDriver.RequestPool", b"{not json", 400, "not valid JSON"),
    ("/IpamDriver.RequestPool", b"[1, 2]", 400, "JSON object"),
    ("/IpamDriver.RequestAddress", b'{"Address": "1.2.3.4"}', 400, "PoolID"),
    ("/IpamDriver.RequestPool", b'{"Pool": "10.0.0.0/33"}', 400, "not a valid CIDR"),
    ("/IpamDriver.RequestPool", b'{"Pool": "10.0.0.0/16", "SubPool": "10.1.0.0/24"}', 400,
     "not inside"),
    ("/IpamDriver.RequestAddress", b'{"PoolID": "other:1", "Address": ""}', 400,
     "not issued by Kuryr"),
    ("/IpamDriver.RequestAddress",
     b'{"PoolID": "kuryr:10.1.0.0/24", "Address": "10.2.0.5"}', 400, "outside subnet"),
    ("/NetworkDriver.CreateNetwork", b'{"NetworkID": "nothex"}', 400, "not a Docker network id"),
    ("/NetworkDriver.Nope", b"{}", 404, "unknown plugin method"),
])
def test_errors_are_non_200_with_err(client, path, body, status, needle):
    resp = client.post(path, content=body)
    assert resp.status_code == status
    assert needle in resp.json()["Err"]


def test_error_types_map_to_statuses():
    assert errors.InvalidInput.status == 400
    assert errors.NotFound.status == 404
    assert errors.Conflict.status == 409
    assert errors.BackendUnavailable.status == 503


# -- item 9: who may call -------------------------------------------------------------------
@pytest.mark.parametrize("host", [
    "localhost", "localhost:23750", "LOCALHOST.", "plugin.moby.localhost",
    "127.0.0.1", "127.0.0.1:23750", "127.1.2.3:1", "[::1]", "[::1]:23750", "::1",
    "",  # dockerd 20.10 over the unix socket; browsers always send a name
])
def test_loopback_hosts_are_served(client, host):
    resp = client.post("/Plugin.Activate", headers={"Host": host})
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("host", [
    "testserver", "evil.example", "evil.example:23750", "localhost.evil.example",
    "10.0.0.1:23750", "[fe80::1]:23750", "[::1]x", "127.0.0.1:port",
])
def test_other_hosts_are_refused(client, host):
    resp = client.post("/Plugin.Activate", headers={"Host": host})
    assert resp.status_code == 403
    assert "Host" in resp.json()["Err"]


def test_a_call_from_a_web_page_is_refused(client):
    resp = client.post("/NetworkDriver.CreateNetwork", content=b"{}",
                       headers={"Origin": "http://localhost:8000"})
    assert resp.status_code == 403
    assert "Origin" in resp.json()["Err"]


@pytest.mark.parametrize("content_type", [
    "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
    "", "application/jsonx", "text/json",
])
def test_non_json_content_types_are_refused(client, content_type):
    resp = client.post("/IpamDriver.RequestPool", content=b"{}",
                       headers={"Content-Type": content_type})
    assert resp.status_code == 403
    assert "Content-Type" in resp.json()["Err"]


@pytest.mark.parametrize("content_type", [
    None, "application/json", "application/json; charset=utf-8", "Application/JSON",
    "application/vnd.docker.plugins.v1.2+json", "application/problem+json; q=1",
])
def test_json_or_no_content_type_is_served(client, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    resp = client.post("/IpamDriver.GetCapabilities", content=b"", headers=headers)
    assert resp.status_code == 200, resp.text


def test_unknown_methods_are_refused_before_routing(client):
    resp = client.post("/NetworkDriver.Nope", headers={"Host": "evil.example"})
    assert resp.status_code == 403


def test_a_tls_listener_is_called_by_its_name(client):
    """kuryr_uri https://: other hosts' dockerd name it; its client certificates keep
    callers out.  Origin and Content-Type are still refused there."""
    tls = TestClient(client.app, base_url="https://kuryr.example:23750")
    assert tls.post("/Plugin.Activate").status_code == 200
    assert tls.post("/Plugin.Activate", headers={"Origin": "https://x"}).status_code == 403


# -- item 10: bodies are limited while they stream ------------------------------------------
def _post_stream(app, path: str, chunks, headers=()):
    """POST ``path`` to the ASGI app straight, the body from ``chunks`` (an endless
    generator will do): (status, body, chunks the app asked for)."""
    import asyncio

    asked = 0
    sent: list[dict] = []

    async def receive():
        nonlocal asked
        asked += 1
        return {"type": "http.request", "body": next(chunks), "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "server": ("127.0.0.1", 23750),
             "client": ("127.0.0.1", 40000),
             "headers": [(b"host", b"127.0.0.1:23750"), *headers]}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), asked


def _endless(chunk: bytes):
    while True:
        yield chunk


def test_a_huge_body_is_refused_while_it_streams(client):
    chunk = b" " * 65536
    status, body, asked = _post_stream(client.app, "/NetworkDriver.CreateNetwork",
                                       _endless(chunk))
    assert status == 413
    assert "too large" in body["Err"]
    assert asked <= app_module.MAX_BODY // len(chunk) + 1, "read past the limit"


def test_a_huge_content_length_is_refused_before_reading(client):
    status, body, asked = _post_stream(
        client.app, "/NetworkDriver.CreateNetwork", _endless(b"{"),
        headers=[(b"content-length", str(1 << 30).encode())])
    assert status == 413
    assert str(1 << 30) in body["Err"]
    assert asked == 0


def test_a_body_at_the_limit_is_read(client):
    body = b'{"NetworkID": "nothex"}'.ljust(app_module.MAX_BODY)
    resp = client.post("/NetworkDriver.CreateNetwork", content=body)
    assert resp.status_code == 400
    assert "not a Docker network id" in resp.json()["Err"]


# -- item 10: typed-but-wrong input is a 4xx naming the field, before any Neutron request ---
class CountingNeutron:
    """The in-memory Neutron, counting every request a handler makes through it."""

    def __init__(self) -> None:
        from .fakes import FakeNeutron

        self._fake = FakeNeutron()
        self.requests: list[str] = []

    def __getattr__(self, name):
        found = getattr(self._fake, name)
        if not callable(found) or name == "extensions":
            return found

        def counted(*args, **kwargs):
            self.requests.append(name)
            return found(*args, **kwargs)

        return counted


@pytest.fixture
def counted_driver():
    """(client, neutron, driver): the app over a Neutron that counts its requests."""
    neutron = CountingNeutron()
    driver = Driver(neutron=neutron)  # type: ignore[arg-type]
    plugin = app_module.Plugin(ipam=driver.ipam, networks=driver.networks,
                               endpoints=driver.endpoints, counter=RequestCounter(),
                               call_timeout=10, scope="local")
    client = TestClient(app_module.build_app(plugin), base_url="http://localhost")
    yield client, neutron, driver
    driver.close()


@pytest.fixture
def counted(counted_driver):
    """(client, neutron)"""
    client, neutron, _ = counted_driver
    return client, neutron


NET, EP = "a" * 64, "b" * 64
POOL_ID = "kuryr:10.1.0.0/24|" + "|" + "0123456789ab"


def _network(**pool):
    return {"NetworkID": NET, "IPv4Data": [{"AddressSpace": "l", **pool}]}


def _endpoint(**options):
    return {"NetworkID": NET, "EndpointID": EP, "Options": options}


PORTMAP, EXPOSED = models.PORTMAP_OPTION, models.EXPOSED_PORTS_OPTION
BAD_INPUTS = [
    ("/IpamDriver.RequestAddress", {"PoolID": "garbage"}, "PoolID"),
    ("/IpamDriver.RequestAddress", {"PoolID": "kuryr:garbage"}, "PoolID"),
    ("/IpamDriver.ReleasePool", {"PoolID": "garbage"}, "PoolID"),
    ("/IpamDriver.ReleasePool", {"PoolID": "kuryr:10.1.0.0/24|x|y"}, "PoolID"),
    ("/IpamDriver.ReleaseAddress", {"PoolID": "garbage", "Address": "10.1.0.5"}, "PoolID"),
    ("/IpamDriver.ReleaseAddress", {"PoolID": POOL_ID, "Address": "garbage"}, "Address"),
    ("/IpamDriver.RequestAddress", {"PoolID": POOL_ID, "Address": "10.1.0.300"}, "Address"),
    ("/IpamDriver.RequestAddress", {"PoolID": POOL_ID, "Address": 5}, "Address"),
    ("/IpamDriver.RequestAddress", {"PoolID": POOL_ID, "Address": "10.9.0.5"}, "Address"),
    ("/IpamDriver.RequestPool", {"Pool": "garbage"}, "Pool"),
    ("/IpamDriver.RequestPool", {"Pool": "10.0.0.5/24"}, "Pool"),  # host bits
    ("/IpamDriver.RequestPool", {"Pool": "10.0.0.0/24", "SubPool": "x"}, "SubPool"),
    ("/IpamDriver.RequestPool", {"Pool": "10.0.0.0/24", "SubPool": "10.1.0.0/25"}, "SubPool"),
    ("/IpamDriver.RequestPool", {"Pool": "10.0.0.0/24", "SubPool": "fd00::/64"}, "SubPool"),
    ("/IpamDriver.RequestPool", {"SubPool": "10.0.0.0/25"}, "SubPool"),
    ("/IpamDriver.RequestPool", {"Pool": "fd00::/64", "V6": False}, "V6"),
    ("/IpamDriver.RequestPool", {"Pool": "10.0.0.0/24", "V6": True}, "V6"),
    ("/NetworkDriver.CreateNetwork", _network(Pool="garbage"), "IPv4Data.0.Pool"),
    ("/NetworkDriver.CreateNetwork", _network(Pool=7), "IPv4Data.0.Pool"),
    ("/NetworkDriver.CreateNetwork", _network(Pool="10.1.0.0/24", Gateway="garbage"),
     "IPv4Data.0.Gateway"),
    ("/NetworkDriver.CreateNetwork", _network(Pool="10.1.0.0/24", Gateway="fd00::1/64"),
     "IPv4Data.0.Gateway"),
    ("/NetworkDriver.CreateNetwork",
     _network(Pool="10.1.0.0/24", AuxAddresses={"host": "garbage"}),
     "IPv4Data.0.AuxAddresses.host"),
    ("/NetworkDriver.CreateNetwork", _network(Pool="fd00::/64"), "IPv4Data"),
    ("/NetworkDriver.CreateEndpoint", _endpoint(**{PORTMAP: 80}), PORTMAP),
    ("/NetworkDriver.CreateEndpoint", _endpoint(**{PORTMAP: "80:80"}), PORTMAP),
    ("/NetworkDriver.CreateEndpoint", _endpoint(**{PORTMAP: [80]}), f"{PORTMAP}[0]"),
    ("/NetworkDriver.CreateEndpoint", _endpoint(**{EXPOSED: "80/tcp"}), EXPOSED),
    ("/NetworkDriver.CreateEndpoint", _endpoint(**{EXPOSED: [{"Proto": 6, "Port": True}]}),
     f"{EXPOSED}[0].Port"),
    ("/NetworkDriver.CreateEndpoint", _endpoint(**{EXPOSED: [{"Proto": 6, "Port": 80.5}]}),
     f"{EXPOSED}[0].Port"),
    ("/NetworkDriver.CreateEndpoint", _endpoint(**{PORTMAP: [{"Proto": 6, "Port": 80,
                                                              "HostPort": 80.0}]}),
     f"{PORTMAP}[0].HostPort"),
    ("/NetworkDriver.CreateEndpoint", _endpoint(**{PORTMAP: [{"Proto": True, "Port": 80}]}),
     f"{PORTMAP}[0].Proto"),
    ("/NetworkDriver.CreateEndpoint", _endpoint(**{PORTMAP: [{"Proto": 6, "Port": "80"}]}),
     f"{PORTMAP}[0].Port"),
    ("/NetworkDriver.CreateEndpoint",
     {"NetworkID": NET, "EndpointID": EP, "Interface": {"Address": "garbage"}},
     "Interface.Address"),
    ("/NetworkDriver.ProgramExternalConnectivity", _endpoint(**{PORTMAP: {"a": 1}}), PORTMAP),
]


@pytest.mark.parametrize(("path", "body", "field"), BAD_INPUTS,
                         ids=[f"{p.split('.')[-1]}-{i}" for i, (p, _, _) in
                              enumerate(BAD_INPUTS)])
def test_wrong_input_is_a_4xx_naming_the_field_before_neutron(counted, path, body, field):
    client, neutron = counted
    resp = client.post(path, json=body)
    assert 400 <= resp.status_code < 500, resp.text
    assert field in resp.json()["Err"], resp.json()
    assert "internal error" not in resp.json()["Err"]
    assert neutron.requests == [], f"Neutron was asked {neutron.requests}"


@pytest.mark.parametrize("raw", [b'1e400', b'NaN', b'Infinity', b'-1e400'])
def test_a_host_port_json_cannot_express_is_refused(counted, raw):
    client, neutron = counted
    body = (b'{"NetworkID": "%s", "EndpointID": "%s", "Options": {"%s": '
            b'[{"Proto": 6, "Port": 80, "HostPort": %s}]}}'
            % (NET.encode(), EP.encode(), PORTMAP.encode(), raw))
    resp = client.post("/NetworkDriver.CreateEndpoint", content=body)
    assert resp.status_code == 400, resp.text
    assert f"{PORTMAP}[0].HostPort" in resp.json()["Err"]
    assert neutron.requests == []


def test_docker_real_network_and_ipam_messages_still_pass_validation():
    models.CreateNetworkRequest.model_validate({
        "NetworkID": NET, "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.1.0.0/24",
                                        "Gateway": "10.1.0.1/24",
                                        "AuxAddresses": {"h": "10.1.0.9/24", "k": "10.1.0.8"}}],
        "IPv6Data": [{"Pool": "fd5e:101::/64", "Gateway": "fd5e:101::1/64"}]})
    models.RequestPoolRequest.model_validate({"Pool": "fd5e::/64", "SubPool": "fd5e::/80",
                                              "V6": True})
    models.ReleaseAddressRequest.model_validate({"PoolID": "x", "Address": "10.1.0.2"})
    models.CreateEndpointRequest.model_validate(_endpoint(**{
        PORTMAP: [{"Proto": 17, "IP": "", "Port": 443, "HostIP": "", "HostPort": 18443,
                   "HostPortEnd": 18443}], EXPOSED: [{"Proto": 132, "Port": 9}]}))


# -- item 10: SandboxKey --------------------------------------------------------------------
def _join(key: str) -> dict:
    return {"NetworkID": NET, "EndpointID": EP, "SandboxKey": key}


@pytest.mark.parametrize("key", [
    "relative/netns/x", "/var/run/docker/netns/../../../etc/passwd",
    "/var/run/docker/netns/./x", "/var/run/docker/netns/x\x00"])
def test_a_sandbox_key_that_is_no_plain_path_is_refused(counted, key):
    client, neutron = counted
    resp = client.post("/NetworkDriver.Join", json=_join(key))
    assert resp.status_code == 400
    assert "SandboxKey" in resp.json()["Err"]
    assert neutron.requests == []


@pytest.mark.parametrize(("make", "needle"), [
    (os.mkfifo, "is a FIFO"),
    (lambda p: p.write_text(""), "is a regular file"),
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: p.symlink_to("/etc/hostname"), "not in Docker's netns directory"),
])
def test_a_sandbox_key_that_is_no_namespace_is_refused(counted_driver, tmp_path, make,
                                                       needle):
    client, neutron, driver = counted_driver
    driver.endpoints.netns_dir = tmp_path
    make(tmp_path / "abc")
    resp = client.post("/NetworkDriver.Join", json=_join(str(tmp_path / "abc")))
    assert resp.status_code == 400, resp.text
    assert "SandboxKey" in resp.json()["Err"]
    assert needle in resp.json()["Err"]
    assert neutron.requests == []


def test_a_sandbox_key_outside_the_netns_dir_is_refused(counted):
    client, neutron = counted
    resp = client.post("/NetworkDriver.Join", json=_join("/etc/passwd"))
    assert resp.status_code == 400
    assert "docker_netns_dir" in resp.json()["Err"]
    assert neutron.requests == []


def test_a_namespace_or_a_key_not_bound_yet_is_accepted(counted_driver, tmp_path):
    """Past the check, Join looks the network up (404 here: there is none)."""
    client, _, driver = counted_driver
    endpoints = driver.endpoints
    endpoints.netns_dir = Path("/proc/self/ns")
    assert client.post("/NetworkDriver.Join", json=_join("/proc/self/ns/net")).status_code \
        == 404
    endpoints.netns_dir = tmp_path  # dockerd binds the namespace when the container starts
    assert client.post("/NetworkDriver.Join",
                       json=_join(str(tmp_path / "b7afa45bd6ca"))).status_code == 404


def test_open_netns_does_not_block_on_a_fifo(tmp_path):
    from kuryr.publish.netns import NetnsError, open_netns

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(NetnsError, match="not a network namespace"):
        open_netns(str(fifo))  # would block forever without O_NONBLOCK
    os.close(open_netns("/proc/self/ns/net"))
