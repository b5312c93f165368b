"""The node daemon's request, as kuryr-cni sends it (kuryr/cni/wire.py)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Command = Literal["ADD", "DEL", "CHECK", "STATUS", "GC"]


class PodRef(BaseModel):
    model_config = ConfigDict(extra="ignore")

    namespace: str
    name: str
    uid: str = ""
    infraContainerId: str = ""  # noqa: N815 - the wire's name


class ValidAttachment(BaseModel):
    model_config = ConfigDict(extra="ignore")

    containerID: str  # noqa: N815
    ifname: str


class CniRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    command: Command
    cniVersion: str = ""  # noqa: N815
    containerId: str = Field(default="", max_length=1024)  # noqa: N815
    netns: str = Field(default="", max_length=4096)
    ifname: str = Field(default="", max_length=15)
    pod: PodRef | None = None
    args: dict[str, str] = Field(default_factory=dict)
    validAttachments: list[ValidAttachment] = Field(default_factory=list)  # noqa: N815
    config: dict[str, Any] = Field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return self.pod.namespace if self.pod is not None else ""
