"""The CNI protocol (spec 0.3.0 .. 1.1.0) as pure functions: the environment and
the network configuration in, typed requests out; results and errors rendered
for the version the runtime asked for.

No I/O here (the executable in main.py reads and writes), and only the standard
library: the executable starts for every pod and must start in a blink.  That is
also why the records are NamedTuples, not dataclasses: dataclasses (and the
inspect module they import) cost ~30 ms of start-up on this machine, NamedTuples
~3 ms, and they are as immutable.

Error codes are the spec's (SPEC.md, "Error"): 0-99 are reserved by the spec,
100+ are the plugin's own.  Kuryr's own codes are listed in ``Code`` below and in
docs/kubernetes.md.
"""

# No `from __future__ import annotations` here: NamedTuple compiles every string
# annotation into a ForwardRef at class creation, ~5 ms of start-up for nothing.
import json
import re
from collections.abc import Mapping
from enum import IntEnum, StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
NEWEST_VERSION = SUPPORTED_VERSIONS[-1]
# libcni reads a configuration without cniVersion as 0.1.0 (types/create.DecodeVersion).
UNVERSIONED = "0.1.0"
DEFAULT_DAEMON_SOCKET = "/run/kuryr/cni.sock"

# The spec: "Must start with an alphanumeric character, optionally followed by any
# combination of one or more alphanumeric characters, underscore, dot or hyphen".
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
IFNAME_MAX = 15  # IFNAMSIZ - 1: the kernel refuses longer interface names


class Code(IntEnum):
    """CNI error codes: the spec's, then Kuryr's own (100+)."""

    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENVIRONMENT = 4
    IO_FAILURE = 5
    DECODE_FAILURE = 6
    INVALID_CONFIG = 7
    TRY_AGAIN_LATER = 11
    PLUGIN_NOT_AVAILABLE = 50
    PLUGIN_NOT_AVAILABLE_LIMITED = 51
    # Kuryr's: the node daemon answered, but not with a CNI answer (a proxy, a
    # different program on the socket, a crash mid-answer).
    DAEMON_ANSWER_UNREADABLE = 100
    # Kuryr's: the node daemon took longer than the command's time limit; it may
    # still finish, so the runtime's DEL-then-ADD retry is the way out.
    DAEMON_TIMEOUT = 101
    # Kuryr's, answered by the node daemon (docs/kubernetes.md, "Error codes"):
    # the request collides with what is there (the interface name is taken in
    # the pod's namespace by another interface, an address in use).
    CONFLICT = 102
    # The node itself failed (netlink, Open vSwitch refused, an unexpected error).
    HOST_FAILURE = 103
    # CHECK: the pod's interface is missing or not as ADD set it up.
    INTERFACE_NOT_AS_SET = 104


