"""A real OpenStack Keystone for the all-in-one stack, and what Neutron and
Kuryr need to authenticate through it (see docs/keystone.md).

Keystone runs from its own PyPI venv under gunicorn on 127.0.0.1:5000, with
its database in the stack's MariaDB and its fernet/credential keys under the
stack's state directory.  After ``keystone-manage bootstrap`` (admin, the
default roles, RegionOne, the identity endpoints) it gets a ``network``
service for Neutron, a ``service`` project, a non-admin ``kuryr`` user and a
``neutron`` user for keystonemiddleware.  With `up --k8s` Octavia adds its
``load-balancer`` service and ``octavia`` user (:func:`ensure_octavia_accounts`).

The stack runs it in keystone mode only (`kuryr-aio up --keystone`); then
neutron.conf gets :func:`neutron_auth_settings` and the policy file
:func:`neutron_policy_override`, and kuryr.conf :func:`kuryr_neutron_section`.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, cast

from keystoneauth1 import exceptions as ks_exceptions
from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3
from openstack import connection as os_connection
from openstack import exceptions as os_exceptions

from kuryr.aio import procs, venvs
from kuryr.aio.layout import KEYSTONE_PORT, KEYSTONE_VERSION, Layout
from kuryr.aio.mariadb import MariaDB, template
from kuryr.aio.passwords import db_password
from kuryr.neutron.client import Neutron, RequestCounter

if TYPE_CHECKING:
    from openstack.identity.v3._proxy import Proxy as IdentityV3
    from openstack.identity.v3.project import Project

AUTH_URL = f"http://127.0.0.1:{KEYSTONE_PORT}/v3"
REGION = "RegionOne"
DOMAIN = "Default"  # bootstrap's domain: id "default", name "Default"

# Keystone's own users have fixed passwords, in the clear on purpose: Keystone
# listens on 127.0.0.1 only and exists for tests (docs/usage.md says what that
# means on a shared machine).  Its database user's password is per install.
ADMIN_USER = "admin"
ADMIN_PASSWORD = "kuryr-aio-admin"  # noqa: S105
ADMIN_PROJECT = "admin"

SERVICE_PROJECT = "service"
KURYR_USER = "kuryr"
KURYR_PASSWORD = "kuryr-aio-kuryr"  # noqa: S105
KURYR_PROJECT = SERVICE_PROJECT
# "member" owns Kuryr's networks, subnets, subnetpools, security groups,
# routers, floating IPs and tags; "service" is what Neutron's defaults ask for
# binding:host_id, reading binding:vif_type/vif_details, changing a port's MAC
# and deleting a compute:* port. Neither is admin. Neutron also needs
# neutron_policy_override(); docs/keystone.md has the rule-by-rule account.
KURYR_ROLES = ("member", "service")

NEUTRON_USER = "neutron"
NEUTRON_PASSWORD = "kuryr-aio-neutron"  # noqa: S105
# keystonemiddleware validates users' tokens: Keystone's identity:validate_token
# lets "role:service" do that, so Neutron's user needs no admin either.
NEUTRON_ROLES = ("service",)

NETWORK_SERVICE = "neutron"
ENDPOINT_INTERFACES = ("public", "internal", "admin")

OCTAVIA_USER = "octavia"
OCTAVIA_PASSWORD = "kuryr-aio-octavia"  # noqa: S105
# Like Neutron's user: "service" lets keystonemiddleware validate Kuryr's
# tokens, and is what Neutron's defaults ask for the ports Octavia's OVN
# provider makes and reads in its callers' projects (create_port,
# get_subnet, ... all allow rule:service_api).  No admin.
OCTAVIA_ROLES = ("service",)
LOAD_BALANCER_SERVICE = "octavia"
# Octavia 19's default policies (oslo.policy enforces the new defaults) let a
# project's "member" create, change and delete its load balancers
# (load-balancer:write = role:member and project_id:%(project_id)s).  The old
# load-balancer_member role is only in the deprecated rules, which are not
# evaluated any more.  Kuryr's user holds it already (KURYR_ROLES).
KURYR_LOAD_BALANCER_ROLE = "member"

DB_NAME = "keystone"
DB_USER = "keystone"
KEYSTONE_PACKAGES = (f"keystone=={KEYSTONE_VERSION}", "gunicorn", "pymysql")
WSGI_MODULE = "kuryr_aio_keystone_wsgi"


# -- what the rest of the stack configures ---------------------------------
def neutron_auth_settings(auth_url: str = AUTH_URL) -> dict[str, dict[str, str]]:
    """neutron.conf options (section -> option -> value) that make Neutron
    check Keystone tokens instead of running ``auth_strategy = noauth``."""
    return {
        "DEFAULT": {"auth_strategy": "keystone"},
        "keystone_authtoken": {
            "www_authenticate_uri": auth_url,
            "auth_url": auth_url,
            "auth_type": "password",
            "username": NEUTRON_USER,
            "password": NEUTRON_PASSWORD,
            "user_domain_name": DOMAIN,
            "project_name": SERVICE_PROJECT,
            "project_domain_name": DOMAIN,
            "region_name": REGION,
            # memcached_servers stays unset: no memcached on the stack, and
            # keystonemiddleware then caches tokens inside the neutron process.
        },
    }


def octavia_auth_settings(auth_url: str = AUTH_URL) -> dict[str, dict[str, str]]:
    """octavia.conf options (section -> option -> value) of keystone mode:
    Octavia checks Keystone tokens (``[api_settings] auth_strategy``, taken
    out by the caller) and calls Neutron as its own user (``[service_auth]``)."""
    user = {
        "auth_url": auth_url,
        "auth_type": "password",
        "username": OCTAVIA_USER,
        "password": OCTAVIA_PASSWORD,
        "user_domain_name": DOMAIN,
        "project_name": SERVICE_PROJECT,
        "project_domain_name": DOMAIN,
        "region_name": REGION,
    }
    return {
        "api_settings": {"auth_strategy": "keystone"},
        # No memcached_servers: tokens are cached inside the API process.
        "keystone_authtoken": {"www_authenticate_uri": auth_url, **user},
        "service_auth": dict(user),
    }


def kuryr_auth_options(auth_url: str = AUTH_URL) -> dict[str, str]:
    """kuryr.conf ``[neutron]`` keystoneauth options for the ``kuryr`` user."""
    return {
        "auth_type": "password",
        "auth_url": auth_url,
        "username": KURYR_USER,
        "password": KURYR_PASSWORD,
        "user_domain_name": DOMAIN,
        "project_name": KURYR_PROJECT,
        "project_domain_name": DOMAIN,
        # Neutron's URL comes from the catalog (the "network" service).
        "region_name": REGION,
    }


def ini_text(sections: Mapping[str, Mapping[str, str]]) -> str:
    """Render ``{section: {option: value}}`` as INI text (sections in order)."""
    blocks = []
    for section, options in sections.items():
        lines = [f"[{section}]"] + [f"{key} = {value}" for key, value in options.items()]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def neutron_auth_snippet(auth_url: str = AUTH_URL) -> str:
    """:func:`neutron_auth_settings` as neutron.conf text."""
    return ini_text(neutron_auth_settings(auth_url))


def kuryr_neutron_section(extra: Mapping[str, str] | None = None,
                          auth_url: str = AUTH_URL) -> str:
    """kuryr.conf's ``[neutron]`` section with password auth; ``extra`` adds
    Kuryr's own options of that section (e.g. ``vif_plugging_timeout``)."""
    return ini_text({"neutron": {**kuryr_auth_options(auth_url), **(extra or {})}})


