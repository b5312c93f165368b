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
