"""The name a front end gives an endpoint's container, for Neutron's DNS.

Docker tells a remote driver nothing about the container (kuryr/libnetwork/
names.py learns names from dockerd's events); a CNI front end has the pod's name
in its ADD.  The core asks its Naming before it records an endpoint on its port,
so the name travels in the same Neutron write as device_id.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol

DNS_LABEL_MAX = 63
_NOT_IN_LABEL = re.compile(r"[^a-z0-9-]+")

Write = Callable[[str], None]  # the record write, given the DNS label ("" for none)


class Naming(Protocol):
    def when_named(self, endpoint_id: str, write: Write) -> None:
        """Call ``write`` once: with the endpoint's DNS label when it is known
        soon enough, else with ""."""


class NoNames:
    """No names to wait for: the endpoint is recorded at once."""

    def when_named(self, endpoint_id: str, write: Write) -> None:
        write("")


def dns_label(name: str) -> str:
    """A container name as one DNS label (RFC 1123): lower case; runs of what a
    label cannot hold (Docker allows _ and .) become one hyphen; at most 63
    characters; no hyphen at either end.  "" when nothing is left."""
    label = _NOT_IN_LABEL.sub("-", name.lstrip("/").lower())
    return label[:DNS_LABEL_MAX].strip("-")
