"""Docker libnetwork remote driver and IPAM protocol, one model per message.

Field names are Docker's.  Unknown fields are ignored (newer Docker versions
add some); missing optional ones take Docker's zero values.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

GATEWAY_REQUEST = "com.docker.network.gateway"
MAC_OPTION = "com.docker.network.endpoint.macaddress"
ENDPOINT_NAME_OPTION = "com.docker.network.endpoint.name"
GENERIC_OPTIONS = "com.docker.network.generic"
ENABLE_IPV6_OPTION = "com.docker.network.enable_ipv6"
INTERNAL_OPTION = "com.docker.network.internal"
PORTMAP_OPTION = "com.docker.network.portmap"
EXPOSED_PORTS_OPTION = "com.docker.network.endpoint.exposedports"


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
    Pool: str = ""
    SubPool: str = ""
    Options: dict[str, str] | None = None
    V6: bool = False


class RequestPoolResponse(Message):
    PoolID: str
    Pool: str
    Data: dict[str, str] = Field(default_factory=dict)


class ReleasePoolRequest(Message):
    PoolID: str


class RequestAddressRequest(Message):
    PoolID: str
    Address: str = ""
    Options: dict[str, str] | None = None


class RequestAddressResponse(Message):
    Address: str
    Data: dict[str, str] = Field(default_factory=dict)


class ReleaseAddressRequest(Message):
    PoolID: str
    Address: str


# -- network driver ----------------------------------------------------------------
class IPAMData(Message):
    AddressSpace: str = ""
    Pool: str
    Gateway: str = ""
    AuxAddresses: dict[str, str] | None = None


class CreateNetworkRequest(Message):
    NetworkID: str = Field(min_length=1)
    Options: dict[str, Any] | None = None
    IPv4Data: list[IPAMData] | None = None
    IPv6Data: list[IPAMData] | None = None


class NetworkRequest(Message):
    NetworkID: str = Field(min_length=1)


class EndpointInterface(Message):
    Address: str = ""
    AddressIPv6: str = ""
    MacAddress: str = ""


class CreateEndpointRequest(Message):
    NetworkID: str = Field(min_length=1)
    EndpointID: str = Field(min_length=1)
    Interface: EndpointInterface | None = None
    Options: dict[str, Any] | None = None


class CreateEndpointResponse(Message):
    Interface: EndpointInterface | dict = Field(default_factory=dict)


class EndpointRequest(Message):
    NetworkID: str = Field(min_length=1)
    EndpointID: str = Field(min_length=1)
    Options: dict[str, Any] | None = None


class OperInfoResponse(Message):
    Value: dict[str, Any] = Field(default_factory=dict)


class JoinRequest(Message):
    NetworkID: str = Field(min_length=1)
    EndpointID: str = Field(min_length=1)
    SandboxKey: str = ""
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
