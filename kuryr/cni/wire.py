"""The wire contract between the `kuryr-cni` executable and Kuryr's node daemon.

Transport: HTTP/1.1 over a unix stream socket, root-only (mode 0600, owned by
root; the runtime runs CNI plugins as root).  Default path /run/kuryr/cni.sock;
the network configuration's ``daemon_socket`` key overrides it.  One request per
CNI invocation, one connection per request.

Request: ``POST /v1/<command>`` where <command> is add, del, check, status or gc
(VERSION is answered by the executable alone), ``Content-Type: application/json``,
body::

    {
      "command": "ADD",                   # CNI_COMMAND
      "cniVersion": "1.0.0",              # the configuration's version
      "containerId": "3f2a...",           # CNI_CONTAINERID ("" for STATUS, GC)
      "netns": "/var/run/netns/cni-...",  # CNI_NETNS ("" when the runtime sent none)
      "ifname": "eth0",                   # CNI_IFNAME
      "pod": {"namespace": "default", "name": "web-0", "uid": "...",
              "infraContainerId": "..."},   # from CNI_ARGS K8S_POD_*; null if absent
      "args": {"K8S_POD_NAME": "web-0", "IgnoreUnknown": "1", ...},  # all CNI_ARGS
      "validAttachments": [{"containerID": "...", "ifname": "eth0"}],  # GC only, else []
      "config": {...}                     # the network configuration from stdin, whole
                                          # (name, type, prevResult, Kuryr's own keys)
    }

Answer, success: status 200 and a JSON object.  For ADD it is the result in the
1.1.0 shape, whatever version the runtime speaks (the executable renders it for
the runtime's version)::

    {"interfaces": [{"name": "eth0", "mac": "fa:16:3e:..", "sandbox": "/var/run/netns/.."}],
     "ips": [{"address": "10.0.0.5/24", "gateway": "10.0.0.1", "interface": 0}],
     "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}],
     "dns": {"nameservers": ["10.0.0.2"], "search": ["default.svc.cluster.local"]}}

For DEL, CHECK, STATUS and GC the body is ``{}`` (ignored).  DEL of a container
the daemon does not know is a success (or code 3, which the executable turns
into one).

Answer, failure: any status other than 200, body ``{"code": int, "msg": str,
"details": str}`` with the spec's codes (3 unknown container, 7 invalid config,
11 try again later, 50/51 for STATUS) or Kuryr's (100+); the executable passes it
to the runtime as is.  A body that is not that is reported as code 100.

Time limits (the executable's, per command): see TIMEOUTS.
"""

from __future__ import annotations

import json
from typing import Any

from kuryr.cni.protocol import (
    NEWEST_VERSION,
    CniError,
    Code,
    Command,
    Dns,
    Interface,
    IPConfig,
    Request,
    Result,
    Route,
    render_result,
)

# Seconds the executable waits for the daemon's answer.  ADD waits for Neutron to
# bind the port and the switch to program it; the others are local bookkeeping.
TIMEOUTS = {Command.ADD: 60.0, Command.DEL: 30.0, Command.CHECK: 30.0,
            Command.STATUS: 5.0, Command.GC: 60.0}
MAX_ANSWER = 1 << 20  # a result is a few hundred bytes; more is not a CNI answer


def path_for(command: Command) -> str:
    return f"/v1/{command.value.lower()}"


def request_body(request: Request) -> dict[str, Any]:
    env, config = request.env, request.config
    pod = env.pod
    return {
        "command": env.command.value,
        "cniVersion": config.cni_version,
        "containerId": env.container_id,
        "netns": env.netns,
        "ifname": env.ifname,
        "pod": None if pod is None else {
            "namespace": pod.namespace, "name": pod.name, "uid": pod.uid,
            "infraContainerId": pod.infra_container_id},
        "args": dict(env.args),
        "validAttachments": [{"containerID": a.container_id, "ifname": a.ifname}
                             for a in config.valid_attachments],
        "config": dict(config.raw),
    }


