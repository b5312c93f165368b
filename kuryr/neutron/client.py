"""The one place where Kuryr talks to Neutron.

A :class:`Neutron` wraps an openstacksdk connection built from the
``[neutron]`` section of kuryr.conf (keystoneauth options, a clouds.yaml
entry, or a no-auth endpoint) and counts every HTTP request it sends, so
benchmarks and tests can report requests per operation.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime
import email.utils
import ipaddress
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import openstack
import requests
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import loading as ks_loading
from keystoneauth1 import session as ks_session
from openstack import connection as os_connection
from openstack import exceptions as os_exc
from openstack.network.v2.network import Network as OSNetwork
from openstack.network.v2.port import Port as OSPort
from openstack.network.v2.security_group import SecurityGroup as OSSecurityGroup
from oslo_config import cfg

from kuryr import errors
from kuryr.config import NEUTRON_GROUP
from kuryr.neutron.types import (
    AddressGroup,
    FloatingIP,
    Network,
    NewPort,
    Port,
    PortForwarding,
    Router,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
    SubnetPool,
    SubPort,
    Trunk,
)


class NeutronConfigError(Exception):
    """kuryr.conf does not say how to reach Neutron."""


@dataclass
class RequestTally:
    """Requests seen while one operation ran, by HTTP method."""

    by_method: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.by_method.values())

    @property
    def writes(self) -> int:
        return self.total - self.by_method.get("GET", 0)


class RequestCounter:
    """Counts HTTP requests globally and for the operation in progress.

    The current operation is carried in a context variable, so concurrent
    handlers (threads or tasks) each get their own tally.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clock_offset = 0.0  # Neutron's clock minus ours, from its Date headers
        self.total: Counter[str] = Counter()
        self._current: contextvars.ContextVar[RequestTally | None] = contextvars.ContextVar(
            "kuryr_neutron_tally", default=None
        )

    def record(self, method: str) -> None:
        with self._lock:
            self.total[method] += 1
        tally = self._current.get()
        if tally is not None:
            tally.by_method[method] += 1

    @contextlib.contextmanager
    def operation(self) -> Iterator[RequestTally]:
        """Tally the requests made inside the ``with`` block."""
        tally = RequestTally()
        token = self._current.set(tally)
        try:
            yield tally
        finally:
            self._current.reset(token)

    def response_hook(self, response: requests.Response, *args: object, **kwargs: object) -> None:
        self.record(response.request.method or "?")
        date = response.headers.get("Date")
        if date:
            with contextlib.suppress(TypeError, ValueError):
                server = email.utils.parsedate_to_datetime(date)
                offset = (server - datetime.datetime.now(datetime.UTC)).total_seconds()
                with self._lock:
                    self._clock_offset = offset

    def server_now(self) -> datetime.datetime:
        """Neutron's time as of its last answer (its Date header has 1 s precision,
        plenty for garbage collection's minutes of grace)."""
        with self._lock:
            offset = self._clock_offset
        return datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=offset)


def _http_session(counter: RequestCounter) -> requests.Session:
    http = requests.Session()
    http.hooks["response"].append(counter.response_hook)
    return http


def _keystone_session(conf: cfg.ConfigOpts, counter: RequestCounter) -> ks_session.Session:
    group = conf[NEUTRON_GROUP]
    if not group.auth_type:
        raise NeutronConfigError(
            "[neutron] auth_type is not set in kuryr.conf: use 'password', "
            "'v3applicationcredential', or 'none' with 'endpoint = http://HOST:9696'"
        )
    auth = ks_loading.load_auth_from_conf_options(conf, NEUTRON_GROUP)
    sess = ks_loading.load_session_from_conf_options(
        conf, NEUTRON_GROUP, auth=auth, session=_http_session(counter)
    )
    sess.timeout = group.request_timeout
    return sess


# A request sent on a pooled keep-alive connection the server closes at that
# moment (its idle timeout: 2 s for gunicorn, 5 s for Apache) fails with
# "connection reset" before the server read it: seen once under churn in CI
# (a port's POST).  One new connection is tried then: keystoneauth retries
# only failures to connect or connections reset without a response, never a
# response.  (A request the server did carry out before the connection broke
# would be sent again: for Kuryr's POSTs that is a tagged duplicate the
# garbage collector removes.)
CONNECT_RETRIES = 1


