"""What to plug: a small data model kept apart from how it is plugged."""

from __future__ import annotations

from dataclasses import dataclass

# Linux interface names are at most 15 bytes; these prefixes plus 11
# characters of the Neutron port id keep names unique and recognisable.
HOST_PREFIX = "tap"
CONTAINER_PREFIX = "tc"


@dataclass(frozen=True)
class VIF:
    """A Neutron port as the host's switch must see it."""

    port_id: str
    mac: str
    vif_type: str = "ovs"  # "ovs" or "bridge", as Neutron's binding says
    bridge: str = "br-int"
    mtu: int | None = None
    addresses: tuple[str, ...] = ()  # the port's fixed IPs (the routed nested path needs them)

    @property
    def host_ifname(self) -> str:
        return f"{HOST_PREFIX}{self.port_id[:11]}"

    @property
    def container_ifname(self) -> str:
        return f"{CONTAINER_PREFIX}{self.port_id[:11]}"
