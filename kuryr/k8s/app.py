"""The node daemon's HTTP API (kuryr/cni/wire.py is the contract): routes to the
CNI verbs, errors to CNI error codes in one place."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from kuryr import errors
from kuryr.cni import wire
from kuryr.cni.protocol import Code
from kuryr.k8s.models import CniRequest
from kuryr.k8s.pods import InterfaceNotAsSet, InvalidEnvironment, PodAttachments

LOG = logging.getLogger(__name__)
MAX_BODY = 1 << 20  # a request is a few KiB (the config, prevResult, valid attachments)
ENV_FIELDS = {"containerId", "netns", "ifname", "pod", "args"}  # from CNI_* variables

# Most specific first: the first type an error is an instance of decides its code.
# (Codes 0-99 are the spec's; 100+ Kuryr's, see docs/kubernetes.md.)
CODES: tuple[tuple[type[Exception], Code], ...] = (
    (InvalidEnvironment, Code.INVALID_ENVIRONMENT),
    (InterfaceNotAsSet, Code.INTERFACE_NOT_AS_SET),
    (errors.InvalidInput, Code.INVALID_CONFIG),
    (errors.NotFound, Code.UNKNOWN_CONTAINER),
    (errors.Conflict, Code.CONFLICT),
    (errors.BackendUnavailable, Code.TRY_AGAIN_LATER),
)


@dataclass(frozen=True)
class CniService:
    """What the API serves: the pods' attachments and the node's health."""

    pods: PodAttachments
    healthy: Callable[[], str | None]  # None when ADD can be served, else why not


def code_of(exc: Exception) -> Code:
    return next((code for kind, code in CODES if isinstance(exc, kind)), Code.HOST_FAILURE)


def http_status_of(exc: Exception) -> int:
    return exc.status if isinstance(exc, errors.KuryrError) else HTTPStatus.INTERNAL_SERVER_ERROR


def cni_error(code: int, msg: str, details: str = "", status: int = 500) -> JSONResponse:
    return JSONResponse({"code": int(code), "msg": msg, "details": details},
                        status_code=status)


def build_app(service: CniService) -> FastAPI:
    app = FastAPI(title="Kuryr CNI daemon", docs_url=None, redoc_url=None, openapi_url=None)
    verbs: dict[str, Callable[[CniRequest], dict[str, Any]]] = {
        "ADD": lambda req: wire.result_as_answer(service.pods.add(req)),
        "DEL": _answering_nothing(service.pods.delete),
        "CHECK": _answering_nothing(service.pods.check),
        "STATUS": lambda req: _status(service),
        "GC": _answering_nothing(service.pods.collect),
    }
    for command, verb in verbs.items():
        app.add_api_route(f"/v1/{command.lower()}", _endpoint(command, verb),
                          methods=["POST"])
    return app


def _answering_nothing(verb: Callable[[CniRequest], object]) \
        -> Callable[[CniRequest], dict[str, Any]]:
    """DEL, CHECK and GC answer {} on success (the executable prints nothing)."""
    def call(req: CniRequest) -> dict[str, Any]:
        verb(req)
        return {}
    return call


def _status(service: CniService) -> dict[str, Any]:
    problem = service.healthy()
    if problem is not None:
        raise _Unavailable(problem)
    return {}


class _Unavailable(Exception):
    """STATUS: the daemon cannot serve ADD now."""


def _endpoint(command: str, verb: Callable[[CniRequest], dict[str, Any]]) \
        -> Callable[[Request], Any]:
    async def handle(request: Request) -> JSONResponse:
        body = await request.body()
        if len(body) > MAX_BODY:
            return cni_error(Code.INVALID_CONFIG, f"request of {len(body)} bytes is too "
                             f"large (at most {MAX_BODY})", status=413)
        try:
            req = _parse(command, body)
        except _BadRequest as bad:
            return cni_error(bad.code, bad.msg, status=400)
        started = time.monotonic()
        try:
            answer = JSONResponse(await run_in_threadpool(verb, req))
            if command in _TIMED:  # how long the runtime waited on Kuryr (bursts)
                LOG.info("%s %s%s: %.0f ms", command, req.containerId[:12], _pod_of(req),
                         (time.monotonic() - started) * 1000)
            return answer
        except _Unavailable as exc:
            return cni_error(Code.PLUGIN_NOT_AVAILABLE, "plugin not available", str(exc), 503)
        except Exception as exc:
            code = code_of(exc)
            if code is Code.HOST_FAILURE:
                LOG.exception("%s %s failed", command, req.containerId[:12])
            else:
                LOG.info("%s %s: %s", command, req.containerId[:12], exc)
            return cni_error(code, str(exc), type(exc).__name__, http_status_of(exc))
    handle.__name__ = f"cni_{command.lower()}"
    return handle


_TIMED = ("ADD", "DEL")


def _pod_of(req: CniRequest) -> str:
    return f" (pod {req.pod.namespace}/{req.pod.name})" if req.pod else ""


class _BadRequest(Exception):
    def __init__(self, code: Code, msg: str) -> None:
        super().__init__(msg)
        self.code, self.msg = code, msg


def _parse(command: str, body: bytes) -> CniRequest:
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _BadRequest(Code.DECODE_FAILURE, f"request is not JSON: {exc}") from None
    try:
        req = CniRequest.model_validate(raw)
    except ValidationError as exc:
        fields = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
        code = Code.INVALID_ENVIRONMENT if fields & ENV_FIELDS else Code.INVALID_CONFIG
        raise _BadRequest(code, "invalid request: " + "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
            for e in exc.errors())) from None
    if req.command != command:
        raise _BadRequest(Code.INVALID_CONFIG,
                          f"command {req.command} sent to /v1/{command.lower()}")
    return req