class CniError(Exception):
    """An error the runtime is told about as ``{cniVersion, code, msg, details}``."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details


class Command(StrEnum):
    ADD = "ADD"
    DEL = "DEL"
    CHECK = "CHECK"
    STATUS = "STATUS"
    VERSION = "VERSION"
    GC = "GC"


# The oldest configuration version in which each command exists (the spec's
# changelog; libcni's skel answers code 1 "config version does not allow CHECK").
_INTRODUCED_IN = {Command.CHECK: "0.4.0", Command.GC: "1.1.0", Command.STATUS: "1.1.0"}

# Required environment per command (SPEC.md, section 2).  CNI_PATH is left out
# even for GC: Kuryr delegates to no other plugin, so it never reads it.
_REQUIRED_ENV = {
    Command.ADD: ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    Command.CHECK: ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    Command.DEL: ("CNI_CONTAINERID", "CNI_IFNAME"),
    Command.STATUS: (),
    Command.VERSION: (),
    Command.GC: (),
}


# -- the request ----------------------------------------------------------------------
class Pod(NamedTuple):
    """The Kubernetes pod the runtime names in CNI_ARGS (kubelet and containerd do)."""

    namespace: str
    name: str
    uid: str = ""
    infra_container_id: str = ""


class Environment(NamedTuple):
    """The CNI_* variables, checked for the command."""

    command: Command
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: Mapping[str, str] = MappingProxyType({})
    path: tuple[str, ...] = ()

    @property
    def pod(self) -> Pod | None:
        namespace = self.args.get("K8S_POD_NAMESPACE", "")
        name = self.args.get("K8S_POD_NAME", "")
        if not (namespace and name):
            return None
        return Pod(namespace, name, self.args.get("K8S_POD_UID", ""),
                   self.args.get("K8S_POD_INFRA_CONTAINER_ID", ""))


class Attachment(NamedTuple):
    """One still-valid attachment named by a GC request."""

    container_id: str
    ifname: str


class NetworkConfig(NamedTuple):
    """The plugin configuration from stdin: the keys Kuryr reads, and all of it
    (``raw``) for the node daemon, which may read more."""

    cni_version: str
    name: str
    type: str
    daemon_socket: str
    prev_result: Mapping[str, Any] | None
    valid_attachments: tuple[Attachment, ...]
    raw: Mapping[str, Any]


class Request(NamedTuple):
    env: Environment
    config: NetworkConfig


def parse_environment(environ: Mapping[str, str]) -> Environment:
    """The CNI_* variables; error 4 names every missing or invalid one."""
    command_text = environ.get("CNI_COMMAND", "")
    if not command_text:
        raise CniError(Code.INVALID_ENVIRONMENT, "required env variables [CNI_COMMAND] missing")
    try:
        command = Command(command_text)
    except ValueError:
        raise CniError(Code.INVALID_ENVIRONMENT,
                       f"unknown CNI_COMMAND: {command_text}") from None
    missing = [name for name in _REQUIRED_ENV[command] if not environ.get(name)]
    if missing:
        raise CniError(Code.INVALID_ENVIRONMENT,
                       f"required env variables [{','.join(missing)}] missing")
    container_id = environ.get("CNI_CONTAINERID", "")
    ifname = environ.get("CNI_IFNAME", "")
    if "CNI_CONTAINERID" in _REQUIRED_ENV[command]:
        _check_container_id(container_id)
    if "CNI_IFNAME" in _REQUIRED_ENV[command]:
        _check_ifname(ifname)
    return Environment(command=command, container_id=container_id,
                       netns=environ.get("CNI_NETNS", ""), ifname=ifname,
                       args=parse_cni_args(environ.get("CNI_ARGS", "")),
                       path=tuple(p for p in environ.get("CNI_PATH", "").split(":") if p))


def parse_cni_args(text: str) -> dict[str, str]:
    """``K8S_POD_NAMESPACE=default;K8S_POD_NAME=web`` as a dict."""
    args: dict[str, str] = {}
    for pair in filter(None, text.split(";")):
        key, sep, value = pair.partition("=")
        if not (sep and key):
            raise CniError(Code.INVALID_ENVIRONMENT,
                           f"CNI_ARGS: invalid pair {pair!r} (expected KEY=VALUE)")
        args[key] = value
    return args


def _check_container_id(value: str) -> None:
    if not _NAME.fullmatch(value):
        raise CniError(Code.INVALID_ENVIRONMENT, f"CNI_CONTAINERID: invalid id {value!r}",
                       "it must start with a letter or digit, then letters, digits, _ . -")


def _check_ifname(value: str) -> None:
    # The kernel's rules (dev_valid_name): at most 15 bytes, not . or .., no / : or space.
    if (len(value.encode()) > IFNAME_MAX or value in (".", "..")
            or any(c in value for c in "/:") or any(c.isspace() for c in value)):
        raise CniError(Code.INVALID_ENVIRONMENT, f"CNI_IFNAME: invalid interface name {value!r}")


def parse_config(command: Command, stdin: bytes) -> NetworkConfig:
    """The network configuration on stdin, checked in libcni's order: decoding
    (6), the network name (7), the version (1), then Kuryr's own keys (7)."""
    raw = _decode_object(stdin)
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise CniError(Code.INVALID_CONFIG, "missing network name")
    if not _NAME.fullmatch(name):
        raise CniError(Code.INVALID_CONFIG, f"invalid network name {name!r}")
    version = _config_version(raw)
    _check_version_allows(command, version)
    return NetworkConfig(cni_version=version, name=name, type=_string(raw, "type", ""),
                         daemon_socket=_daemon_socket(raw), prev_result=_prev_result(raw),
                         valid_attachments=_valid_attachments(raw), raw=raw)


