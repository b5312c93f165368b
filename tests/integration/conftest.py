"""Integration fixtures: the real all-in-one stack, started through `kuryr-aio up`."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from kuryr.aio import kubernetes
from kuryr.aio.layout import Layout
from kuryr.binding.ovs import OVS
from kuryr.neutron.client import connect_endpoint

from . import helpers

KURYR = ("-d", "kuryr", "--ipam-driver", "kuryr")


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def stack() -> Layout:
    if os.geteuid() != 0:
        pytest.fail("integration tests need root (they start Neutron, OVS and dockerd)")
    # The tests use a no-auth Neutron: --noauth also ends a keystone mode left
    # by an interrupted test_zy_keystone.py.
    proc = subprocess.run([helpers.aio_command(), "up", "--noauth"], text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f"`kuryr-aio up` failed with exit code {proc.returncode}")
    return Layout.default()


@pytest.fixture(scope="session")
def docker(stack):
    return helpers.Docker(stack.docker_host)


@pytest.fixture
def no_leaks(neutron, ovs):
    """Fails the test when it leaves a Kuryr port, OVS port or veth behind."""
    before = helpers.kuryr_leftovers(neutron, ovs)
    yield

    def back_to_before():
        now = helpers.kuryr_leftovers(neutron, ovs)
        return now if now == before else None

    after = helpers.wait_until(back_to_before, 10)
    assert after == before, f"leaked: {helpers.kuryr_leftovers(neutron, ovs)} vs {before}"


@pytest.fixture
def make_network(stack, docker, cleanup, unique):
    counter = iter(range(100))

    def make(*args: str, name: str | None = None) -> str:
        name = name or f"kn-{unique}-{next(counter)}"
        docker.run("network", "create", *KURYR, *args, name)
        cleanup(lambda: helpers.remove_network(docker, stack, name))
        return name

    return make


@pytest.fixture
def run_container(docker, cleanup, unique):
    counter = iter(range(100))

    def run(network: str, *args: str, cmd: tuple[str, ...] = ("sleep", "600")) -> str:
        name = f"kc-{unique}-{next(counter)}"
        docker.run("run", "-d", "--name", name, "--net", network, *args, "busybox", *cmd)
        cleanup(lambda: docker.run("rm", "-f", name, check=False))
        return name

    return run


@pytest.fixture(scope="session")
def neutron(stack):
    client = connect_endpoint(stack.neutron_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def ovs(stack):
    return OVS()


@pytest.fixture
def unique():
    return uuid.uuid4().hex[:8]


@pytest.fixture
def cleanup():
    """Callbacks run at teardown in reverse order, even when the test failed."""
    callbacks = []
    yield callbacks.append
    errors = []
    for callback in reversed(callbacks):
        try:
            callback()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def tenant_net(neutron, cleanup, unique):
    """A Neutron network with one IPv4 subnet, deleted after the test."""
    net = neutron.api.create_network(name=f"test-{unique}")
    cleanup(lambda: helpers.delete_network(neutron, net.id))
    subnet = neutron.api.create_subnet(network_id=net.id, ip_version=4, cidr="10.99.0.0/24",
                                       name=f"test-{unique}", is_dhcp_enabled=False)
    return net, subnet


@pytest.fixture(scope="session")
def cluster(stack) -> Iterator[Layout]:
    """The stack with its Kubernetes cluster (built once: ~13 min on 2 cores),
    held under the lock kuryr-bench --k8s takes too (it switches the CNI)."""
    proc = subprocess.run([helpers.aio_command(), "up", "--k8s"], text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f"`kuryr-aio up --k8s` failed with exit code {proc.returncode}")
    with (stack.run / "k8s.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield stack


@pytest.fixture
def namespace(cluster, unique):
    """Namespaces of the test's own, deleted (with their pods) at the end."""
    made = []

    def make(labels: dict[str, str] | None = None) -> str:
        name = f"kt-{unique}-{len(made)}"
        doc = {"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": name, "labels": labels or {}}}
        kubernetes.kubectl(cluster, "apply", "-f", "-", input_text=json.dumps(doc))
        made.append(name)
        return name

    yield make
    for name in made:
        kubernetes.kubectl(cluster, "delete", "namespace", name, "--wait=true", timeout=180)
