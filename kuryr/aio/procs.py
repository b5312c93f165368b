"""Starting and stopping the stack's daemons by PID, never by name."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


class StackError(Exception):
    """A step of the all-in-one stack failed; the message says which and where to look."""


def run(argv: Sequence[str], *, log: Path | None = None, env: Mapping[str, str] | None = None,
        timeout: float = 600, check: bool = True, input_text: str | None = None,
        cwd: Path | None = None) -> str:
    """Run a command to completion; its output goes to ``log`` when given."""
    full_env = {**os.environ, **(env or {})}
    try:
        proc = subprocess.run(
            list(argv), env=full_env, capture_output=True, text=True, timeout=timeout,
            input=input_text, stdin=None if input_text is not None else subprocess.DEVNULL,
            cwd=cwd, check=False,  # the exit status is judged below, with the log
        )
    except FileNotFoundError as exc:
        raise StackError(f"{argv[0]} is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"{' '.join(argv)} did not finish in {timeout:.0f} s") from exc
    if log is not None:
        with log.open("a") as fh:
            fh.write(f"$ {' '.join(argv)}\n{proc.stdout}{proc.stderr}")
    if check and proc.returncode != 0:
        where = f" (log: {log})" if log else ""
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise StackError(
            f"{' '.join(argv)} exited {proc.returncode}{where}: " + " | ".join(detail)
        )
    return proc.stdout


def spawn(argv: Sequence[str], *, pidfile: Path, log: Path,
          env: Mapping[str, str] | None = None, cwd: Path | None = None) -> int:
    """Start a foreground daemon in its own session and record its PID."""
    log.parent.mkdir(parents=True, exist_ok=True)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
        )
    pidfile.write_text(f"{proc.pid}\n")
    return proc.pid


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid: int | None, expect: str | None = None) -> bool:
    """Whether ``pid`` runs, and (when ``expect`` is given) runs a command containing it.

    Checking the command line keeps a recycled PID from being mistaken for
    (or killed as) one of ours.
    """
    if not pid:
        return False
    try:
        line = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    return expect is None or expect in line


def cmdline(pidfile: Path) -> str:
    """The command line of the process in ``pidfile``, each argument followed
    by a space (so a match names whole arguments); "" when it is gone."""
    pid = read_pid(pidfile)
    if pid is None:
        return ""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def pid_alive(pidfile: Path, expect: str | None = None) -> bool:
    return alive(read_pid(pidfile), expect)


def running(pidfile: Path) -> bool:
    """Whether the process we spawned still exists (no command-line check: a
    daemon rewriting its title, like gunicorn, briefly shows an empty one)."""
    return alive(read_pid(pidfile))


def stop(pidfile: Path, expect: str, timeout: float = 20) -> bool:
    """SIGTERM the process in ``pidfile`` (if it is ours), then SIGKILL after ``timeout``."""
    pid = read_pid(pidfile)
    if pid is None or not alive(pid, expect):
        pidfile.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    if not wait_for(lambda: not alive(pid), timeout):
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not alive(pid), 5)
    pidfile.unlink(missing_ok=True)
    return True


def answers_or_died(pidfile: Path, answers: Callable[[], bool]) -> Callable[[], bool]:
    """A wait_for probe for a server we spawned: true once it answers, or once it
    has exited (the caller then reports the exit with its log)."""

    def probe() -> bool:
        if not running(pidfile):
            return True
        try:
            return answers()
        except OSError:
            time.sleep(0.5)
            return False

    return probe


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return True
        except Exception:  # noqa: BLE001, S110 - a probe failing just means "not yet"
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
        interval = min(interval * 1.5, 1.0)
