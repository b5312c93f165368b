"""Docker libnetwork remote driver and IPAM protocol, one model per message.

Field names are Docker's.  Unknown fields are ignored (newer Docker versions
add some); missing optional ones take Docker's zero values.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from kuryr import errors
from kuryr.publish import spec

GATEWAY_REQUEST = "com.docker.network.gateway"
MAC_OPTION = "com.docker.network.endpoint.macaddress"
ENDPOINT_NAME_OPTION = "com.docker.network.endpoint.name"
GENERIC_OPTIONS = "com.docker.network.generic"
ENABLE_IPV6_OPTION = "com.docker.network.enable_ipv6"
INTERNAL_OPTION = "com.docker.network.internal"
PORTMAP_OPTION = "com.docker.network.portmap"
EXPOSED_PORTS_OPTION = "com.docker.network.endpoint.exposedports"


# -- syntax checked as the message is parsed, before any handler or Neutron ---------
# The errors name the field ("IPv4Data.0.Pool: Value error, ..."): see app._describe.
def _cidr(value: str) -> str:
    """A network address with its prefix (what Docker sends as a pool)."""
    try:
        ipaddress.ip_network(value)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid CIDR: {exc}") from None
    return value


def _optional_cidr(value: str) -> str:
    return _cidr(value) if value else value


def _address(value: str) -> str:
    """An address, bare or with its prefix length (Docker sends gateways as
    10.1.0.1/24 to the network driver, addresses bare to IPAM)."""
    try:
        ipaddress.ip_interface(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address (a.b.c.d or a.b.c.d/len)") \
            from None
    return value


def _optional_address(value: str) -> str:
    return _address(value) if value else value


def _version(text: str) -> int:
    return ipaddress.ip_interface(text).version


def _port_options(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """Docker's port maps and exposed ports: lists of objects of integers."""
    try:
        spec.check_port_options(value)
    except errors.InvalidInput as exc:
        raise ValueError(str(exc)) from None
    return value


Cidr = Annotated[str, AfterValidator(_cidr)]
OptionalCidr = Annotated[str, AfterValidator(_optional_cidr)]
Address = Annotated[str, AfterValidator(_address)]
OptionalAddress = Annotated[str, AfterValidator(_optional_address)]
PortOptions = Annotated[dict[str, Any] | None, AfterValidator(_port_options)]


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Empty(Message):
    pass


class ErrorResponse(Message):
    Err: str


# -- handshake -----------------------------------------------------------------
class ActivateResponse(Message):
    Implements: list[str]


class NetworkCapabilities(Message):
    Scope: str
    ConnectivityScope: str


class IpamCapabilities(Message):
    RequiresMACAddress: bool
    RequiresRequestReplay: bool


class AddressSpaces(Message):
    LocalDefaultAddressSpace: str
    GlobalDefaultAddressSpace: str


# -- IPAM ------------------------------------------------------------------------
class RequestPoolRequest(Message):
    AddressSpace: str = ""
    Pool: OptionalCidr = ""
    SubPool: OptionalCidr = ""
    Options: dict[str, str] | None = None
    V6: bool = False

    @field_validator("SubPool")
    @classmethod
    def _inside_pool(cls, value: str, info: ValidationInfo) -> str:
        pool = info.data.get("Pool")
        if not value or pool is None:  # no SubPool, or Pool itself was refused
            return value
        if not pool:
            raise ValueError(f"{value} (--ip-range) needs a Pool (--subnet)")
        inner, outer = ipaddress.ip_network(value), ipaddress.ip_network(pool)
        if inner.version != outer.version or not inner.subnet_of(outer):  # type: ignore[arg-type]
            raise ValueError(f"ip-range {value} is not inside {pool}")
        return value

    @field_validator("V6")
    @classmethod
    def _pool_of_the_family(cls, value: bool, info: ValidationInfo) -> bool:
        pool = info.data.get("Pool")
        if pool and _version(pool) != (6 if value else 4):
            raise ValueError(f"Pool {pool} is IPv{_version(pool)} but V6 is {value}")
        return value


class RequestPoolResponse(Message):
    PoolID: str
    Pool: str
    Data: dict[str, str] = Field(default_factory=dict)


