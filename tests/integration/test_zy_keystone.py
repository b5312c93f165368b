"""Keystone mode of the stack: Neutron checks Keystone tokens and Kuryr runs as
the non-admin user ``kuryr`` (roles member + service on project service).

One test, because switching the stack's auth mode restarts Neutron and Kuryr:
`kuryr-aio up --keystone` (with Kuryr at debug level), a Kuryr network with two
busybox containers that ping each other, a published port reached on the host
and through the floating IP's port forwarding from the outside namespace (the
path that needs the policy override), Kuryr's roles checked with Keystone, no
leftovers, no password or token in any log, then `kuryr-aio up --noauth`.
Runs after the other files (name) and before test_zz_lifecycle.py.
"""

from __future__ import annotations

import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from kuryr.aio import keystone
from kuryr.aio.keystone import AUTH_URL
from kuryr.aio.layout import OUTSIDE_NETNS, PUBLIC_NETWORK, Layout
from kuryr.aio.plugin import KuryrPlugin
from kuryr.neutron import marks
from kuryr.neutron.client import connect_endpoint

from . import helpers
from .test_ports import HTTPD, fetch, http_get_from_namespace

HOST_PORT = 18191
SUBNET = "10.91.0.0/24"
DEBUG_OVERRIDE = "zy-keystone-debug.conf"
SECRETS = (keystone.KURYR_PASSWORD, keystone.ADMIN_PASSWORD, keystone.NEUTRON_PASSWORD)
# Fernet tokens (and receipts) are urlsafe base64 of a version byte 0x80 + timestamp.
FERNET = re.compile(r"gAAAAA[A-Za-z0-9_\-=]*")
# keystoneauth logs X-Auth-Token as "{SHA256}<hash>"; anything else is a raw token.
RAW_TOKEN_HEADER = re.compile(r"X-Auth-Token: (?!\{SHA256\}[0-9a-f]{64})\S+", re.IGNORECASE)