def connect(conf: cfg.ConfigOpts, counter: RequestCounter | None = None) -> Neutron:
    """Build a Neutron client from kuryr.conf's [neutron] section."""
    counter = counter or RequestCounter()
    group = conf[NEUTRON_GROUP]
    overrides: dict[str, Any] = {}
    if group.endpoint_override:
        overrides["network_endpoint_override"] = group.endpoint_override
    return Neutron(openstack_connection(conf, counter, **overrides), counter)


def openstack_connection(conf: cfg.ConfigOpts, counter: RequestCounter,
                         **overrides: Any) -> os_connection.Connection:  # noqa: ANN401
    """An openstacksdk connection on [neutron]'s credentials (keystoneauth
    options or a clouds.yaml entry), counting its requests in ``counter``;
    ``overrides`` are openstacksdk's ``<service>_endpoint_override`` settings.
    Octavia's client is built on the same credentials."""
    group = conf[NEUTRON_GROUP]
    if group.cloud:
        conn = openstack.connect(cloud=group.cloud, connect_retries=CONNECT_RETRIES,
                                 **overrides)
        conn.session.session.hooks["response"].append(counter.response_hook)
        conn.session.timeout = group.request_timeout
        return conn
    return os_connection.Connection(
        session=_keystone_session(conf, counter),
        region_name=group.region_name,
        network_api_version="2",
        connect_retries=CONNECT_RETRIES,
        **overrides,
    )


def connect_endpoint(endpoint: str, counter: RequestCounter | None = None) -> Neutron:
    """A no-auth client for a Neutron run with ``auth_strategy = noauth``."""
    counter = counter or RequestCounter()
    conn = openstack.connect(
        auth_type="none",
        auth={"endpoint": endpoint},
    )
    conn.session.session.hooks["response"].append(counter.response_hook)
    return Neutron(conn, counter)


def _neutron_message(exc: os_exc.HttpException) -> str:
    """Neutron's own explanation, without the SDK's URL noise."""
    details = getattr(exc, "details", None)
    if details and isinstance(details, str):
        return details
    return str(exc.message if hasattr(exc, "message") else exc)


@contextlib.contextmanager
def translated_errors(what: str) -> Iterator[None]:
    """Turn SDK and transport exceptions into Kuryr's error types.

    ``what`` says what was being done, e.g. "create port on network X".
    """
    try:
        yield
    except os_exc.NotFoundException as exc:
        raise errors.NotFound(f"{what}: {_neutron_message(exc)}") from exc
    except os_exc.ConflictException as exc:
        raise errors.Conflict(f"{what}: {_neutron_message(exc)}") from exc
    except os_exc.BadRequestException as exc:
        raise errors.InvalidInput(f"{what}: {_neutron_message(exc)}") from exc
    except os_exc.HttpException as exc:
        status = getattr(exc, "status_code", None) or 500
        if status == HTTPStatus.PRECONDITION_FAILED:  # an if_revision that no longer holds
            raise errors.StaleRevision(f"{what}: {_neutron_message(exc)}") from exc
        if status in (401, 403):
            raise errors.BackendUnavailable(
                f"{what}: Neutron refused Kuryr's credentials ({status}): "
                f"{_neutron_message(exc)}") from exc
        if status < HTTPStatus.INTERNAL_SERVER_ERROR:
            raise errors.InvalidInput(f"{what}: {_neutron_message(exc)}") from exc
        raise errors.BackendUnavailable(f"{what}: {_neutron_message(exc)}") from exc
    except (ks_exc.ConnectFailure, ks_exc.ConnectTimeout, ks_exc.RequestTimeout,
            ks_exc.DiscoveryFailure, os_exc.SDKException) as exc:
        raise errors.BackendUnavailable(
            f"{what}: Neutron unreachable: {_root_cause(exc)}") from exc


def _root_cause(exc: BaseException) -> str:
    """The innermost reason (e.g. "[Errno 111] Connection refused") rather than
    the layers of wrapping urllib3, requests and keystoneauth add around it."""
    seen = exc
    while True:
        inner = seen.__cause__ or seen.__context__
        if inner is None or inner is seen:
            break
        seen = inner
    reason = getattr(seen, "reason", None)  # urllib3's NewConnectionError and friends
    text = str(reason if isinstance(reason, BaseException) else seen)
    if isinstance(seen, OSError) and seen.strerror:
        text = f"[Errno {seen.errno}] {seen.strerror}"
    return text if text and seen is not exc else str(exc)