def neutron_policy_rules(shared_networks: bool = False) -> dict[str, str]:
    """Neutron policy rules (name -> check string) to override for Kuryr.

    With :data:`KURYR_ROLES` Neutron's defaults allow everything Kuryr does
    but one thing: creating a port forwarding.  Its default,
    ``(rule:admin_only) or (role:member and rule:ext_parent_owner)``, cannot
    be evaluated for a caller holding the service role: Neutron's API skips
    looking up the parent floating IP for service-role callers (it assumes
    ``rule:service_api`` lets them through, which this rule lacks), so
    ``ext_parent_owner`` fails and the request ends in HTTP 500.  Putting
    ``rule:service_api`` before the owner check lets the service role
    through without that lookup; for everyone else the rule is unchanged.

    ``shared_networks`` is for ``-o neutron.net.shared=true``: sharing a
    network is admin-only by default; this lets the service role do it too.
    """
    rules = {
        "create_floatingip_port_forwarding":
            "(rule:admin_only) or (rule:service_api) or (role:member and rule:ext_parent_owner)",
    }
    if shared_networks:
        rules["create_network:shared"] = "(rule:admin_only) or (rule:service_api)"
    return rules


def neutron_policy_override(shared_networks: bool = False) -> str:
    """:func:`neutron_policy_rules` as a policy.yaml for Neutron's
    ``[oslo_policy] policy_file``; rules not in it keep their defaults."""
    lines = ["# Written by kuryr-aio: what Kuryr's roles (member, service) need beyond",
             "# Neutron's default policies; see docs/keystone.md."]
    lines += [f'"{name}": "{check}"' for name, check in
              neutron_policy_rules(shared_networks).items()]
    return "\n".join(lines) + "\n"


