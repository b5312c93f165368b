"""How Docker's ids live in Neutron.  These names are kuryr-libnetwork's, so
resources made by either implementation are recognised by the other."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass

NET_TAG_LOW = "kuryr.net.uuid.lh:"
NET_TAG_HIGH = "kuryr.net.uuid.uh:"
NET_EXISTING_TAG = "kuryr.net.existing:"
SUBNETPOOL_EXISTING_TAG = "kuryr.subnetpool.existing"
PORT_EXISTING_TAG = "kuryr.port.existing"

DEVICE_OWNER = "compute:kuryr"
UNBOUND_DEVICE_OWNER = "kuryr:unbound"
POOL_DEVICE_OWNER = "kuryr:pool"  # created, bound and plugged ahead of any container
NET_IPV6_TAG = "kuryr.net.ipv6"  # Docker asks for IPv6 addresses on this network
NET_POOL_TAG = "kuryr.pool.size:"  # ports kept ready for this network
# Kuryr for Kubernetes marks its ports with owners of its own, so Docker's
# Kuryr (and its garbage collector) on the same host never takes or deletes a
# pod's port, and the CNI daemon never a container's.
K8S_DEVICE_OWNER = "compute:kuryr-k8s"  # a pod's port; device_id = the pod's uid
K8S_UNBOUND_DEVICE_OWNER = "kuryr-k8s:unbound"
K8S_POOL_DEVICE_OWNER = "kuryr-k8s:pool"


@dataclass(frozen=True)
class Owners:
    """The device owners of one front end's ports.  The core is given one at
    construction and touches no port of another owner set: Docker's Kuryr and
    the CNI daemon on one host never take, recycle or delete each other's ports."""

    container: str  # serving a container (or pod)
    unbound: str  # reserved, no container yet
    pool: str  # created, bound and plugged ahead of any container

    @property
    def all(self) -> tuple[str, str, str]:
        return (self.container, self.unbound, self.pool)


DOCKER_OWNERS = Owners(DEVICE_OWNER, UNBOUND_DEVICE_OWNER, POOL_DEVICE_OWNER)
K8S_OWNERS = Owners(K8S_DEVICE_OWNER, K8S_UNBOUND_DEVICE_OWNER, K8S_POOL_DEVICE_OWNER)
# Docker's device owners: its garbage collector looks at nothing else.
KURYR_DEVICE_OWNERS = DOCKER_OWNERS.all
K8S_DEVICE_OWNERS = K8S_OWNERS.all
# A node's own port on a pod network (kubelet's probes leave the host through
# it); device_id = the node's name.  Not a pod's: no pool or GC of pods takes it.
K8S_HOST_DEVICE_OWNER = "kuryr-k8s:host"
K8S_HOST_PORT_PREFIX = "kuryr-k8s-host-"
# The annotation on a Namespace naming its Neutron network (namespace driver).
K8S_NETWORK_ANNOTATION = "openstack.org/kuryr-network"
K8S_POD_TAG = "kuryr.k8s.pod:"  # on a pod's port: kuryr.k8s.pod:<namespace>/<name>
K8S_POD_PORT_NAME_PREFIX = "kuryr-pod-"
TAG_MAX = 60  # Neutron's limit on a tag
NAME_MAX = 255  # Neutron's limit on a port name
_POD_TAG_DIGEST = 8  # hex characters of sha256 that stand for a cut-off pod name


def pod_port_name(namespace: str, name: str) -> str:
    """A pod's port says which pod it serves: kuryr-pod-<namespace>/<name>, cut to
    Neutron's 255 characters (a namespace is <= 63 and a pod name <= 253)."""
    return f"{K8S_POD_PORT_NAME_PREFIX}{namespace}/{name}"[:NAME_MAX]