def requested_version(stdin: bytes) -> str:
    """The cniVersion a VERSION probe (or a request that failed to parse) names, to
    answer in; the newest one when there is none to read.  Never fails: a runtime
    probing versions gets an answer whatever it sent."""
    try:
        version = json.loads(stdin).get("cniVersion")
    except (ValueError, AttributeError):
        return NEWEST_VERSION
    return version if isinstance(version, str) and version else NEWEST_VERSION


def _decode_object(stdin: bytes) -> dict[str, Any]:
    try:
        raw = json.loads(stdin)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniError(Code.DECODE_FAILURE, "error decoding the network config", str(exc)) \
            from None
    if not isinstance(raw, dict):
        raise CniError(Code.DECODE_FAILURE, "the network config is not a JSON object")
    return raw


def _config_version(raw: Mapping[str, Any]) -> str:
    version = raw.get("cniVersion", UNVERSIONED) or UNVERSIONED
    if not isinstance(version, str):
        raise CniError(Code.DECODE_FAILURE, f"cniVersion {version!r} is not a string")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(Code.INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       f"config is {version!r}, plugin supports {list(SUPPORTED_VERSIONS)}")
    return version


def _check_version_allows(command: Command, version: str) -> None:
    introduced = _INTRODUCED_IN.get(command)
    if introduced and version_tuple(version) < version_tuple(introduced):
        raise CniError(Code.INCOMPATIBLE_VERSION, f"config version does not allow {command}",
                       f"{command} needs cniVersion {introduced} or later, config is {version}")


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _string(raw: Mapping[str, Any], key: str, default: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str):
        raise CniError(Code.INVALID_CONFIG, f"{key}: {value!r} is not a string")
    return value


def _daemon_socket(raw: Mapping[str, Any]) -> str:
    path = _string(raw, "daemon_socket", DEFAULT_DAEMON_SOCKET)
    if not path.startswith("/"):
        raise CniError(Code.INVALID_CONFIG, f"daemon_socket: {path!r} is not an absolute path")
    return path


def _prev_result(raw: Mapping[str, Any]) -> Mapping[str, Any] | None:
    prev = raw.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(Code.INVALID_CONFIG, "prevResult is not a JSON object")
    return prev


def _valid_attachments(raw: Mapping[str, Any]) -> tuple[Attachment, ...]:
    items = raw.get("cni.dev/valid-attachments", [])
    if not isinstance(items, list):
        raise CniError(Code.INVALID_CONFIG, "cni.dev/valid-attachments is not a list")
    attachments = []
    for item in items:
        if not (isinstance(item, dict) and isinstance(item.get("containerID"), str)
                and isinstance(item.get("ifname"), str)):
            raise CniError(Code.INVALID_CONFIG, f"cni.dev/valid-attachments: {item!r} is not "
                           '{"containerID": "...", "ifname": "..."}')
        attachments.append(Attachment(item["containerID"], item["ifname"]))
    return tuple(attachments)


# -- the result -----------------------------------------------------------------------
class Interface(NamedTuple):
    name: str
    mac: str = ""
    sandbox: str = ""  # the netns path for an interface in the container, "" on the host
    mtu: int = 0
    socket_path: str = ""
    pci_id: str = ""