def encode_request(request: Request) -> bytes:
    return json.dumps(request_body(request)).encode()


def decode_answer(status: int, body: bytes) -> dict[str, Any]:
    """The daemon's success body, or its error raised as the CniError it names."""
    try:
        answer = json.loads(body) if body.strip() else {}
    except (ValueError, UnicodeDecodeError):
        answer = None
    if status == 200 and isinstance(answer, dict):  # noqa: PLR2004 (HTTP OK)
        return answer
    if isinstance(answer, dict) and _is_error(answer):
        raise CniError(answer["code"], answer["msg"], str(answer.get("details", "")))
    snippet = body[:200].decode(errors="replace")
    raise CniError(Code.DAEMON_ANSWER_UNREADABLE,
                   f"the Kuryr CNI daemon answered HTTP {status} without a CNI answer",
                   snippet)


def _is_error(answer: dict[str, Any]) -> bool:
    code = answer.get("code")
    return (isinstance(code, int) and not isinstance(code, bool) and code > 0
            and isinstance(answer.get("msg"), str))


def result_from_answer(answer: dict[str, Any]) -> Result:
    """The ADD result in the daemon's answer; code 100 when it is malformed."""
    try:
        result = Result(
            interfaces=tuple(_interface(i) for i in answer.get("interfaces", [])),
            ips=tuple(_ip(i) for i in answer.get("ips", [])),
            routes=tuple(_route(r) for r in answer.get("routes", [])),
            dns=_dns(answer.get("dns", {})))
        _check_indexes(result)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise CniError(Code.DAEMON_ANSWER_UNREADABLE,
                       "the Kuryr CNI daemon answered a malformed result",
                       f"{exc}: {answer!r}"[:500]) from None
    return result


def _interface(raw: dict[str, Any]) -> Interface:
    return Interface(name=_str(raw["name"]), mac=_str(raw.get("mac", "")),
                     sandbox=_str(raw.get("sandbox", "")), mtu=_int(raw.get("mtu", 0)),
                     socket_path=_str(raw.get("socketPath", "")),
                     pci_id=_str(raw.get("pciID", "")))


def _ip(raw: dict[str, Any]) -> IPConfig:
    address = _str(raw["address"])
    if "/" not in address:
        raise ValueError(f"address {address!r} has no prefix length")
    interface = raw.get("interface")
    ip = IPConfig(address=address, gateway=_str(raw.get("gateway", "")),
                  interface=None if interface is None else _int(interface))
    ip.ip_version  # noqa: B018 (checks the address parses)
    return ip


def _route(raw: dict[str, Any]) -> Route:
    table, scope = raw.get("table"), raw.get("scope")
    return Route(dst=_str(raw["dst"]), gw=_str(raw.get("gw", "")), mtu=_int(raw.get("mtu", 0)),
                 advmss=_int(raw.get("advmss", 0)), priority=_int(raw.get("priority", 0)),
                 table=None if table is None else _int(table),
                 scope=None if scope is None else _int(scope))


def _dns(raw: dict[str, Any]) -> Dns:
    return Dns(nameservers=_strs(raw.get("nameservers", [])), domain=_str(raw.get("domain", "")),
               search=_strs(raw.get("search", [])), options=_strs(raw.get("options", [])))


def _check_indexes(result: Result) -> None:
    for ip in result.ips:
        if ip.interface is not None and not 0 <= ip.interface < len(result.interfaces):
            raise ValueError(f"ip {ip.address} names interface {ip.interface}, "
                             f"the result has {len(result.interfaces)}")


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"{value!r} is not a non-negative integer")
    return value


def _strs(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise TypeError(f"{value!r} is not a list")
    return tuple(_str(v) for v in value)


def result_as_answer(result: Result) -> dict[str, Any]:
    """The daemon's side: a Result as the success body of an ADD (the 1.1.0
    shape, without cniVersion, which the executable adds for the runtime)."""
    answer = render_result(result, NEWEST_VERSION)
    del answer["cniVersion"]
    return answer