def pod_tag(namespace: str, name: str) -> str:
    """kuryr.k8s.pod:<namespace>/<name>, or, when that passes Neutron's 60 characters,
    its first characters, "~" and 8 hex characters of the sha256 of <namespace>/<name>:
    still unique for a pod (the port name carries the rest), and searchable."""
    whole = f"{namespace}/{name}"
    tag = K8S_POD_TAG + whole
    if len(tag) <= TAG_MAX:
        return tag
    digest = hashlib.sha256(whole.encode()).hexdigest()[:_POD_TAG_DIGEST]
    keep = TAG_MAX - len(K8S_POD_TAG) - 1 - _POD_TAG_DIGEST
    return f"{K8S_POD_TAG}{whole[:keep]}~{digest}"
EXPOSE_GROUP_PREFIX = "kuryr-expose-"  # security group of an endpoint's exposed ports
NETWORK_NAME_PREFIX = "kuryr-net-"
SUBNET_NAME_PREFIX = "kuryr-subnet-"
PORT_NAME_PREFIX = "kuryr-port-"
POOL_PORT_NAME = "kuryr-port-pool"  # a ready port no container has yet


def container_port_name(endpoint_id: str) -> str:
    return PORT_NAME_PREFIX + endpoint_id[:12]

DOCKER_ID = re.compile(r"^[0-9a-f]{64}$")


def network_tags(docker_network_id: str) -> list[str]:
    """The two tags that carry a 64-hex Docker network id (Neutron tags are <= 60 chars)."""
    return [NET_TAG_LOW + docker_network_id[:32], NET_TAG_HIGH + docker_network_id[32:]]


def existing_network_tag(docker_network_id: str) -> str:
    return NET_EXISTING_TAG + docker_network_id[:32]


def network_name(docker_network_id: str) -> str:
    return NETWORK_NAME_PREFIX + docker_network_id[:8]


def subnet_name(cidr: str) -> str:
    return SUBNET_NAME_PREFIX + cidr


def docker_network_ids_from_tags(tags: list[str]) -> list[str]:
    """Every Docker network id the tags may carry.  One Docker network: its id.  A
    Neutron network adopted by the dockerds of several hosts (or VMs) carries
    each one's two halves, which cannot be paired by the tags alone: every
    pairing is returned (the caller asks its own dockerd which one is its)."""
    lows = sorted(t[len(NET_TAG_LOW):] for t in tags if t.startswith(NET_TAG_LOW))
    highs = sorted(t[len(NET_TAG_HIGH):] for t in tags if t.startswith(NET_TAG_HIGH))
    return [low + high for low in lows for high in highs]


def docker_network_id_from_tags(tags: list[str]) -> str | None:
    """The Docker network id of tags that carry exactly one."""
    found = docker_network_ids_from_tags(tags)
    return found[0] if len(found) == 1 else None


def subnetpool_name(prefix: str, cidr: str) -> str:
    """kuryr-libnetwork's name of the subnetpool of a user's --subnet:
    ``kuryrPool-10.1.0.0/16`` ([DEFAULT] subnetpool_name_prefix)."""
    return f"{prefix}-{cidr}"


# A pool id handed to Docker names the subnet's CIDR, its allocation range, a
# token unique to this RequestPool and the Kuryr-named subnetpool
# (kuryrPool-<cidr>) that ReleasePool removes:
#   kuryr:<cidr>|<range>|<token>[|<subnetpool id>]
#   e.g. kuryr:10.1.0.0/16|10.1.5.0/24|4f0c2b9a81d3|0d5e...
# The network that CreateNetwork makes or adopts for the pool carries the tag
# kuryr.pool:<token>, so an address request finds its subnet even when several
# networks (adopted ones) share the CIDR.  Pool ids of earlier versions have
# no token (kuryr:<cidr>[|<range>]) and are still understood; kuryr-libnetwork's
# pool ids are subnetpool UUIDs (see parse_pool_id).
POOL_ID_PREFIX = "kuryr:"
POOL_TOKEN_TAG = "kuryr.pool:"  # noqa: S105 - a tag prefix, not a secret
POOL_TOKEN = re.compile(r"^[0-9a-f]{12}$")
POOL_ID_FIELDS = ("cidr", "ip_range", "token", "subnetpool")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True)
class PoolId:
    cidr: str
    ip_range: str = ""
    token: str = ""
    subnetpool: str = ""  # the kuryrPool-<cidr> subnetpool, removed at ReleasePool

    def __str__(self) -> str:
        if not self.token:
            return POOL_ID_PREFIX + "|".join(
                [self.cidr, *([self.ip_range] if self.ip_range else [])])
        fields = [self.cidr, self.ip_range, self.token]
        return POOL_ID_PREFIX + "|".join([*fields, *([self.subnetpool] if self.subnetpool else [])])


