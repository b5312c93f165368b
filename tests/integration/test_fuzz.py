"""Fuzzing the running plugin's API (the real daemon, over Docker's unix socket):
schemathesis from its own OpenAPI schema, and hypothesis for what a schema cannot
describe (malformed JSON, wrong types, huge bodies, unknown ids).  Every answer
must be 200 with a body that fits the schema, or a clear {"Err": ...} that is not
an internal error; nothing may be left behind; the daemon must still answer.
KURYR_FUZZ_EXAMPLES sets the examples per operation (default 40)."""

from __future__ import annotations

import json
import os
from unittest import mock

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kuryr.aio.plugin import PLUGIN_SOCKET
from kuryr.libnetwork.app import Plugin, build_app
from kuryr.neutron.client import RequestCounter

from . import helpers

EXAMPLES = int(os.environ.get("KURYR_FUZZ_EXAMPLES", "40"))
# The schema only: the handlers are never called here (the fuzzing goes to the
# running Kuryr's socket), so stand-ins that accept any attribute will do.
_SCHEMA_ONLY = Plugin(ipam=mock.Mock(), networks=mock.Mock(), endpoints=mock.Mock(),
                      counter=RequestCounter(), call_timeout=1, scope="local")
SCHEMA = schemathesis.openapi.from_dict(build_app(_SCHEMA_ONLY).openapi())
TRIED = {"schemathesis": 0, "hypothesis": 0}
FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                         suppress_health_check=list(HealthCheck), database=None)
METHODS = sorted(route for route in SCHEMA.raw_schema["paths"])
DOCKER_ID = st.text("0123456789abcdef", min_size=64, max_size=64)


@pytest.fixture(scope="module")
def plugin(stack):
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(PLUGIN_SOCKET)),
                      base_url="http://localhost", timeout=90) as client:
        yield client


@pytest.fixture(scope="module", autouse=True)
def nothing_left_and_still_answering(stack, neutron, ovs, plugin):
    networks = {n.id for n in neutron.api.networks()}
    before = helpers.kuryr_leftovers(neutron, ovs)
    yield
    assert plugin.post("/Plugin.Activate").status_code == 200, "the daemon stopped answering"
    assert {n.id for n in neutron.api.networks()} == networks, "fuzzing left a network"
    assert helpers.wait_until(lambda: helpers.kuryr_leftovers(neutron, ovs) == before, 20), \
        f"fuzzing left {helpers.kuryr_leftovers(neutron, ovs)} (before: {before})"
    print(f"fuzz inputs tried: {TRIED}")


def assert_clear_answer(response: httpx.Response) -> None:
    assert response.status_code != 500, f"internal error: {response.text}"
    if response.status_code == 200:
        assert isinstance(response.json(), dict)
        return
    body = response.json()
    assert set(body) == {"Err"}, body
    assert isinstance(body["Err"], str), body
    assert body["Err"].strip(), body


@SCHEMA.parametrize()
@FUZZ_SETTINGS
def test_schema_fuzz(case, plugin):
    TRIED["schemathesis"] += 1
    kwargs = case.as_transport_kwargs(base_url="http://localhost")
    kwargs.pop("cookies", None)  # the plugin API has none
    if isinstance(kwargs.get("data"), bytes | str):
        kwargs["content"] = kwargs.pop("data")
    response = plugin.request(**kwargs)
    assert_clear_answer(response)
    if response.status_code == 200:
        case.validate_response(response, checks=[
            schemathesis.checks.response_schema_conformance])


BODIES = st.one_of(
    st.binary(max_size=256),  # not JSON at all
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                 lambda inner: st.lists(inner, max_size=4)
                 | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                 max_leaves=12).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({  # the right keys with ids that exist nowhere, or wrong types
        "NetworkID": DOCKER_ID | st.integers() | st.text(max_size=70),
        "EndpointID": DOCKER_ID | st.none() | st.text(max_size=70),
        "PoolID": st.text(max_size=40) | st.just("kuryr:10.250.0.0/24"),
        "Address": st.text(max_size=40) | st.just("10.250.0.9"),
        "SandboxKey": st.text(max_size=40),
        "Options": st.dictionaries(st.text(max_size=30), st.text(max_size=30), max_size=3)
        | st.integers(),
    }).map(lambda v: json.dumps(v).encode()),
)


@given(method=st.sampled_from(METHODS), body=BODIES)
@settings(FUZZ_SETTINGS, max_examples=EXAMPLES * 10)
def test_hypothesis_bodies(plugin, method, body):
    TRIED["hypothesis"] += 1
    assert_clear_answer(plugin.post(method, content=body))


@pytest.mark.parametrize(("path", "body", "status"), [
    ("/NetworkDriver.CreateNetwork", b"x" * (2 << 20), 413),  # 2 MiB
    ("/NetworkDriver.Nonsense", b"{}", 404),
    ("/NetworkDriver.DeleteEndpoint", json.dumps(
        {"NetworkID": "f" * 64, "EndpointID": "e" * 64}).encode(), None),
    ("/NetworkDriver.Join", json.dumps(
        {"NetworkID": "f" * 64, "EndpointID": "e" * 64, "SandboxKey": "/nope"}).encode(), 400),
    ("/IpamDriver.RequestAddress", json.dumps({"PoolID": "kuryr:not-a-cidr"}).encode(), 400),
])
def test_edge_inputs(plugin, path, body, status):
    response = plugin.post(path, content=body)
    assert_clear_answer(response)
    if status is not None:
        assert response.status_code == status, response.text


