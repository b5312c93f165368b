"""Docker's published and exposed ports, parsed from endpoint options.

Docker sends ``com.docker.network.portmap`` ([{"Proto", "Port", "HostIP",
"HostPort", "HostPortEnd"}]) and ``com.docker.network.endpoint.exposedports``
([{"Proto", "Port"}]); protocols are IP protocol numbers.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, replace
from typing import Any

from kuryr import errors

PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp"}
DESCRIPTION_PREFIX = "kuryr-publish:"
DESCRIPTION_MAX = 255  # characters in a Neutron port's description
MAX_PORT = 65535
EVERY_ADDRESS = "0.0.0.0"  # noqa: S104 - only shown, as Docker shows an empty HostIP
EVERY_ADDRESSES = frozenset(("", EVERY_ADDRESS, "::"))


@dataclass(frozen=True, order=True)
class Exposed:
    proto: str
    port: int


@dataclass(frozen=True, order=True)
class Published:
    proto: str
    container_port: int
    host_ip: str  # "" = every address
    host_port: int  # 0 = pick a free one
    host_port_end: int = 0  # > host_port: any free port of the range will do

    @property
    def on_every_address(self) -> bool:
        """Published on all of the host's addresses (what a floating IP may extend)."""
        return self.host_ip in EVERY_ADDRESSES

    def label(self) -> str:
        host = f"[{self.host_ip}]" if ":" in self.host_ip else (self.host_ip or EVERY_ADDRESS)
        return f"{host}:{self.host_port}->{self.container_port}/{self.proto}"


PORTMAP_OPTION = "com.docker.network.portmap"
EXPOSED_OPTION = "com.docker.network.endpoint.exposedports"


def _integer(value: Any) -> int | None:  # noqa: ANN401 - a JSON value
    """A JSON integer, else None: int() would take true as 1, 80.5 as 80 and
    "80" as 80, none of which Docker sends."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _proto(value: Any) -> str:  # noqa: ANN401 - a JSON value
    number = _integer(value)
    if number not in PROTOCOLS:
        raise errors.InvalidInput(f"Proto: unknown port protocol {value!r}")
    return PROTOCOLS[number]


def _port(value: Any, what: str, allow_zero: bool = False) -> int:  # noqa: ANN401
    port = _integer(value)
    if port is None:
        raise errors.InvalidInput(f"{what} {value!r} is not a port number")
    if not (0 if allow_zero else 1) <= port <= MAX_PORT:
        raise errors.InvalidInput(f"{what} {port} is out of range")
    return port


def _entries(options: dict | None, key: str) -> list[dict]:
    """The objects of one option, which must be a list of objects (or absent)."""
    value = (options or {}).get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise errors.InvalidInput(
            f"{key} must be a list of objects, not {type(value).__name__} {value!r:.40}")
    for index, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise errors.InvalidInput(f"{key}[{index}] must be an object, not "
                                      f"{type(entry).__name__} {entry!r:.40}")
    return value


def _named(key: str, index: int, parse: Any, entry: dict) -> Any:  # noqa: ANN401
    """``parse(entry)``, its error naming the option and the entry."""
    try:
        return parse(entry)
    except errors.InvalidInput as exc:
        raise errors.InvalidInput(f"{key}[{index}].{exc}") from None


def _exposed(entry: dict) -> Exposed:
    return Exposed(_proto(entry.get("Proto")), _port(entry.get("Port"), "Port: exposed port"))


def _zero_if_null(entry: dict, key: str) -> Any:  # noqa: ANN401 - a JSON value
    value = entry.get(key)
    return 0 if value is None else value


def _mapping(entry: dict) -> Published:
    proto = _proto(entry.get("Proto"))
    host_ip = entry.get("HostIP")
    host_ip = "" if host_ip is None else host_ip
    if not isinstance(host_ip, str):
        raise errors.InvalidInput(f"HostIP: host IP {host_ip!r} is not an address")
    if host_ip:
        try:
            ipaddress.ip_address(host_ip)
        except ValueError as exc:
            raise errors.InvalidInput(f"HostIP: host IP {host_ip!r} is not an address") \
                from exc
    container_port = _port(entry.get("Port"), "Port: container port")
    first = _port(_zero_if_null(entry, "HostPort"), "HostPort: host port", allow_zero=True)
    last = _port(_zero_if_null(entry, "HostPortEnd"), "HostPortEnd: host port",
                 allow_zero=True) or first
    if last < first:
        raise errors.InvalidInput(f"HostPortEnd: host port range {first}-{last} is reversed")
    return Published(proto, container_port, host_ip, first, last if last > first else 0)


def _mappings(options: dict | None) -> list[Published]:
    return [_named(PORTMAP_OPTION, index, _mapping, entry)
            for index, entry in enumerate(_entries(options, PORTMAP_OPTION))]


def check_port_options(options: dict | None) -> None:
    """InvalidInput, naming the option and entry, when Docker's port maps or
    exposed ports are not lists of objects of integer ports (what a handler
    would use them for is its own business: sctp, say)."""
    _mappings(options)
    for index, entry in enumerate(_entries(options, EXPOSED_OPTION)):
        _named(EXPOSED_OPTION, index, _exposed, entry)


def exposed_ports(options: dict | None) -> list[Exposed]:
    """Exposed ports, including the container side of every published port."""
    found = {_named(EXPOSED_OPTION, index, _exposed, entry)
             for index, entry in enumerate(_entries(options, EXPOSED_OPTION))}
    found |= {Exposed(p.proto, p.container_port) for p in published_ports(options)}
    return sorted(found)


def published_ports(options: dict | None, default_host_ip: str = "") -> list[Published]:
    """Docker's port map; a port without a host IP listens on ``default_host_ip``
    ([publish] default_host_ip, "" = every address), as Docker's bridge driver
    does with dockerd's "ip"."""
    result = [p if p.host_ip else replace(p, host_ip=default_host_ip)
              for p in _mappings(options)]
    if any(p.proto == "sctp" for p in result):
        raise errors.InvalidInput("publishing sctp ports is not supported by Kuryr")
    return sorted(set(result))


def encode(published: list[Published], security_group: str | None) -> str:
    """A Neutron port description recording what Kuryr set up for the container's
    ports (<= DESCRIPTION_MAX chars), so a restarted Kuryr can rebuild and undo it."""
    rows = [[p.proto, p.container_port, p.host_ip, p.host_port] for p in published]
    text = DESCRIPTION_PREFIX + json.dumps({"sg": security_group, "p": rows},
                                           separators=(",", ":"))
    if len(text) > DESCRIPTION_MAX:
        raise errors.InvalidInput(f"too many published ports ({len(published)}) for one "
                                  "container: Kuryr records them in the port description")
    return text


def decode(description: str | None) -> tuple[str | None, list[Published]]:
    """(security group id, published ports) from a port description."""
    if not description or not description.startswith(DESCRIPTION_PREFIX):
        return None, []
    try:
        data = json.loads(description[len(DESCRIPTION_PREFIX):])
        rows = [Published(str(a), int(b), str(c), int(d)) for a, b, c, d in data["p"]]
        return data.get("sg"), rows
    except (ValueError, TypeError, KeyError):
        return None, []