def password_session(username: str, password: str, project: str,
                     auth_url: str = AUTH_URL) -> ks_session.Session:
    """A keystoneauth session for a user of the Default domain, project-scoped."""
    auth = v3.Password(auth_url=auth_url, username=username, password=password,
                       user_domain_name=DOMAIN, project_name=project,
                       project_domain_name=DOMAIN)
    return ks_session.Session(auth=auth)


def admin_session(auth_url: str = AUTH_URL) -> ks_session.Session:
    """The bootstrap admin (role admin in project admin): for what only an
    admin may do, like creating the stack's external network."""
    return password_session(ADMIN_USER, ADMIN_PASSWORD, ADMIN_PROJECT, auth_url)


def admin_neutron(auth_url: str = AUTH_URL) -> Neutron:
    """A Kuryr Neutron client acting as the bootstrap admin; Neutron's URL
    comes from Keystone's catalog."""
    conn = os_connection.Connection(session=admin_session(auth_url), region_name=REGION,
                                    network_api_version="2")
    return Neutron(conn, RequestCounter())


def admin_env(auth_url: str = AUTH_URL) -> dict[str, str]:
    """OS_* variables for the admin, as openstack clients read them."""
    return {
        "OS_AUTH_TYPE": "password",
        "OS_AUTH_URL": auth_url,
        "OS_IDENTITY_API_VERSION": "3",
        "OS_USERNAME": ADMIN_USER,
        "OS_PASSWORD": ADMIN_PASSWORD,
        "OS_PROJECT_NAME": ADMIN_PROJECT,
        "OS_USER_DOMAIN_NAME": DOMAIN,
        "OS_PROJECT_DOMAIN_NAME": DOMAIN,
        "OS_REGION_NAME": REGION,
    }


def keystone_conf(layout: Layout) -> str:
    """keystone.conf for this layout."""
    return template("keystone.conf.tmpl").format(
        db_url=(f"mysql+pymysql://{DB_USER}:{db_password(layout, DB_USER)}@localhost/{DB_NAME}"
                f"?unix_socket={layout.mysql_sock}&charset=utf8"),
        fernet_keys=layout.keystone_dir / "fernet-keys",
        credential_keys=layout.keystone_dir / "credential-keys",
    )


def service_project_file(layout: Layout) -> Path:
    """Where the id of project ``service`` (Kuryr's project) is kept."""
    return layout.keystone_dir / "service-project-id"


def _ensure_service(ident: IdentityV3, name: str, service_type: str, description: str,
                    url: str) -> None:
    """Service ``name`` with its public, internal and admin endpoints at ``url``
    (endpoints at another URL are replaced)."""
    service = ident.find_service(name, ignore_missing=True) or \
        ident.create_service(name=name, type=service_type, description=description)
    have = {e.interface: e for e in ident.endpoints(service_id=service.id)}
    for interface in ENDPOINT_INTERFACES:
        endpoint = have.get(interface)
        if endpoint is not None and endpoint.url != url:
            ident.delete_endpoint(endpoint)
            endpoint = None
        if endpoint is None:
            ident.create_endpoint(service_id=service.id, interface=interface,
                                  url=url, region_id=REGION)


def _ensure_user(ident: IdentityV3, domain_id: str, project: Project, username: str,
                 password: str, roles: tuple[str, ...]) -> None:
    """User ``username`` with ``password`` and ``roles`` on ``project``."""
    user = ident.find_user(username, domain_id=domain_id, ignore_missing=True)
    if user is None:
        user = ident.create_user(name=username, password=password, domain_id=domain_id,
                                 default_project_id=project.id)
    elif not _password_works(username, password):
        # Only when needed: a password change revokes the user's tokens,
        # which would make a running Kuryr re-authenticate.
        ident.update_user(user, password=password)
    for role_name in roles:
        role = ident.find_role(role_name, ignore_missing=False)
        if not ident.validate_user_has_project_role(project, user, role):
            ident.assign_project_role_to_user(project, user, role)