class ReleasePoolRequest(Message):
    PoolID: str


class RequestAddressRequest(Message):
    PoolID: str
    Address: OptionalAddress = ""
    Options: dict[str, str] | None = None


class RequestAddressResponse(Message):
    Address: str
    Data: dict[str, str] = Field(default_factory=dict)


class ReleaseAddressRequest(Message):
    PoolID: str
    Address: Address


# -- network driver ----------------------------------------------------------------
class IPAMData(Message):
    AddressSpace: str = ""
    Pool: Cidr
    Gateway: OptionalAddress = ""
    AuxAddresses: dict[str, Address] | None = None

    @field_validator("Gateway")
    @classmethod
    def _gateway_of_the_pool_family(cls, value: str, info: ValidationInfo) -> str:
        pool = info.data.get("Pool")
        if value and pool and _version(value) != _version(pool):
            raise ValueError(f"gateway {value} is not of the family of pool {pool}")
        return value


def _pools_of_family(pools: list[IPAMData] | None, version: int) -> list[IPAMData] | None:
    for index, data in enumerate(pools or []):
        if _version(data.Pool) != version:
            raise ValueError(f"{index}.Pool {data.Pool} is not an IPv{version} CIDR")
    return pools


class CreateNetworkRequest(Message):
    NetworkID: str = Field(min_length=1)
    Options: dict[str, Any] | None = None
    IPv4Data: Annotated[list[IPAMData] | None,
                        AfterValidator(lambda pools: _pools_of_family(pools, 4))] = None
    IPv6Data: Annotated[list[IPAMData] | None,
                        AfterValidator(lambda pools: _pools_of_family(pools, 6))] = None


class NetworkRequest(Message):
    NetworkID: str = Field(min_length=1)


class EndpointInterface(Message):
    Address: OptionalAddress = ""
    AddressIPv6: OptionalAddress = ""
    MacAddress: str = ""


class CreateEndpointRequest(Message):
    NetworkID: str = Field(min_length=1)
    EndpointID: str = Field(min_length=1)
    Interface: EndpointInterface | None = None
    Options: PortOptions = None


class CreateEndpointResponse(Message):
    Interface: EndpointInterface | dict = Field(default_factory=dict)


class EndpointRequest(Message):
    NetworkID: str = Field(min_length=1)
    EndpointID: str = Field(min_length=1)
    Options: PortOptions = None  # ProgramExternalConnectivity's port maps


class OperInfoResponse(Message):
    Value: dict[str, Any] = Field(default_factory=dict)


def _sandbox_key(value: str) -> str:
    """An absolute path without . or .. steps (where it may be is the handler's
    check: docker_netns_dir is configuration)."""
    if not value:
        return value
    parts = value.split("/")
    if not value.startswith("/") or "\0" in value or any(p in (".", "..") for p in parts):
        raise ValueError(f"{value!r:.80} is not an absolute path without . or .. steps")
    return value


class JoinRequest(Message):
    NetworkID: str = Field(min_length=1)
    EndpointID: str = Field(min_length=1)
    SandboxKey: Annotated[str, AfterValidator(_sandbox_key)] = ""
    Options: dict[str, Any] | None = None


class InterfaceName(Message):
    SrcName: str
    DstPrefix: str


class StaticRoute(Message):
    Destination: str
    RouteType: int  # 0 = via next hop, 1 = directly connected
    NextHop: str = ""


class JoinResponse(Message):
    InterfaceName: InterfaceName
    Gateway: str = ""
    GatewayIPv6: str = ""
    StaticRoutes: list[StaticRoute] = Field(default_factory=list)
    DisableGatewayService: bool = False


class DiscoveryRequest(Message):
    DiscoveryType: int = 0
    DiscoveryData: Any = None


class AllocateNetworkRequest(Message):
    NetworkID: str = Field(min_length=1)
    Options: dict[str, Any] | None = None
    IPv4Data: list[IPAMData] | None = None
    IPv6Data: list[IPAMData] | None = None


class AllocateNetworkResponse(Message):
    Options: dict[str, str] = Field(default_factory=dict)