# -- typed-but-wrong input: a 4xx naming the field, whatever the handler (item 10) ---------
NET, EP = "f" * 64, "e" * 64
POOL_ID = "kuryr:10.250.0.0/24||0123456789ab"
PORTMAP, EXPOSED = "com.docker.network.portmap", "com.docker.network.endpoint.exposedports"


def _pool(**fields) -> dict:
    return {"NetworkID": NET, "IPv4Data": [{"AddressSpace": "LocalDefault", **fields}]}


def _ports(**options) -> dict:
    return {"NetworkID": NET, "EndpointID": EP, "Options": options}


WRONG_INPUTS = [
    ("/IpamDriver.RequestAddress", {"PoolID": "garbage"}, "PoolID"),
    ("/IpamDriver.ReleasePool", {"PoolID": "garbage"}, "PoolID"),
    ("/IpamDriver.ReleaseAddress", {"PoolID": POOL_ID, "Address": "garbage"}, "Address"),
    ("/IpamDriver.RequestAddress", {"PoolID": POOL_ID, "Address": "10.250.0.300"}, "Address"),
    ("/IpamDriver.RequestPool", {"Pool": "garbage"}, "Pool"),
    ("/IpamDriver.RequestPool", {"Pool": "10.250.0.0/24", "SubPool": "fd00::/64"}, "SubPool"),
    ("/IpamDriver.RequestPool", {"Pool": "10.250.0.0/24", "SubPool": "10.9.0.0/25"},
     "SubPool"),
    ("/IpamDriver.RequestPool", {"Pool": "fd00::/64", "V6": False}, "V6"),
    ("/NetworkDriver.CreateNetwork", _pool(Pool="garbage"), "IPv4Data.0.Pool"),
    ("/NetworkDriver.CreateNetwork", _pool(Pool="10.250.0.0/24", Gateway="garbage"),
     "IPv4Data.0.Gateway"),
    ("/NetworkDriver.CreateNetwork", _pool(Pool="10.250.0.0/24", AuxAddresses={"h": "x"}),
     "IPv4Data.0.AuxAddresses.h"),
    ("/NetworkDriver.CreateEndpoint", _ports(**{PORTMAP: 80}), PORTMAP),
    ("/NetworkDriver.CreateEndpoint", _ports(**{EXPOSED: "80/tcp"}), EXPOSED),
    ("/NetworkDriver.CreateEndpoint", _ports(**{PORTMAP: [{"Proto": 6, "Port": True}]}),
     f"{PORTMAP}[0].Port"),
    ("/NetworkDriver.CreateEndpoint", _ports(**{PORTMAP: [{"Proto": 6, "Port": 80.5}]}),
     f"{PORTMAP}[0].Port"),
    ("/NetworkDriver.ProgramExternalConnectivity", _ports(**{PORTMAP: "80"}), PORTMAP),
    ("/NetworkDriver.Join", {"NetworkID": NET, "EndpointID": EP,
                             "SandboxKey": "/var/run/docker/netns/../../../etc/passwd"},
     "SandboxKey"),
    ("/NetworkDriver.Join", {"NetworkID": NET, "EndpointID": EP, "SandboxKey": "/etc/passwd"},
     "SandboxKey"),
]


@pytest.mark.parametrize(("path", "body", "field"), WRONG_INPUTS)
def test_wrong_input_names_the_field(plugin, path, body, field):
    response = plugin.post(path, json=body)
    assert_clear_answer(response)
    assert 400 <= response.status_code < 500, response.text
    assert field in response.json()["Err"], response.text


def test_a_host_port_of_1e400_is_refused(plugin):
    body = (f'{{"NetworkID": "{NET}", "EndpointID": "{EP}", "Options": {{"{PORTMAP}": '
            '[{"Proto": 6, "Port": 80, "HostPort": 1e400}]}}').encode()
    response = plugin.post("/NetworkDriver.CreateEndpoint", content=body)
    assert response.status_code == 400, response.text
    assert f"{PORTMAP}[0].HostPort" in response.json()["Err"]


def test_a_streamed_body_past_the_limit_is_413(plugin):
    def endless():
        yield b'{"NetworkID": "'
        for _ in range(64):  # 4 MiB, sent chunked: no Content-Length to refuse early
            yield b"f" * 65536

    response = plugin.post("/NetworkDriver.CreateNetwork", content=endless())
    assert response.status_code == 413, response.text
    assert "too large" in response.json()["Err"]


# -- who may call (item 9) ----------------------------------------------------------------
@pytest.mark.parametrize(("headers", "needle"), [
    ({"Host": "evil.example"}, "Host"),
    ({"Origin": "http://evil.example"}, "Origin"),
    ({"Content-Type": "text/plain"}, "Content-Type"),
])
def test_calls_a_browser_could_make_are_403(plugin, headers, needle):
    response = plugin.post("/IpamDriver.RequestPool", content=b"{}", headers=headers)
    assert response.status_code == 403, response.text
    assert needle in response.json()["Err"]