def pool_token_tag(token: str) -> str:
    return POOL_TOKEN_TAG + token


def parse_pool_id(value: str) -> PoolId:
    """ValueError when ``value`` is not a pool id Kuryr issued."""
    if not value.startswith(POOL_ID_PREFIX):
        raise ValueError(f"pool id {value!r} was not issued by Kuryr")
    fields = value[len(POOL_ID_PREFIX):].split("|")
    if len(fields) > len(POOL_ID_FIELDS) or (
            len(fields) == len(POOL_ID_FIELDS) and not UUID.match(fields[-1])):
        raise ValueError(f"pool id {value!r} was not issued by Kuryr")
    cidr, ip_range, token, subnetpool = [*fields, "", "", ""][:len(POOL_ID_FIELDS)]
    ipaddress.ip_network(cidr)  # raises ValueError
    if ip_range:
        ipaddress.ip_network(ip_range)
    if token and not POOL_TOKEN.match(token):
        raise ValueError(f"pool id {value!r} has a malformed token")
    return PoolId(cidr, ip_range, token, subnetpool)


HOST_TAG = "kuryr.host:"  # on networks Kuryr created: which host's Docker owns them
HOST_DIGEST_TAG = "kuryr.host-sha256:"  # the same, for a name too long for a tag


def host_tag(host: str) -> str:
    """kuryr.host:<host>, or, when that passes Neutron's 60 characters,
    kuryr.host-sha256:<the first 42 hex characters of the sha256 of <host>>.

    Never a cut name: two hosts whose names share a long prefix (node names of
    one cluster often do) would share the tag, and each one's garbage collector
    would take the other's networks for its own.  The two forms cannot equal
    each other (':' against '-' after "kuryr.host"), plain tags are one per
    name, and digests collide only as SHA-256 does (168 bits kept)."""
    tag = HOST_TAG + host
    if len(tag) <= TAG_MAX:
        return tag
    digest = hashlib.sha256(host.encode()).hexdigest()
    return HOST_DIGEST_TAG + digest[:TAG_MAX - len(HOST_DIGEST_TAG)]


def publishing_ip_description(host: str) -> str:
    """The description of the floating IP one host's Kuryr publishes ports on
    (found again by it: exact match)."""
    return f"kuryr-publish:{host}"


def host_mark(host: str) -> str:
    """Starts the description of what Kuryr makes for one host without a port to
    carry binding:host_id (security groups), so its garbage collector finds them."""
    return f"kuryr@{host}:"


DESCRIPTION_MAX = 255  # Neutron's limit on a description
EXPOSED = " ports a container exposes"


def expose_group_description(host: str) -> str:
    """The description of every expose group one host's Kuryr makes: one text
    per host, so its collector asks Neutron for exactly those groups (an exact
    filter) instead of listing every group it can see; the rules say which
    ports.  A name too long to fit is replaced by its sha256."""
    text = host_mark(host) + EXPOSED
    if len(text) <= DESCRIPTION_MAX:
        return text
    return f"kuryr@sha256-{hashlib.sha256(host.encode()).hexdigest()}:{EXPOSED}"


def is_hosts_expose_group(name: str, description: str, host: str) -> bool:
    """An expose group this host's Kuryr made: today's description, or an older
    build's (host_mark, then the ports)."""
    return name.startswith(EXPOSE_GROUP_PREFIX) and (
        description == expose_group_description(host) or description.startswith(host_mark(host)))


VM_TAG = "kuryr.vm:"  # nested: on every port Kuryr inside a VM made (<the VM's port id>)


def vm_tag(vm_port_id: str) -> str:
    """kuryr.vm:<the VM's port id>: 45 characters, unique per VM, never cut."""
    return VM_TAG + vm_port_id
