"""The Docker plugin HTTP API: routes to handlers, errors to {"Err"} in one place.

Docker sends JSON without a JSON content type (and empty bodies for the
handshake), so bodies are parsed here rather than by content negotiation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from kuryr import errors
from kuryr.libnetwork import callers, models
from kuryr.libnetwork.endpoints import Endpoints
from kuryr.libnetwork.ipam import Ipam
from kuryr.libnetwork.networks import Networks
from kuryr.neutron.client import RequestCounter

LOG = logging.getLogger(__name__)
MAX_BODY = 1 << 20  # Docker's largest messages are a few KiB
PLUGIN_CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"

Handler = Callable[[Any], BaseModel | None]
# Undoes a call that completed after Docker was told it failed: (request, result).
Undo = Callable[[Any, Any], object]


@dataclass(frozen=True)
class Plugin:
    """The Docker remote driver: its three handler families and how calls run."""

    ipam: Ipam
    networks: Networks
    endpoints: Endpoints
    counter: RequestCounter
    call_timeout: float
    scope: str


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"Err": message}, status_code=status, media_type=PLUGIN_CONTENT_TYPE)


def _ok(payload: BaseModel | None) -> JSONResponse:
    body = payload.model_dump(mode="json") if payload is not None else {}
    return JSONResponse(body, media_type=PLUGIN_CONTENT_TYPE)


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "invalid request: " + "; ".join(parts)


async def _read_body(request: Request) -> bytes:
    """The body, read chunk by chunk and given up on as soon as it passes
    MAX_BODY: a caller cannot make Kuryr hold more than that in memory."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise errors.TooLarge(f"request body of {declared} bytes is too large "
                              f"(at most {MAX_BODY})")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise errors.TooLarge(f"request body is too large (more than {MAX_BODY} bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


async def _parse(request: Request, model: type[BaseModel] | None) -> BaseModel | None:
    raw = await _read_body(request)
    if model is None:
        return None
    if not raw.strip():
        data: Any = {}
    else:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise errors.InvalidInput(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise errors.InvalidInput("request body must be a JSON object")
    return model.model_validate(data)


def _counted(counter: RequestCounter, path: str, handler: Handler,
             body: Any) -> BaseModel | None:  # noqa: ANN401 - a request model
    """Run a handler, logging the Neutron requests it made and its duration."""
    started = time.monotonic()
    with counter.operation() as tally:
        try:
            return handler(body)
        finally:
            LOG.info("%s: %d Neutron requests %s in %.0f ms", path, tally.total,
                     dict(tally.by_method), (time.monotonic() - started) * 1000)


def _undo_table(plugin: Plugin) -> dict[str, Undo]:
    """How to undo each call that can complete after Docker gave up on it."""

    def create_network(req: models.CreateNetworkRequest, _: object) -> None:
        plugin.networks.delete(models.NetworkRequest(NetworkID=req.NetworkID))

    def create_endpoint(req: models.CreateEndpointRequest, _: object) -> None:
        plugin.endpoints.delete(models.EndpointRequest(NetworkID=req.NetworkID,
                                                       EndpointID=req.EndpointID))

    def request_address(req: models.RequestAddressRequest,
                        result: models.RequestAddressResponse) -> None:
        if req.Options and req.Options.get("RequestAddressType") == models.GATEWAY_REQUEST:
            return  # a gateway address is not a port
        plugin.ipam.release_address(models.ReleaseAddressRequest(
            PoolID=req.PoolID, Address=result.Address.split("/")[0]))

    def request_pool(_: object, result: models.RequestPoolResponse) -> None:
        plugin.ipam.release_pool(models.ReleasePoolRequest(PoolID=result.PoolID))

    return {"NetworkDriver.CreateNetwork": create_network,
            "NetworkDriver.CreateEndpoint": create_endpoint,
            "IpamDriver.RequestAddress": request_address,
            "IpamDriver.RequestPool": request_pool}


def _undo_late(path: str, undo: Undo, body: Any,  # noqa: ANN401 - a request model
               done: asyncio.Future[BaseModel | None]) -> None:
    """A call Docker was told failed has completed after all: undo it, so nothing
    is left that Docker does not know about (Docker does not retry with the same
    ids; it starts over with new ones)."""
    if done.cancelled() or done.exception() is not None:
        return  # the handler failed and rolled itself back
    LOG.warning("%s completed after Docker was told it timed out: undoing it", path)
    # Its own thread, not the background writer: undoing a network waits for the
    # background writer to be idle, which would then wait for itself.
    threading.Thread(target=_run_undo, args=(path, undo, body, done.result()),
                     name=f"undo {path}", daemon=True).start()


def _run_undo(path: str, undo: Undo, body: Any, result: Any) -> None:  # noqa: ANN401
    try:
        undo(body, result)
        LOG.info("undid the late %s", path)
    except Exception as exc:  # noqa: BLE001 - the garbage collector is the backstop
        LOG.error(  # noqa: TRY400 - one line; the cause is in the message
            "could not undo the late %s: %s (the garbage collector will)", path, exc)


async def _call(plugin: Plugin, path: str, handler: Handler, body: Any,  # noqa: ANN401
                undo: Undo | None) -> BaseModel | None:
    """Run the handler in a thread, bounded by plugin_call_timeout.

    Docker has no timeout for plugin calls: a handler stuck on a slow or
    hung Neutron would hang dockerd.  The thread cannot be interrupted, so on
    timeout Docker gets an error now and a late success is undone."""
    timeout = plugin.call_timeout
    work = asyncio.ensure_future(run_in_threadpool(_counted, plugin.counter, path, handler,
                                                   body))
    try:
        return await asyncio.wait_for(asyncio.shield(work), timeout)
    except TimeoutError:
        if undo is not None:
            work.add_done_callback(lambda done: _undo_late(path, undo, body, done))
        raise errors.BackendUnavailable(
            f"{path} did not complete within {timeout:.0f} s (plugin_call_timeout): "
            "Neutron is slow or unreachable; what it still completes is undone, retry "
            "later") from None


class LocalCallersOnly:
    """Refuses (403) every call a web page could make or a rebound name carries,
    before any route sees it: see kuryr/libnetwork/callers.py."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                       for k, v in scope["headers"]}
            why = callers.refusal(headers, scope.get("scheme", "http"))
            if why is not None:
                LOG.warning("%s refused: %s", scope.get("path", ""), why)
                await _error(403, why)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_app(plugin: Plugin) -> FastAPI:
    app = FastAPI(title="Kuryr Docker network and IPAM plugin", version="1",
                  docs_url=None, redoc_url=None)
    app.add_middleware(LocalCallersOnly)
    undo_for = _undo_table(plugin)

    def route(path: str, handler: Handler, request_model: type[BaseModel] | None,
              response_model: type[BaseModel] | None = None) -> None:
        undo = undo_for.get(path)

        async def endpoint(request: Request) -> JSONResponse:
            try:
                body = await _parse(request, request_model)
                result = await _call(plugin, path, handler, body, undo)
            except ValidationError as exc:
                return _error(400, _describe(exc))
            except errors.KuryrError as exc:
                LOG.info("%s failed: %s", path, exc)
                return _error(exc.status, str(exc))
            except Exception as exc:
                LOG.exception("%s failed unexpectedly", path)
                return _error(500, f"{path}: internal error: {type(exc).__name__}: {exc}")
            return _ok(result)

        extra = {}
        if request_model is not None:
            extra = {"requestBody": {"content": {"application/json": {
                "schema": request_model.model_json_schema()}}}}
        app.add_api_route(f"/{path}", endpoint, methods=["POST"], name=path,
                          response_model=response_model, openapi_extra=extra)

    ipam, networks, endpoints = plugin.ipam, plugin.networks, plugin.endpoints
    # Handshake
    route("Plugin.Activate", lambda _: models.ActivateResponse(
        Implements=["NetworkDriver", "IpamDriver"]), None, models.ActivateResponse)
    route("NetworkDriver.GetCapabilities", lambda _: models.NetworkCapabilities(
        Scope=plugin.scope, ConnectivityScope=plugin.scope), None, models.NetworkCapabilities)
    route("IpamDriver.GetCapabilities", lambda _: ipam.capabilities(), None,
          models.IpamCapabilities)
    route("IpamDriver.GetDefaultAddressSpaces", lambda _: ipam.default_address_spaces(),
          None, models.AddressSpaces)
    # IPAM
    route("IpamDriver.RequestPool", ipam.request_pool, models.RequestPoolRequest,
          models.RequestPoolResponse)
    route("IpamDriver.ReleasePool", ipam.release_pool, models.ReleasePoolRequest)
    route("IpamDriver.RequestAddress", ipam.request_address, models.RequestAddressRequest,
          models.RequestAddressResponse)
    route("IpamDriver.ReleaseAddress", ipam.release_address, models.ReleaseAddressRequest)
    # Networks
    route("NetworkDriver.CreateNetwork", networks.create, models.CreateNetworkRequest)
    route("NetworkDriver.DeleteNetwork", networks.delete, models.NetworkRequest)
    # Endpoints
    route("NetworkDriver.CreateEndpoint", endpoints.create, models.CreateEndpointRequest,
          models.CreateEndpointResponse)
    route("NetworkDriver.EndpointOperInfo", endpoints.oper_info, models.EndpointRequest,
          models.OperInfoResponse)
    route("NetworkDriver.DeleteEndpoint", endpoints.delete, models.EndpointRequest)
    route("NetworkDriver.Join", endpoints.join, models.JoinRequest, models.JoinResponse)
    route("NetworkDriver.Leave", endpoints.leave, models.EndpointRequest)
    route("NetworkDriver.ProgramExternalConnectivity", endpoints.program_external,
          models.EndpointRequest)
    route("NetworkDriver.RevokeExternalConnectivity", endpoints.revoke_external,
          models.EndpointRequest)
    # Swarm-only calls: accepted and answered, nothing to do in local scope.
    route("NetworkDriver.DiscoverNew", lambda _: None, models.DiscoveryRequest)
    route("NetworkDriver.DiscoverDelete", lambda _: None, models.DiscoveryRequest)
    route("NetworkDriver.AllocateNetwork", lambda _: models.AllocateNetworkResponse(),
          models.AllocateNetworkRequest, models.AllocateNetworkResponse)
    route("NetworkDriver.FreeNetwork", lambda _: None, models.NetworkRequest)

    @app.exception_handler(404)
    async def unknown(request: Request, exc: Exception) -> JSONResponse:
        return _error(404, f"unknown plugin method {request.url.path.lstrip('/')!r}")

    @app.exception_handler(405)
    async def wrong_method(request: Request, exc: Exception) -> JSONResponse:
        return _error(405, f"{request.method} not allowed: plugin calls are POST")

    return app