class Neutron:
    """Neutron resources as Kuryr uses them.  Holds no Docker knowledge.

    Every method returns Kuryr's own types (kuryr/neutron/types.py) and costs
    exactly the requests its docstring says, so callers can keep their budgets
    (see docs/performance.md).
    """

    def __init__(self, conn: os_connection.Connection, counter: RequestCounter) -> None:
        self.conn = conn
        self.counter = counter
        self._tags_in_post: bool | None = None  # known after the first port made with tags

    @property
    def api(self) -> Any:  # noqa: ANN401 - the raw SDK proxy: kuryr-aio and tests only
        return self.conn.network

    def extensions(self) -> set[str]:
        """Aliases of the API extensions this Neutron offers (1 GET)."""
        with translated_errors("list Neutron extensions"):
            return {str(ext.alias) for ext in self.api.extensions()}

    def close(self) -> None:
        self.conn.close()

    # -- networks ----------------------------------------------------------
    def create_network(self, name: str, shared: bool = False) -> Network:
        """1 POST (Neutron takes no tags here: set_network_tags)."""
        attrs: dict[str, object] = {"name": name, "is_admin_state_up": True}
        if shared:
            attrs["is_shared"] = True
        with translated_errors(f"create network {name}"):
            return Network.from_sdk(self.api.create_network(**attrs))

    def set_network_tags(self, network_id: str, tags: Iterable[str]) -> None:
        """1 PUT: replaces all tags of the network."""
        with translated_errors(f"tag network {network_id}"):
            self.api.set_tags(OSNetwork.existing(id=network_id), sorted(set(tags)))

    def set_port_tags(self, port_id: str, tags: Iterable[str]) -> None:
        """1 PUT: replaces all tags of the port."""
        with translated_errors(f"tag port {port_id}"):
            self.api.set_tags(OSPort.existing(id=port_id), sorted(set(tags)))

    def get_network(self, network_id: str) -> Network:
        """1 GET."""
        with translated_errors(f"find network {network_id}"):
            return Network.from_sdk(self.api.get_network(network_id))

    def _find(self, kind: str, name_or_id: str) -> Any:  # noqa: ANN401 - an SDK resource
        """1-2 GETs; NotFound when absent, Conflict when the name is ambiguous."""
        finder = getattr(self.api, f"find_{kind}")
        with translated_errors(f"find {kind} {name_or_id!r}"):
            try:
                found = finder(name_or_id, ignore_missing=True)
            except os_exc.DuplicateResource as exc:
                raise errors.Conflict(
                    f"more than one Neutron {kind} is named {name_or_id!r}: use its id"
                ) from exc
        if found is None:
            raise errors.NotFound(f"Neutron {kind} {name_or_id!r} does not exist")
        return found

    def find_port(self, name_or_id: str) -> Port:
        """1-2 GETs; NotFound / Conflict (ambiguous name)."""
        return Port.from_sdk(self._find("port", name_or_id))

    def find_network(self, name_or_id: str) -> Network:
        return Network.from_sdk(self._find("network", name_or_id))

    def networks_tagged(self, tags: Iterable[str]) -> list[Network]:
        """1 GET: networks carrying all ``tags``."""
        with translated_errors("find networks by tag"):
            return [Network.from_sdk(n) for n in self.api.networks(tags=",".join(tags))]

    def delete_network(self, network_id: str) -> None:
        """1 DELETE; absent is fine."""
        with translated_errors(f"delete network {network_id}"):
            self.api.delete_network(network_id, ignore_missing=True)

    # -- subnets and pools -------------------------------------------------
    def create_subnet(self, network_id: str, cidr: str, name: str, gateway_ip: str | None,
                      enable_dhcp: bool, subnet_pool_id: str | None = None,
                      allocation_pools: list[tuple[str, str]] | None = None) -> Subnet:
        """1 POST."""
        attrs: dict[str, object] = {
            "network_id": network_id, "cidr": cidr,
            "ip_version": ipaddress.ip_network(cidr).version, "name": name,
            "gateway_ip": gateway_ip, "is_dhcp_enabled": enable_dhcp,
        }
        if subnet_pool_id:
            attrs["subnet_pool_id"] = subnet_pool_id
        if allocation_pools:
            attrs["allocation_pools"] = [{"start": s, "end": e} for s, e in allocation_pools]
        with translated_errors(f"create subnet {cidr}"):
            try:
                return Subnet.from_sdk(self.api.create_subnet(**attrs))
            except os_exc.HttpException as exc:
                # A subnetpool refusing an overlapping CIDR answers 500 here.
                if "Cannot allocate requested subnet" in str(exc):
                    raise errors.Conflict(
                        f"subnet {cidr} overlaps a subnet Kuryr already "
                        "allocated from the same pool") from exc
                raise

    def create_subnet_from_pool(self, network_id: str, subnet_pool_id: str, prefixlen: int,
                                name: str, ip_version: int = 4) -> Subnet:
        """1 POST: the pool picks the next free CIDR of that length (gateway:
        its first address, DHCP on)."""
        with translated_errors(f"create subnet /{prefixlen} from pool {subnet_pool_id}"):
            return Subnet.from_sdk(self.api.create_subnet(
                network_id=network_id, subnet_pool_id=subnet_pool_id, prefix_length=prefixlen,
                ip_version=ip_version, name=name, is_dhcp_enabled=True))

    def get_subnet(self, subnet_id: str) -> Subnet:
        """1 GET."""
        with translated_errors(f"find subnet {subnet_id}"):
            return Subnet.from_sdk(self.api.get_subnet(subnet_id))

    def find_subnet(self, name_or_id: str) -> Subnet:
        return Subnet.from_sdk(self._find("subnet", name_or_id))

    def subnets(self, network_id: str | None = None, cidr: str | None = None,
                subnet_pool_id: str | list[str] | None = None,
                ip_version: int | None = None) -> list[Subnet]:
        """1 GET (a list of pool ids: the subnets of any of them)."""
        filters = _filters(network_id=network_id, cidr=cidr, subnet_pool_id=subnet_pool_id,
                           ip_version=ip_version)
        with translated_errors("list subnets"):
            return [Subnet.from_sdk(s) for s in self.api.subnets(**filters)]

    def delete_subnet(self, subnet_id: str) -> None:
        """1 DELETE; absent is fine."""
        with translated_errors(f"delete subnet {subnet_id}"):
            self.api.delete_subnet(subnet_id, ignore_missing=True)

    def find_subnetpool(self, name_or_id: str) -> SubnetPool | None:
        """1-2 GETs.  A user with the service or admin role sees other projects'
        pools too: of several with this name, the one of Kuryr's own project."""
        with translated_errors(f"find subnetpool {name_or_id!r}"):
            with contextlib.suppress(os_exc.ResourceNotFound):
                return SubnetPool.from_sdk(self.api.get_subnet_pool(name_or_id))
            found = [SubnetPool.from_sdk(p) for p in self.api.subnet_pools(name=name_or_id)]
        if len(found) <= 1:
            return found[0] if found else None
        project = self._project_id()
        own = [pool for pool in found if project and pool.project_id == project]
        if len(own) == 1:
            return own[0]
        raise errors.Conflict(
            f"{len(found)} subnetpools are named {name_or_id!r} "
            f"({', '.join(p.id for p in found)}) and none is the only one of this "
            "project: set [neutron] default_subnetpool_v4/_v6 to an id")

    def _project_id(self) -> str | None:
        try:
            project = self.api.session.get_project_id()
        except Exception:  # noqa: BLE001 - no-auth sessions have no project
            return None
        return str(project) if project else None

    def subnetpools(self, ip_version: int | None = None) -> list[SubnetPool]:
        """1 GET: every subnetpool this user sees (a handful in any cloud)."""
        with translated_errors("list subnetpools"):
            return [SubnetPool.from_sdk(p)
                    for p in self.api.subnet_pools(**_filters(ip_version=ip_version))]

    def delete_subnetpool(self, pool_id: str) -> None:
        """1 DELETE; absent is fine; Conflict while a subnet uses it."""
        with translated_errors(f"delete subnetpool {pool_id}"):
            self.api.delete_subnet_pool(pool_id, ignore_missing=True)

    def create_subnetpool(self, name: str, prefixes: list[str], default_prefix_length: int,
                          minimum_prefix_length: int, description: str) -> SubnetPool:
        """1 POST."""
        with translated_errors(f"create subnetpool {name}"):
            return SubnetPool.from_sdk(self.api.create_subnet_pool(
                name=name, prefixes=prefixes, default_prefix_length=default_prefix_length,
                minimum_prefix_length=minimum_prefix_length, description=description))

    # -- security groups ---------------------------------------------------
    def create_security_group(self, name: str, description: str = "") -> SecurityGroup:
        """1 POST (Neutron adds the default egress rules)."""
        with translated_errors(f"create security group {name}"):
            return SecurityGroup.from_sdk(
                self.api.create_security_group(name=name, description=description))

    def create_security_group_rules(self, rules: list[dict[str, object]]) -> None:
        """1 POST for all rules (bulk)."""
        if not rules:
            return
        with translated_errors("create security group rules"):
            self.api.create_security_group_rules(data=rules)

    def security_groups(self, fields: list[str] | None = None,
                        description: str | None = None) -> list[SecurityGroup]:
        """1 GET (``description``: exactly that one, filtered by Neutron)."""
        filters = _filters(fields=fields or None, description=description)
        with translated_errors("list security groups"):
            return [SecurityGroup.from_sdk(g) for g in self.api.security_groups(**filters)]

    def delete_security_group(self, group_id: str) -> None:
        """1 DELETE; absent is fine."""
        with translated_errors(f"delete security group {group_id}"):
            self.api.delete_security_group(group_id, ignore_missing=True)

    def security_groups_tagged(self, tags: Iterable[str]) -> list[SecurityGroup]:
        """1 GET: groups carrying all ``tags``."""
        with translated_errors("find security groups by tag"):
            return [SecurityGroup.from_sdk(g)
                    for g in self.api.security_groups(tags=",".join(tags))]

    def set_security_group_tags(self, group_id: str, tags: Iterable[str]) -> None:
        """1 PUT: replaces all tags of the group."""
        with translated_errors(f"tag security group {group_id}"):
            self.api.set_tags(OSSecurityGroup.existing(id=group_id), sorted(set(tags)))

    def security_group_rules(self, group_id: str) -> list[SecurityGroupRule]:
        """1 GET: the rules of one group."""
        with translated_errors(f"list rules of security group {group_id}"):
            return [SecurityGroupRule.from_sdk(r)
                    for r in self.api.security_group_rules(security_group_id=group_id)]

    def delete_security_group_rule(self, rule_id: str) -> None:
        """1 DELETE; absent is fine."""
        with translated_errors(f"delete security group rule {rule_id}"):
            self.api.delete_security_group_rule(rule_id, ignore_missing=True)

    # -- address groups (extension address-group) ---------------------------
    def create_address_group(self, name: str, description: str,
                             addresses: Iterable[str]) -> AddressGroup:
        """1 POST."""
        with translated_errors(f"create address group {name}"):
            return AddressGroup.from_sdk(self.api.create_address_group(
                name=name, description=description, addresses=sorted(addresses)))

    def address_groups(self, description: str) -> list[AddressGroup]:
        """1 GET: the groups with exactly this description (address groups take no tags)."""
        with translated_errors("list address groups"):
            return [AddressGroup.from_sdk(g)
                    for g in self.api.address_groups(description=description)]

    def add_addresses(self, group_id: str, addresses: Iterable[str]) -> None:
        """1 PUT; nothing when there is nothing to add."""
        added = sorted(addresses)
        if added:
            with translated_errors(f"add addresses to address group {group_id}"):
                self.api.add_addresses_to_address_group(group_id, added)

    def remove_addresses(self, group_id: str, addresses: Iterable[str]) -> None:
        """1 PUT; nothing when there is nothing to remove."""
        removed = sorted(addresses)
        if removed:
            with translated_errors(f"remove addresses from address group {group_id}"):
                self.api.remove_addresses_from_address_group(group_id, removed)

    def delete_address_group(self, group_id: str) -> None:
        """1 DELETE; absent is fine; Conflict while a rule names it."""
        with translated_errors(f"delete address group {group_id}"):
            self.api.delete_address_group(group_id, ignore_missing=True)

    # -- routers and floating IPs (Neutron-native publishing) --------------
    def find_router(self, name: str) -> Router | None:
        with translated_errors(f"find router {name}"):
            found = self.api.find_router(name, ignore_missing=True)
        return Router(id=str(found.id), name=str(found.name)) if found else None

    def create_router(self, name: str, external_network_id: str) -> Router:
        with translated_errors(f"create router {name}"):
            made = self.api.create_router(
                name=name, external_gateway_info={"network_id": external_network_id})
        return Router(id=str(made.id), name=str(made.name))

    def add_router_interface(self, router_id: str, subnet_id: str) -> None:
        """1 PUT."""
        with translated_errors(f"attach subnet {subnet_id} to router {router_id}"):
            self.api.add_interface_to_router(router_id, subnet_id=subnet_id)

    def remove_router_interface(self, router_id: str, subnet_id: str) -> None:
        """1 PUT; an interface already gone is fine."""
        with translated_errors(f"detach subnet {subnet_id} from router {router_id}"), \
                contextlib.suppress(os_exc.NotFoundException):
            self.api.remove_interface_from_router(router_id, subnet_id=subnet_id)

    def floating_ips(self, description: str, floating_network_id: str) -> list[FloatingIP]:
        """1 GET."""
        with translated_errors("list floating IPs"):
            return [FloatingIP(id=str(f.id), floating_ip_address=str(f.floating_ip_address),
                               port_id=f.port_id or None)
                    for f in self.api.ips(description=description,
                                          floating_network_id=floating_network_id)]

    def create_floating_ip(self, network_id: str, description: str,
                           port_id: str | None = None) -> FloatingIP:
        """1 POST (associated with ``port_id`` when given)."""
        extra = {"port_id": port_id} if port_id else {}
        with translated_errors("create floating IP"):
            made = self.api.create_ip(floating_network_id=network_id, description=description,
                                      **extra)
        return FloatingIP(id=str(made.id), floating_ip_address=str(made.floating_ip_address),
                          port_id=made.port_id or None)

    def associate_floating_ip(self, floating_ip_id: str, port_id: str) -> None:
        """1 PUT."""
        with translated_errors(f"associate floating IP {floating_ip_id}"):
            self.api.update_ip(floating_ip_id, port_id=port_id)

    def delete_floating_ip(self, floating_ip_id: str) -> None:
        """1 DELETE; absent is fine."""
        with translated_errors(f"delete floating IP {floating_ip_id}"):
            self.api.delete_ip(floating_ip_id, ignore_missing=True)

    def create_port_forwarding(self, floating_ip_id: str, protocol: str,
                               internal_ip_address: str, internal_port: int,
                               internal_port_id: str, external_port: int) -> None:
        """1 POST."""
        with translated_errors(f"forward port {external_port} of floating IP"):
            self.api.create_port_forwarding(
                floatingip_id=floating_ip_id, protocol=protocol,
                internal_ip_address=internal_ip_address, internal_port=internal_port,
                internal_port_id=internal_port_id, external_port=external_port)

    def port_forwardings(self, floating_ip_id: str, internal_port_id: str) -> list[PortForwarding]:
        """1 GET."""
        with translated_errors("list port forwardings"):
            return [PortForwarding(id=str(f.id)) for f in self.api.port_forwardings(
                floating_ip_id, internal_port_id=internal_port_id)]

    def delete_port_forwarding(self, floating_ip_id: str, forwarding_id: str) -> None:
        """1 DELETE; absent is fine."""
        with translated_errors(f"delete port forwarding {forwarding_id}"):
            self.api.delete_port_forwarding(forwarding_id, floating_ip_id, ignore_missing=True)

    # -- ports -------------------------------------------------------------
    def create_port(self, port: NewPort) -> Port:
        """1 POST (and 1 PUT for its tags where Neutron takes none in a POST)."""
        with translated_errors(f"create port on network {port.network_id}"):
            made = Port.from_sdk(self.api.create_port(**port.body()))
        return self._tagged([made], [port])[0]

    def create_ports(self, ports: list[NewPort]) -> list[Port]:
        """1 POST for all ports (bulk; and 1 PUT each for their tags where Neutron
        takes none in a POST)."""
        with translated_errors(f"create {len(ports)} ports"):
            made = [Port.from_sdk(p) for p in self.api.create_ports([p.body() for p in ports])]
        return self._tagged(made, ports)

    def _tagged(self, made: list[Port], wanted: list[NewPort]) -> list[Port]:
        """Neutron without the ML2 extension driver tag_ports_during_bulk_creation
        ignores tags in a port's POST, silently: set them afterwards."""
        if not any(w.tags for w in wanted):
            return made
        if self._tags_in_post is None:
            self._tags_in_post = "tag-ports-during-bulk-creation" in self.extensions()
        if self._tags_in_post:
            return made
        done = []
        for port, new in zip(made, wanted, strict=True):
            tags = sorted({*port.tags, *new.tags})
            if set(tags) != set(port.tags):
                self.set_port_tags(port.id, tags)
            done.append(dataclasses.replace(port, tags=tuple(tags)))
        return done

    def update_port(self, port_id: str, *, device_id: str | None = None,
                    device_owner: str | None = None, binding_host_id: str | None = None,
                    security_group_ids: list[str] | None = None,
                    description: str | None = None, mac_address: str | None = None,
                    fixed_ips: list[dict[str, str]] | None = None, name: str | None = None,
                    dns_name: str | None = None,
                    allowed_address_pairs: Sequence[tuple[str, str]] | None = None,
                    if_revision: int | None = None) -> Port:
        """1 PUT of the given attributes (None: unchanged).  With ``if_revision``
        Neutron applies it only to that revision of the port (StaleRevision
        otherwise)."""
        attrs = _filters(device_id=device_id, device_owner=device_owner,
                         binding_host_id=binding_host_id,
                         security_group_ids=security_group_ids, description=description,
                         mac_address=mac_address, fixed_ips=fixed_ips, name=name,
                         dns_name=dns_name)
        if allowed_address_pairs is not None:
            attrs["allowed_address_pairs"] = [
                {"ip_address": ip, **({"mac_address": mac} if mac else {})}
                for ip, mac in allowed_address_pairs]
        with translated_errors(f"update port {port_id}"):
            return Port.from_sdk(self.api.update_port(port_id, if_revision=if_revision,
                                                      **attrs))

    def delete_port(self, port_id: str) -> None:
        """1 DELETE; absent is fine."""
        with translated_errors(f"delete port {port_id}"):
            self.api.delete_port(port_id, ignore_missing=True)

    def get_port(self, port_id: str) -> Port:
        """1 GET."""
        with translated_errors(f"find port {port_id}"):
            return Port.from_sdk(self.api.get_port(port_id))

    def ports(self, network_id: str | None = None, device_id: str | None = None,
              device_owner: str | Sequence[str] | None = None,
              binding_host_id: str | None = None,
              ip_address: str | None = None, tags: str | None = None,
              mac_address: str | None = None) -> list[Port]:
        """1 GET (several device owners: ports with any of them)."""
        owners = device_owner if device_owner is None or isinstance(device_owner, str) \
            else list(device_owner)
        filters: dict[str, object] = _filters(
            network_id=network_id, device_id=device_id, device_owner=owners,
            tags=tags, mac_address=mac_address)
        if binding_host_id is not None:
            # openstacksdk knows this filter only by Neutron's own name: given
            # as binding_host_id it lists every port of the cloud and filters
            # them here (measured: 99 KB for a host's 5 ports with 150 in the
            # cloud; each host's collector did so every pass).
            filters["binding:host_id"] = binding_host_id
        if ip_address is not None:
            filters["fixed_ips"] = [f"ip_address={ip_address}"]
        with translated_errors("list ports"):
            return [Port.from_sdk(p) for p in self.api.ports(**filters)]


    # -- trunks (nested: containers on a VM's trunk) ------------------------------------------
    def trunk_of(self, parent_port_id: str) -> Trunk | None:
        """The trunk whose parent is ``parent_port_id`` (1 GET)."""
        with translated_errors(f"find the trunk of port {parent_port_id}"):
            found = [Trunk.from_sdk(t) for t in self.api.trunks(port_id=parent_port_id)]
        return found[0] if found else None

    def get_trunk(self, trunk_id: str) -> Trunk:
        """1 GET."""
        with translated_errors(f"find trunk {trunk_id}"):
            return Trunk.from_sdk(self.api.get_trunk(trunk_id))

    def add_subports(self, trunk_id: str, sub_ports: Sequence[SubPort]) -> None:
        """1 PUT for all of them; Conflict when a VLAN id or port is taken."""
        body = [{"port_id": s.port_id, "segmentation_type": s.segmentation_type,
                 "segmentation_id": s.segmentation_id} for s in sub_ports]
        with translated_errors(f"add {len(body)} sub-ports to trunk {trunk_id}"):
            self.api.add_trunk_subports(trunk_id, body)

    def remove_subports(self, trunk_id: str, port_ids: Sequence[str]) -> None:
        """1 PUT for all of them; NotFound when one is no sub-port of the trunk."""
        with translated_errors(f"remove {len(port_ids)} sub-ports from trunk {trunk_id}"):
            self.api.delete_trunk_subports(trunk_id, [{"port_id": p} for p in port_ids])


def _filters(**given: object) -> dict[str, object]:
    return {key: value for key, value in given.items() if value is not None}

