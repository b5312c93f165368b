"""`kuryr-cni`: the executable a container runtime runs for every CNI command.

It parses the environment and the network configuration, sends ONE request to
Kuryr's node daemon over its unix socket (see wire.py for the contract), and
prints one JSON document: the result, the VERSION answer or an error.  DEL,
CHECK, STATUS and GC print nothing on success, as the spec and the reference
plugins do.  Exit status 0 on success, 1 on error.

It runs once per pod start and stop, so it imports the standard library only,
and http.client (the slowest of it) only when it talks to the daemon: VERSION
never loads it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Any

from kuryr.cni import protocol, wire
from kuryr.cni.protocol import CniError, Code, Command, Request

Output = tuple[dict[str, Any] | None, int]


def main() -> int:
    try:
        stdin = sys.stdin.buffer.read()
    except OSError as exc:
        return _print(protocol.render_error(
            CniError(Code.IO_FAILURE, "error reading from stdin", str(exc)),
            protocol.NEWEST_VERSION), 1)
    document, status = run(os.environ, stdin)
    return _print(document, status)


def _print(document: dict[str, Any] | None, status: int) -> int:
    if document is not None:
        sys.stdout.write(json.dumps(document) + "\n")
        sys.stdout.flush()
    return status


def run(environ: Mapping[str, str], stdin: bytes) -> Output:
    """The document to print and the exit status for one invocation."""
    try:
        env = protocol.parse_environment(environ)
        if env.command is Command.VERSION:
            return protocol.render_version(protocol.requested_version(stdin)), 0
        config = protocol.parse_config(env.command, stdin)
    except CniError as error:
        return protocol.render_error(error, protocol.error_version(stdin)), 1
    return execute(Request(env, config))


def execute(request: Request) -> Output:
    """Send the request to the daemon; render its answer for the runtime."""
    command, version = request.env.command, request.config.cni_version
    try:
        answer = call_daemon(request)
    except CniError as error:
        if command is Command.DEL and protocol.del_succeeds_despite(error):
            return None, 0
        return protocol.render_error(error, version), 1
    if command is not Command.ADD:
        return None, 0
    try:
        result = wire.result_from_answer(answer)
    except CniError as error:
        return protocol.render_error(error, version), 1
    return protocol.render_result(result, version), 0


def call_daemon(request: Request) -> dict[str, Any]:
    """The daemon's success body; every failure to get one as a CniError."""
    command = request.env.command
    path = request.config.daemon_socket
    try:
        status, body = post(path, wire.path_for(command), wire.encode_request(request),
                            wire.TIMEOUTS[command])
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise _unavailable(command, path, f"nothing listens on {path}: {exc}") from None
    except PermissionError as exc:
        # Not transient: the runtime does not run the plugin as root.
        raise CniError(Code.IO_FAILURE, f"cannot connect to the Kuryr CNI daemon at {path}",
                       f"{exc} (the socket is root-only)") from None
    except TimeoutError:
        if command is Command.STATUS:  # a daemon too busy to answer cannot serve ADD
            raise _unavailable(command, path, f"no answer within {wire.TIMEOUTS[command]:g} s") \
                from None
        raise CniError(Code.DAEMON_TIMEOUT,
                       f"the Kuryr CNI daemon at {path} did not answer {command} within "
                       f"{wire.TIMEOUTS[command]:g} s") from None
    except OSError as exc:  # a reset or broken pipe: the daemon went away mid-request
        raise _unavailable(command, path, f"connection to {path} failed: {exc}") from None
    return wire.decode_answer(status, body)


def _unavailable(command: Command, path: str, details: str) -> CniError:
    # STATUS has its own code for "cannot serve ADD"; elsewhere the daemon is
    # (re)starting and the runtime retries.
    if command is Command.STATUS:
        return CniError(Code.PLUGIN_NOT_AVAILABLE, "plugin not available: the Kuryr CNI "
                        f"daemon does not answer on {path}", details)
    return CniError(Code.TRY_AGAIN_LATER, "try again later: the Kuryr CNI daemon does not "
                    f"answer on {path}", details)


def post(socket_path: str, url_path: str, body: bytes, timeout: float) -> tuple[int, bytes]:
    """POST ``body`` (JSON) to ``url_path`` over the unix socket; status and body."""
    # ~40 ms of start-up together: only the commands that talk to the daemon load them.
    import http.client

    from kuryr.localhttp import UnixHTTPConnection

    conn = UnixHTTPConnection(socket_path, timeout)
    try:
        conn.request("POST", url_path, body=body,
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read(wire.MAX_ANSWER)
    except http.client.HTTPException as exc:  # something on the socket, not HTTP
        raise CniError(Code.DAEMON_ANSWER_UNREADABLE, f"the program on {socket_path} does "
                       "not answer HTTP", repr(exc)) from None
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
