"""Who may call the plugin API: whoever reaches it is root-equivalent (it plugs
ports into the host and creates Neutron resources with Kuryr's credentials).

The loopback TCP listener (kuryr_uri http://127.0.0.1:23750) is reachable by
every local process, and by a web page through the browser: a cross-origin
POST of a "simple" content type needs no preflight, and DNS rebinding makes a
page's own name resolve to 127.0.0.1.  Docker's plugin client never sends an
Origin header nor a Content-Type, and names a loopback host over TCP (no
host at all over a unix socket: dockerd 20.10 sends an empty Host), so refusing
anything else costs Docker nothing and closes both browser paths.
"""

from __future__ import annotations

import ipaddress
import re

# application/json, and application/<anything>+json (Docker's own
# application/vnd.docker.plugins.v1.2+json among them), with any parameters.
JSON_MEDIA_TYPE = re.compile(r"^application/(json|[a-z0-9.!#$&^_-]+\+json)$")
PORT = re.compile(r"^[0-9]{1,5}$")


def refusal(headers: dict[str, str], scheme: str) -> str | None:
    """Why a request with these (lower-cased) headers is refused, or None."""
    if "origin" in headers:
        return (f"requests from web pages are refused (Origin {headers['origin']!r}): "
                "the plugin API is root-equivalent")
    content_type = headers.get("content-type")
    if content_type is not None and not is_json(content_type):
        return (f"Content-Type {content_type!r} is refused: plugin calls are JSON "
                "(or carry no Content-Type, as Docker's)")
    # A TLS listener is reached by its name from other hosts; its client
    # certificates are what keeps callers out, and a rebound name fails TLS.
    # An empty Host is what dockerd 20.10 sends over the unix socket; a browser
    # always names the host it thinks it talks to.
    host = headers.get("host", "")
    if scheme != "https" and host and not is_loopback_host(host):
        return (f"Host {headers.get('host', '')!r} is refused: the plugin API answers "
                "only to localhost, *.localhost and loopback addresses (a browser "
                "sends another name when DNS rebinding points it here)")
    return None


def is_json(content_type: str) -> bool:
    media_type = content_type.split(";", maxsplit=1)[0].strip().lower()
    return bool(JSON_MEDIA_TYPE.match(media_type))


def is_loopback_host(host: str) -> bool:
    """``localhost``, ``*.localhost`` or a loopback address, with or without a port
    (an IPv6 address in brackets)."""
    name = _without_port(host.strip().lower())
    if name is None:
        return False
    name = name.removesuffix(".")  # the fully qualified form of the same name
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _without_port(host: str) -> str | None:
    """The name or address of a Host header; None when it is malformed."""
    if host.startswith("["):
        address, _, rest = host[1:].partition("]")
        if rest and not (rest.startswith(":") and PORT.match(rest[1:])):
            return None
        return address
    if host.count(":") == 1:
        name, _, port = host.partition(":")
        return name if PORT.match(port) else None
    return host  # a bare name, IPv4 address, or (unbracketed) IPv6 address
