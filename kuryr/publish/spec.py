"""Docker's published and exposed ports, parsed from endpoint options.

Docker sends ``com.docker.network.portmap`` ([{"Proto", "Port", "HostIP",
"HostPort", "HostPortEnd"}]) and ``com.docker.network.endpoint.exposedports``
([{"Proto", "Port"}]); protocols are IP protocol numbers.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
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


def _proto(value: Any) -> str:  # noqa: ANN401 - a JSON value: int() judges it
    try:
        return PROTOCOLS[int(value)]
    except (KeyError, TypeError, ValueError) as exc:
        raise errors.InvalidInput(f"unknown port protocol {value!r}") from exc


def _port(value: Any, what: str, allow_zero: bool = False) -> int:  # noqa: ANN401
    try:
        port = int(value)
    except (TypeError, ValueError) as exc:
        raise errors.InvalidInput(f"{what} {value!r} is not a port number") from exc
    if not (0 if allow_zero else 1) <= port <= MAX_PORT:
        raise errors.InvalidInput(f"{what} {port} is out of range")
    return port


def exposed_ports(options: dict | None) -> list[Exposed]:
    """Exposed ports, including the container side of every published port."""
    options = options or {}
    found = {Exposed(_proto(e.get("Proto")), _port(e.get("Port"), "exposed port"))
             for e in options.get("com.docker.network.endpoint.exposedports") or []
             if isinstance(e, dict)}
    found |= {Exposed(p.proto, p.container_port) for p in published_ports(options)}
    return sorted(found)


def published_ports(options: dict | None, default_host_ip: str = "") -> list[Published]:
    """Docker's port map; a port without a host IP listens on ``default_host_ip``
    ([publish] default_host_ip, "" = every address), as Docker's bridge driver
    does with dockerd's "ip"."""
    result = []
    for entry in (options or {}).get("com.docker.network.portmap") or []:
        if not isinstance(entry, dict):
            raise errors.InvalidInput("com.docker.network.portmap entries must be objects")
        proto = _proto(entry.get("Proto"))
        if proto == "sctp":
            raise errors.InvalidInput("publishing sctp ports is not supported by Kuryr")
        host_ip = str(entry.get("HostIP") or default_host_ip)
        if host_ip:
            try:
                ipaddress.ip_address(host_ip)
            except ValueError as exc:
                raise errors.InvalidInput(f"host IP {host_ip!r} is not an address") from exc
        container_port = _port(entry.get("Port"), "container port")
        first = _port(entry.get("HostPort") or 0, "host port", allow_zero=True)
        last = _port(entry.get("HostPortEnd") or first, "host port", allow_zero=True)
        if last < first:
            raise errors.InvalidInput(f"host port range {first}-{last} is reversed")
        result.append(Published(proto, container_port, host_ip, first,
                                last if last > first else 0))
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