def _password_works(username: str, password: str) -> bool:
    # Unscoped: the answer must not depend on role assignments (yet) made.
    auth = v3.Password(auth_url=AUTH_URL, username=username, password=password,
                       user_domain_name=DOMAIN)
    try:
        ks_session.Session(auth=auth).get_token()
    except ks_exceptions.Unauthorized:
        return False
    return True


def ensure_octavia_accounts(layout: Layout) -> None:
    """The ``load-balancer`` service and endpoints at Octavia's URL and the
    ``octavia`` user of project ``service`` (made by Keystone's own `up`,
    which runs first); creates only what is missing."""
    conn = os_connection.Connection(session=admin_session(), region_name=REGION)
    try:
        ident = cast("IdentityV3", conn.identity)
        _ensure_service(ident, LOAD_BALANCER_SERVICE, "load-balancer",
                        "OpenStack Load Balancing (kuryr-aio)", layout.octavia_url)
        domain = ident.find_domain(DOMAIN, ignore_missing=False)
        project = ident.find_project(SERVICE_PROJECT, domain_id=domain.id,
                                     ignore_missing=False)
        _ensure_user(ident, domain.id, project, OCTAVIA_USER, OCTAVIA_PASSWORD, OCTAVIA_ROLES)
    finally:
        conn.close()