class IPConfig(NamedTuple):
    address: str  # CIDR notation: 10.1.0.5/16
    gateway: str = ""
    interface: int | None = None  # index into Result.interfaces

    @property
    def ip_version(self) -> str:
        import ipaddress  # only ADD needs it; VERSION starts without it

        return str(ipaddress.ip_interface(self.address).version)


class Route(NamedTuple):
    dst: str
    gw: str = ""
    mtu: int = 0
    advmss: int = 0
    priority: int = 0
    table: int | None = None
    scope: int | None = None


class Dns(NamedTuple):
    nameservers: tuple[str, ...] = ()
    domain: str = ""
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


class Result(NamedTuple):
    """An ADD result, independent of the version it will be rendered for."""

    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: Dns = Dns()


def render_result(result: Result, version: str) -> dict[str, Any]:
    """The result as the runtime's version spells it: 0.3.x and 0.4.0 give each IP
    its ``version`` ("4"/"6") and know only name/mac/sandbox and dst/gw; 1.0.0
    dropped ``version``; 1.1.0 added mtu, socketPath, pciID and the route options.
    Empty fields are left out, as libcni's omitempty does."""
    modern = version_tuple(version) >= (1, 0, 0)
    rendered: dict[str, Any] = {"cniVersion": version}
    if result.interfaces:
        rendered["interfaces"] = [_render_interface(i, modern) for i in result.interfaces]
    if result.ips:
        rendered["ips"] = [_render_ip(ip, modern) for ip in result.ips]
    if result.routes:
        rendered["routes"] = [_render_route(r, modern) for r in result.routes]
    dns = _render_dns(result.dns)
    if dns:
        rendered["dns"] = dns
    return rendered


def _without_empty(fields: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value not in ("", 0, None, [])}


def _render_interface(interface: Interface, modern: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {"mac": interface.mac, "sandbox": interface.sandbox}
    if modern:
        fields |= {"mtu": interface.mtu, "socketPath": interface.socket_path,
                   "pciID": interface.pci_id}
    return {"name": interface.name, **_without_empty(fields)}


def _render_ip(ip: IPConfig, modern: bool) -> dict[str, Any]:
    rendered: dict[str, Any] = {} if modern else {"version": ip.ip_version}
    rendered["address"] = ip.address
    if ip.gateway:
        rendered["gateway"] = ip.gateway
    if ip.interface is not None:  # index 0 is an index, not an empty value
        rendered["interface"] = ip.interface
    return rendered


def _render_route(route: Route, modern: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {"gw": route.gw}
    if modern:
        fields |= {"mtu": route.mtu, "advmss": route.advmss, "priority": route.priority}
    rendered = {"dst": route.dst, **_without_empty(fields)}
    if modern:  # table 0 and scope 0 (global) are meaningful
        rendered |= {k: v for k, v in (("table", route.table), ("scope", route.scope))
                     if v is not None}
    return rendered


def _render_dns(dns: Dns) -> dict[str, Any]:
    return _without_empty({"nameservers": list(dns.nameservers), "domain": dns.domain,
                           "search": list(dns.search), "options": list(dns.options)})


def render_error(error: CniError, version: str) -> dict[str, Any]:
    rendered: dict[str, Any] = {"cniVersion": version, "code": int(error.code), "msg": error.msg}
    if error.details:
        rendered["details"] = error.details
    return rendered


def render_version(version: str) -> dict[str, Any]:
    return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}


def error_version(stdin: bytes) -> str:
    """The version to render an error in: the configuration's when Kuryr speaks
    it, else the newest (the runtime could not have parsed an older one better)."""
    version = requested_version(stdin)
    return version if version in SUPPORTED_VERSIONS else NEWEST_VERSION


def del_succeeds_despite(error: CniError) -> bool:
    """DEL is idempotent (SPEC.md: "return success if the interface in question,
    or any modifications added, are missing"): an unknown container is done."""
    return error.code == Code.UNKNOWN_CONTAINER