def aio(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([helpers.aio_command(), *args], capture_output=True, text=True,
                          timeout=900, check=False)


def log_sizes(layout: Layout) -> dict[Path, int]:
    return {p: p.stat().st_size for p in layout.logs.rglob("*") if p.is_file()}


def written_since(layout: Layout, sizes: dict[Path, int]) -> dict[Path, str]:
    """What each log file under the stack's log directory got since ``sizes``
    (all of a file that is new or was truncated)."""
    texts = {}
    for path in sorted(p for p in layout.logs.rglob("*") if p.is_file()):
        with path.open("rb") as fh:
            start = sizes.get(path, 0)
            if path.stat().st_size < start:
                start = 0
            fh.seek(start)
            texts[path] = fh.read().decode(errors="replace")
    return texts


def leaks_in(texts: dict[Path, str]) -> list[str]:
    found = []
    for path, text in texts.items():
        found += [f"{path.name}: password {secret!r}" for secret in SECRETS if secret in text]
        found += [f"{path.name}: Fernet token {m.group()[:16]}..." for m in FERNET.finditer(text)]
        found += [f"{path.name}: {m.group()[:40]}..." for m in RAW_TOKEN_HEADER.finditer(text)]
    return found


def neutron_status_without_token(layout: Layout) -> int:
    try:
        url = f"{layout.neutron_url}/v2.0/networks?limit=1"  # http://127.0.0.1:PORT
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def kuryr_role_assignments() -> tuple[set[tuple[str, str]], set[str], set[str]]:
    """As Keystone's admin: Kuryr's direct role assignments (role, scope), its
    effective role names (implied roles included), and its token's roles."""
    admin = keystone.admin_session()
    (user,) = admin.get(f"{AUTH_URL}/users?name={keystone.KURYR_USER}").json()["users"]
    direct = admin.get(f"{AUTH_URL}/role_assignments?user.id={user['id']}"
                       "&include_names=true").json()["role_assignments"]
    effective = admin.get(f"{AUTH_URL}/role_assignments?user.id={user['id']}"
                          "&include_names=true&effective=true").json()["role_assignments"]

    def scope(assignment: dict) -> str:
        where = assignment["scope"]
        if "project" in where:
            return f"project:{where['project']['name']}"
        return "system" if "system" in where else f"domain:{where['domain']['name']}"

    kuryr = keystone.password_session(keystone.KURYR_USER, keystone.KURYR_PASSWORD,
                                      keystone.KURYR_PROJECT)
    token_roles = set(kuryr.auth.get_access(kuryr).role_names)
    return ({(a["role"]["name"], scope(a)) for a in direct},
            {a["role"]["name"] for a in effective}, token_roles)


def exercise_kuryr(stack: Layout, docker: helpers.Docker, admin, ovs, unique: str) -> None:
    """Containers on a Kuryr network while Kuryr authenticates as ``kuryr``."""
    service_project = keystone.service_project_file(stack).read_text().strip()
    before = helpers.kuryr_leftovers(admin, ovs)
    net, web, peer = f"kz-{unique}", f"kzw-{unique}", f"kzp-{unique}"
    docker.run("network", "create", "-d", "kuryr", "--ipam-driver", "kuryr",
               "--subnet", SUBNET, net)
    try:
        docker.run("run", "-d", "--name", web, "--net", net, "-e", "PORTS=80",
                   # every address: only such ports are forwarded on the floating IP
                   "-p", f"{HOST_PORT}:80", "busybox", *HTTPD)
        docker.run("run", "-d", "--name", peer, "--net", net, "busybox", "sleep", "600")
        web_ip, peer_ip = docker.ip_of(web, net), docker.ip_of(peer, net)
        for src, dst in ((web, peer_ip), (peer, web_ip)):
            assert helpers.wait_until(lambda s=src, d=dst: docker.run(
                "exec", s, "ping", "-c", "1", "-W", "2", d, check=False).returncode == 0, 20), \
                f"{src} cannot ping {dst}"

        # Everything Kuryr made is in its own project: it used its own token.
        tags = ",".join(marks.network_tags(docker.network_id(net)))
        (network,) = admin.api.networks(tags=tags)
        assert network.project_id == service_project
        (port,) = admin.api.ports(fixed_ips=[f"ip_address={web_ip}"])
        assert port.project_id == service_project
        assert port.binding_host_id == stack.host
        assert port.binding_vif_type == "ovs"

        hostname = docker.out("inspect", "-f", "{{.Config.Hostname}}", web)
        assert helpers.wait_until(lambda: fetch(HOST_PORT), 15) == f"hello-{hostname}"
        # The port forwarding: what needs neutron_policy_override() for the service role.
        fips = [f for f in admin.api.ips(project_id=service_project)
                if (f.description or "").startswith("kuryr-publish:")]
        assert len(fips) == 1, fips
        forwardings = admin.api.port_forwardings(fips[0].id, internal_port_id=port.id)
        assert [(f.external_port, f.internal_port) for f in forwardings] == [(HOST_PORT, 80)]
        got = helpers.wait_until(lambda: http_get_from_namespace(
            OUTSIDE_NETNS, fips[0].floating_ip_address, HOST_PORT), 20)
        assert got == f"hello-{hostname}"
    finally:
        docker.run("rm", "-f", web, peer, check=False)
        docker.run("network", "rm", net, check=False)

    def back_to_before():
        now = helpers.kuryr_leftovers(admin, ovs)
        return now if now == before else None

    after = helpers.wait_until(back_to_before, 15)
    assert after == before, f"leaked: {helpers.kuryr_leftovers(admin, ovs)} vs {before}"
    assert [n.name for n in admin.api.networks(project_id=service_project)] == []


def test_kuryr_as_a_non_admin_keystone_user(stack, docker, ovs, unique):
    plugin = KuryrPlugin(stack)
    override = plugin.override_dir / DEBUG_OVERRIDE
    sizes = log_sizes(stack)
    started = time.monotonic()
    try:
        plugin.override_dir.mkdir(exist_ok=True)
        override.write_text("# test_zy_keystone.py: Kuryr at debug level, to prove that\n"
                            "# even its debug logs carry no password or token.\n"
                            "[DEFAULT]\ndebug = true\n")
        t0 = time.monotonic()
        switched = aio("up", "--keystone")
        print(f"\n`kuryr-aio up --keystone`: {time.monotonic() - t0:.1f} s")
        assert switched.returncode == 0, switched.stdout + switched.stderr
        assert stack.auth_mode == "keystone"
        assert neutron_status_without_token(stack) == 401
        status = aio("status")
        assert status.returncode == 0, status.stdout
        assert "OK    keystone" in status.stdout, status.stdout

        direct, effective, token_roles = kuryr_role_assignments()
        assert direct == {("member", "project:service"), ("service", "project:service")}
        assert "admin" not in effective
        assert "admin" not in token_roles
        assert token_roles == {"member", "reader", "service"}  # reader: implied by member

        admin = keystone.admin_neutron()
        try:
            exercise_kuryr(stack, docker, admin, ovs, unique)
        finally:
            admin.close()
    finally:
        override.unlink(missing_ok=True)
        t0 = time.monotonic()
        back = aio("up", "--noauth")
        print(f"`kuryr-aio up --noauth`: {time.monotonic() - t0:.1f} s")
    assert back.returncode == 0, back.stdout + back.stderr
    assert stack.auth_mode == "noauth"
    assert neutron_status_without_token(stack) == 200
    status = aio("status")
    assert status.returncode == 0, status.stdout
    assert "keystone" not in status.stdout.replace("auth mode", ""), status.stdout
    neutron = connect_endpoint(stack.neutron_url)
    try:
        assert neutron.api.find_network(PUBLIC_NETWORK) is not None
        # The switch deleted what the keystone-mode Kuryr kept in its project.
        service_project = keystone.service_project_file(stack).read_text().strip()
        kept = [*neutron.api.subnet_pools(project_id=service_project),
                *neutron.api.routers(project_id=service_project),
                *neutron.api.ips(project_id=service_project)]
        assert kept == [], [r.name or r.id for r in kept]
    finally:
        neutron.close()

    texts = written_since(stack, sizes)
    kuryr_log = texts.get(stack.log("kuryr"), "")
    assert " DEBUG " in kuryr_log, "Kuryr did not log at debug level: the grep proves less"
    print(f"log grep: {len(texts)} files, {sum(map(len, texts.values()))} characters, "
          f"{kuryr_log.count(' DEBUG ')} Kuryr debug lines, "
          f"{kuryr_log.count('X-Auth-Token: {SHA256}')} hashed token headers; "
          f"test took {time.monotonic() - started:.1f} s")
    assert leaks_in(texts) == []