# -- the component -----------------------------------------------------------
class Keystone:
    name = "keystone"

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.dir = layout.keystone_dir
        self.pidfile = layout.pidfile("keystone")

    @property
    def venv_bin(self) -> Path:
        return self.layout.keystone_venv / "bin"

    @property
    def config_file(self) -> Path:
        return self.dir / "keystone.conf"

    @property
    def service_project_file(self) -> Path:
        return service_project_file(self.layout)

    @property
    def logs(self) -> list[Path]:
        return [self.layout.log("keystone"), self.layout.log("keystone-access"),
                self.layout.log("keystone-manage")]

    def answers(self) -> bool:
        with urllib.request.urlopen(AUTH_URL, timeout=5) as resp:
            return resp.status == HTTPStatus.OK

    def problems(self) -> list[str]:
        if not procs.pid_alive(self.pidfile, WSGI_MODULE):
            return ["keystone (gunicorn) is not running"]
        try:
            self.answers()
        except OSError as exc:
            return [f"keystone does not answer on {AUTH_URL}: {exc}"]
        if self.config_outdated():
            return [("keystone runs with an outdated keystone.conf (database socket or "
                     "password changed); `kuryr-aio up` restarts it")]
        return []

    def config_outdated(self) -> bool:
        """Whether the running Keystone was started from another keystone.conf."""
        try:
            return self.config_file.read_text() != keystone_conf(self.layout)
        except FileNotFoundError:
            return True

    # -- install and set up ------------------------------------------------
    def install(self) -> None:
        venvs.install(self.layout.keystone_venv, KEYSTONE_PACKAGES,
                      log=self.layout.log("keystone-install"), version=KEYSTONE_VERSION)

    def create_database(self) -> None:
        MariaDB(self.layout).create_service_database("keystone", DB_NAME, DB_USER)

    def protect_config(self) -> None:
        """A config left by an earlier keystone mode (or an older kuryr-aio, which
        wrote it 0644) holds a database password: root only, in either mode."""
        if self.config_file.exists():
            self.config_file.chmod(0o600)

    def write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        # Holds the database password: root only.
        self.config_file.touch(mode=0o600)
        self.config_file.chmod(0o600)
        self.config_file.write_text(keystone_conf(self.layout))
        (self.dir / f"{WSGI_MODULE}.py").write_text(template("keystone_wsgi.py.tmpl"))

    def manage(self, *args: str, env: Mapping[str, str] | None = None) -> str:
        return procs.run([str(self.venv_bin / "keystone-manage"),
                          "--config-file", str(self.config_file), *args],
                         log=self.layout.log("keystone-manage"), env=env, timeout=600)

    def setup_keys(self) -> None:
        owner = ("--keystone-user", "root", "--keystone-group", "root")
        for command, repository in (("fernet_setup", "fernet-keys"),
                                    ("credential_setup", "credential-keys")):
            # Key 0 (the staged key) exists once a repository is set up; the
            # commands would keep existing keys anyway, but each costs seconds.
            if not (self.dir / repository / "0").exists():
                self.manage(command, *owner)

    def migrate(self) -> None:
        marker = self.dir / ".db-migrated"
        if marker.exists() and marker.read_text() == KEYSTONE_VERSION:
            return
        self.manage("db_sync")
        marker.write_text(KEYSTONE_VERSION)

    def bootstrap(self) -> None:
        """Admin user and project, the default roles (reader < member < manager
        < admin, and service), RegionOne and the identity endpoints."""
        marker = self.dir / ".bootstrapped"
        if marker.exists() and marker.read_text() == KEYSTONE_VERSION:
            return
        self.manage(
            "bootstrap", "--bootstrap-username", ADMIN_USER,
            "--bootstrap-project-name", ADMIN_PROJECT,
            "--bootstrap-region-id", REGION,
            "--bootstrap-admin-url", f"{AUTH_URL}/",
            "--bootstrap-internal-url", f"{AUTH_URL}/",
            "--bootstrap-public-url", f"{AUTH_URL}/",
            # From the environment, so the password is not in `ps` output.
            env={"OS_BOOTSTRAP_PASSWORD": ADMIN_PASSWORD},
        )
        marker.write_text(KEYSTONE_VERSION)

    def ensure_accounts(self) -> None:
        """The network service and endpoints, the service project and the kuryr
        and neutron users with their roles; creates only what is missing."""
        conn = os_connection.Connection(session=admin_session(), region_name=REGION)
        try:
            # The stack's Keystone speaks v3 only; the SDK's type is v2 | v3.
            ident = cast("IdentityV3", conn.identity)
            _ensure_service(ident, NETWORK_SERVICE, "network",
                            "OpenStack Networking (kuryr-aio)", self.layout.neutron_url)
            domain = ident.find_domain(DOMAIN, ignore_missing=False)
            project = ident.find_project(SERVICE_PROJECT, domain_id=domain.id,
                                         ignore_missing=True) or \
                ident.create_project(name=SERVICE_PROJECT, domain_id=domain.id,
                                     description="Service users of kuryr-aio")
            # For leaving keystone mode: what Kuryr made in this project is then
            # seen by a no-auth Kuryr too (see KuryrPlugin.forget_keystone_singletons).
            self.service_project_file.write_text(f"{project.id}\n")
            for username, password, roles in ((KURYR_USER, KURYR_PASSWORD, KURYR_ROLES),
                                              (NEUTRON_USER, NEUTRON_PASSWORD, NEUTRON_ROLES)):
                _ensure_user(ident, domain.id, project, username, password, roles)
        finally:
            conn.close()

    # -- run -----------------------------------------------------------------
    def up(self) -> None:
        self.install()
        if self.config_outdated():
            # A new database socket or password: restart on the new file.
            self.down()
        self.create_database()
        self.write_config()
        self.setup_keys()
        self.migrate()
        self.bootstrap()
        if not procs.pid_alive(self.pidfile, WSGI_MODULE):
            procs.spawn(
                [str(self.venv_bin / "gunicorn"), "--chdir", str(self.dir),
                 "--bind", f"127.0.0.1:{KEYSTONE_PORT}", "-w", "1", "--threads", "4",
                 "--graceful-timeout", "5", "--timeout", "120",
                 "--access-logfile", str(self.layout.log("keystone-access")),
                 # gunicorn's default control socket is one path per user:
                 # a second gunicorn (neutron's) would fight over it.
                 "--no-control-socket",
                 f"{WSGI_MODULE}:application"],
                pidfile=self.pidfile, log=self.layout.log("keystone"),
                env={"OS_KEYSTONE_CONFIG_FILES": str(self.config_file),
                     "PATH": f"{self.venv_bin}:/usr/sbin:/usr/bin:/sbin:/bin"},
            )
        if not procs.wait_for(procs.answers_or_died(self.pidfile, self.answers), 120):
            raise procs.StackError(
                f"keystone did not answer within 120 s (log: {self.layout.log('keystone')})")
        if not procs.running(self.pidfile):
            raise procs.StackError(
                f"keystone exited at start (log: {self.layout.log('keystone')})")
        try:
            self.ensure_accounts()
        except (ks_exceptions.ClientException, os_exceptions.SDKException) as exc:
            raise procs.StackError(
                f"keystone: creating Kuryr's accounts failed: {exc} "
                f"(log: {self.layout.log('keystone')})") from exc

    def down(self) -> bool:
        """Stop Keystone; whether it was running."""
        return procs.stop(self.pidfile, WSGI_MODULE, timeout=15)
