"""`kuryr-bench --nested`: containers in VMs (Kuryr in nested mode) against
containers on the host, on the all-in-one stack, in one run.

The benchmark brings up VMs of its own (`kuryr-aio vm up`: bv in vlan mode,
bm in macvlan mode) and one Docker network on the Neutron network the VMs'
ports are on (kuryr-aio-vms) in the host's dockerd and in each VM's; it
deletes all of them at the end whatever happens (`vm down --purge`).  Other
VMs of the stack are not touched.

Each figure is taken in the three places in the same run, interleaved where
it is a series (one run here, one there, ...): the machine is noisy, the
ratios nested/host are what to compare.  Neutron requests are counted at
neutron-server's access log: requests of anyone else using the stack at the
same time are counted too (the minimum of the samples is the least
disturbed).  Traffic stays between namespaces of this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from kuryr.aio.docker import DOCKER_CLI, IMAGE
from kuryr.aio.layout import Layout
from kuryr.aio.procs import StackError
from kuryr.bench.dockerd import Bench
from kuryr.bench.stats import percentile

VM_NETWORK = "kuryr-aio-vms"  # the Neutron network of the VMs' ports (made by `vm up`)
VM_SUBNET, VM_GATEWAY = "192.168.250.0/24", "192.168.250.1"
VMS = {"nested-vlan": ("bv", "vlan"), "nested-macvlan": ("bm", "macvlan")}
HOST = "host"
PLACES = (HOST, *VMS)
NETWORK_PREFIX = "bench-nested-"
BURST = 10
# One dockerd adopts a Neutron network once: while another Docker network of the
# host's dockerd (the nested integration tests' "vms") holds kuryr-aio-vms, wait.
ADOPTION_WAIT = 1200.0
REACH_ATTEMPTS = 40  # pings of ping -c1 -W1: a new container gives up after ~40 s
REACH_TIMEOUT = 90.0
VM_COMMAND_TIMEOUT = 600.0


# -- pure parts ---------------------------------------------------------------------------
def parse_exports(text: str) -> dict[str, str]:
    """``export KEY=VALUE`` lines (shell-quoted, as `kuryr-aio env` prints them)."""
    found = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line.startswith("export "):
            continue
        key, sep, value = line[len("export "):].partition("=")
        if sep and key.strip():
            words = shlex.split(value) if value else [""]
            found[key.strip()] = words[0] if words else ""
    return found


def adopters(inspected: Iterable[dict], network: str, network_id: str | None = None,
             mine: str = NETWORK_PREFIX) -> list[str]:
    """Names of Docker networks (``docker network inspect`` objects) that adopt the
    Neutron network ``network`` (by name, or by ``network_id``), but this
    benchmark's own (named ``mine``...)."""
    found = []
    for net in inspected:
        options = net.get("Options") or {}
        refs = {options.get("neutron.net.name"), options.get("neutron.net.uuid")}
        if (network in refs or (network_id and network_id in refs)) and \
                not str(net.get("Name", "")).startswith(mine):
            found.append(str(net.get("Name", "")))
    return found


def reach_script(address: str, attempts: int = REACH_ATTEMPTS) -> str:
    """What a new container runs: ping ``address`` until answered, then print the
    kernel's uptime (the host's clock too: one kernel) and the failed pings."""
    return (f"n=0; until ping -c 1 -W 1 {address} >/dev/null 2>&1; do n=$((n+1)); "
            f"[ $n -ge {attempts} ] && exit 1; sleep 0.1; done; "
            "cat /proc/uptime; echo $n")


def parse_reach(logs: str, started: float) -> tuple[float, int] | None:
    """(seconds from ``started`` (an uptime) to the answer, failed pings before it)
    from the output of ``reach_script``; None if it never got an answer."""
    lines = [line.split() for line in logs.strip().splitlines() if line.strip()]
    try:
        answered, failed = float(lines[-2][0]), int(lines[-1][0])
    except (IndexError, ValueError):
        return None
    return max(0.0, answered - started), failed


def uptime(text: str | None = None) -> float:
    """The kernel's uptime in seconds (from /proc/uptime's text)."""
    if text is None:
        text = Path("/proc/uptime").read_text()
    return float(text.split()[0])


def latency(times: Sequence[float], failures: int) -> dict:
    """Milliseconds: median and p95 (nearest rank) of the runs that succeeded."""
    if not times:
        return {"runs": 0, "failures": failures}
    return {"median": round(statistics.median(times) * 1000),
            "p95": round(percentile(times, 0.95) * 1000), "runs": len(times),
            "failures": failures}


def counts(samples: Sequence[int]) -> dict:
    """Neutron requests per docker run: the median of the samples (and their
    minimum, the least disturbed by anyone else's requests)."""
    if not samples:
        return {"median": None, "min": None, "samples": []}
    median = statistics.median(samples)
    return {"median": int(median) if float(median).is_integer() else median,
            "min": min(samples), "samples": list(samples)}


def reach(samples: Sequence[tuple[float, int] | None]) -> dict:
    """Time to a first answered ping: median and p95 in ms of those answered;
    how many were answered by their first ping, and how many never were."""
    answered = [s for s in samples if s is not None]
    times = [seconds for seconds, _ in answered]
    out: dict = {"runs": len(samples), "failures": len(samples) - len(answered),
                 "first_ping_answered": f"{sum(1 for _, f in answered if f == 0)}/"
                                        f"{len(samples)}"}
    if times:
        out["median"] = round(statistics.median(times) * 1000)
        out["p95"] = round(percentile(times, 0.95) * 1000)
    return out


def _over(value: float | int | None, base: float | int | None) -> float | None:
    if value is None or not base:
        return None
    return round(value / base, 2)


def ratios(result: dict) -> dict:
    """Each nested place over the host, per figure (as run.py's ``ratios``)."""
    out = {}
    figures: list[tuple[str, str, str]] = [
        ("docker_run_median", "docker_run_ms", "median"),
        ("docker_run_p95", "docker_run_ms", "p95"),
        ("neutron_requests", "neutron_requests_per_run", "median"),
        ("burst_wall", "burst", "wall_s"),
        ("burst_p95", "burst", "p95_ms"),
        ("time_to_reach_median", "time_to_reach_ms", "median")]
    for name, section, key in figures:
        rows = result.get(section, {})
        base = (rows.get(HOST) or {}).get(key)
        for place in VMS:
            value = _over((rows.get(place) or {}).get(key), base)
            if value is not None:
                out[f"{name}_over_host[{place}]"] = value
    return out


def table(result: dict) -> str:
    places = [p for p in PLACES if p in result.get("docker_run_ms", {})]
    head = f"  {'':34}" + "".join(f"{p:>16}" for p in places)

    def row(label: str, section: str, fmt: Callable[[dict], str]) -> str:
        return f"  {label:34}" + "".join(
            f"{fmt(result.get(section, {}).get(p) or {}):>16}" for p in places)

    def get(key: str) -> Callable[[dict], str]:
        return lambda d: "-" if d.get(key) is None else str(d[key])

    burst = result.get("burst_size", BURST)
    title = f"Containers on the host and in VMs (nested), one Neutron network ({VM_NETWORK})"
    lines = ["", title, head,
             row("docker run --rm true, median ms", "docker_run_ms", get("median")),
             row("docker run --rm true, p95 ms", "docker_run_ms", get("p95")),
             row("  failures", "docker_run_ms", get("failures")),
             row("Neutron requests per run (median)", "neutron_requests_per_run",
                 get("median")),
             row("  (min of the samples)", "neutron_requests_per_run", get("min")),
             row(f"burst of {burst}: wall s", "burst", get("wall_s")),
             row(f"burst of {burst}: p95 ms", "burst", get("p95_ms")),
             row(f"burst of {burst}: failures", "burst", get("failures")),
             row("run -d -> ping answered, median ms", "time_to_reach_ms", get("median")),
             row("  p95 ms", "time_to_reach_ms", get("p95")),
             row("  answered by the first ping", "time_to_reach_ms",
                 get("first_ping_answered")),
             "", f"ratios: {json.dumps(result.get('ratios', {}))}", ""]
    return "\n".join(lines)


# -- the stack ------------------------------------------------------------------------------
def aio_command() -> list[str]:
    """The kuryr-aio beside the running interpreter (the project's venv)."""
    beside = Path(sys.executable).parent / "kuryr-aio"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("kuryr-aio")
    return [found] if found else [sys.executable, "-m", "kuryr.aio.cli"]


def aio(*args: str, capture: bool = False, timeout: float = VM_COMMAND_TIMEOUT) -> str:
    """Runs kuryr-aio; its progress goes to stderr unless ``capture``."""
    proc = subprocess.run([*aio_command(), *args], text=True, timeout=timeout, check=False,
                          stdout=subprocess.PIPE if capture else sys.stderr,
                          stderr=subprocess.PIPE if capture else None)
    if proc.returncode != 0:
        detail = (proc.stderr or "").strip() if capture else "see above"
        raise StackError(f"kuryr-aio {' '.join(args)} failed ({detail})")
    return proc.stdout or ""


class Dockerd(Bench):
    """Bench's docker commands and measurements against one dockerd (the host's
    or a VM's), with the one Docker network on kuryr-aio-vms it is measured on."""

    def __init__(self, layout: Layout, log: Callable[[str], None], place: str,
                 docker_host: str, tag: str) -> None:
        super().__init__(layout, log)
        self.place = place
        self.docker_host = docker_host
        self.tag = tag
        self.net = f"{NETWORK_PREFIX}{tag}"

    def networks_inspected(self) -> list[dict]:
        ids = self.docker_out("network", "ls", "-q", "--filter", "driver=kuryr").split()
        return json.loads(self.docker_out("network", "inspect", *ids)) if ids else []

    def remove_leftovers(self) -> None:
        """This benchmark's networks (and their containers) an interrupted run left."""
        for net in self.networks_inspected():
            name = str(net.get("Name", ""))
            if name.startswith(NETWORK_PREFIX):
                self.log(f"{self.place}: removing {name}, left by an interrupted run")
                for cid in self.docker_out("ps", "-aq", "--filter", f"network={name}").split():
                    self.docker("rm", "-f", cid, check=False)
                self.docker("network", "rm", name, check=False)

    def wait_until_adoptable(self, network_id: str | None, timeout: float) -> None:
        deadline, told = time.monotonic() + timeout, False
        while True:
            others = adopters(self.networks_inspected(), VM_NETWORK, network_id)
            if not others:
                return
            if time.monotonic() > deadline:
                raise StackError(f"{self.place}: Docker network(s) {', '.join(others)} still "
                                 f"hold {VM_NETWORK} after {timeout:.0f} s (one dockerd "
                                 "adopts a Neutron network once)")
            if not told:
                self.log(f"{self.place}: waiting for Docker network(s) {', '.join(others)} "
                         f"to release {VM_NETWORK} (one dockerd adopts it once; e.g. the "
                         f"nested integration tests' network) ...")
                told = True
            time.sleep(5)

    def make_network(self) -> None:
        self.docker("network", "create", "-d", "kuryr", "--ipam-driver", "kuryr",
                    "-o", f"neutron.net.name={VM_NETWORK}", "--subnet", VM_SUBNET,
                    "--gateway", VM_GATEWAY, self.net)
        self.cleanup.append(["network", "rm", self.net])

    def one_run(self) -> tuple[int, float]:
        return self.docker("run", "--rm", "--net", self.net, IMAGE, "true", check=False)

    def address_of(self, container: str) -> str:
        return self.docker_out("inspect", "-f",
                               f'{{{{(index .NetworkSettings.Networks "{self.net}")'
                               '.IPAddress}}', container)

    def start_target(self) -> str:
        """A container that answers pings; its address."""
        name = f"{NETWORK_PREFIX}{self.tag}-target"
        self.docker("run", "-d", "--name", name, "--net", self.net, IMAGE, "sleep", "3600")
        self.cleanup.append(["rm", "-f", name])
        return self.address_of(name)

    def reach_once(self, address: str, index: int) -> tuple[float, int] | None:
        """From `docker run -d` to the new container's first answered ping."""
        name = f"{NETWORK_PREFIX}{self.tag}-reach{index}"
        self.cleanup.append(["rm", "-f", name])
        started = uptime()
        rc, _ = self.docker("run", "-d", "--name", name, "--net", self.net, IMAGE, "sh",
                            "-c", reach_script(address), check=False)
        if rc != 0:
            return None
        try:
            code = self.docker_out_timeout(REACH_TIMEOUT, "wait", name)
            logs = self.docker_out_timeout(30, "logs", name)
        finally:
            self.docker("rm", "-f", name, check=False)
            self.cleanup.remove(["rm", "-f", name])
        return parse_reach(logs, started) if code.strip() == "0" else None

    def docker_out_timeout(self, timeout: float, *args: str) -> str:
        proc = subprocess.run([DOCKER_CLI, "-H", self.docker_host, *args], capture_output=True,
                              text=True, timeout=timeout, check=False)
        return proc.stdout.strip()


class NestedBench:
    def __init__(self, layout: Layout, log: Callable[[str], None], runs: int, samples: int,
                 burst: int) -> None:
        self.layout = layout
        self.log = log
        self.runs = runs
        self.samples = samples
        self.burst = burst
        self.places: dict[str, Dockerd] = {}
        self.tag = uuid.uuid4().hex[:6]
        self.vms_up: list[str] = []

    def host_docker(self) -> str:
        try:
            found = parse_exports(aio("env", capture=True, timeout=60)).get("DOCKER_HOST")
        except (StackError, subprocess.TimeoutExpired):
            found = None
        return found or self.layout.docker_host

    def vm_network_id(self) -> str | None:
        from kuryr.neutron.client import connect_endpoint

        try:
            return connect_endpoint(self.layout.neutron_url).find_network(VM_NETWORK).id
        except Exception:  # noqa: BLE001 - matched by name then
            return None

    def setup(self) -> None:
        host = Dockerd(self.layout, self.log, HOST, self.host_docker(), self.tag)
        self.places[HOST] = host
        for place, (vm, mode) in VMS.items():
            self.log(f"kuryr-aio vm up {vm} --mode {mode} ...")
            self.vms_up.append(vm)
            aio("vm", "up", vm, "--mode", mode)
            docker_host = parse_exports(aio("vm", "env", vm, capture=True)).get("DOCKER_HOST")
            if not docker_host:
                raise StackError(f"kuryr-aio vm env {vm}: no DOCKER_HOST")
            self.places[place] = Dockerd(self.layout, self.log, place, docker_host, self.tag)
        for dockerd in self.places.values():
            dockerd.remove_leftovers()
        host.wait_until_adoptable(self.vm_network_id(), ADOPTION_WAIT)
        for dockerd in self.places.values():
            self.log(f"{dockerd.place}: Docker network {dockerd.net} on {VM_NETWORK}")
            dockerd.make_network()

    def teardown(self) -> None:
        for dockerd in self.places.values():
            try:
                dockerd.finish()
            except Exception as exc:  # noqa: BLE001 - the VMs go anyway
                self.log(f"{dockerd.place}: cleanup failed: {exc}")
        for vm in reversed(self.vms_up):
            self.log(f"kuryr-aio vm down {vm} --purge ...")
            try:
                aio("vm", "down", vm, "--purge")
            except (StackError, subprocess.TimeoutExpired) as exc:
                self.log(str(exc))

    def latency(self) -> dict:
        """docker run --rm true, interleaved: one run in each place in turn."""
        times: dict[str, list[float]] = {p: [] for p in self.places}
        failures = dict.fromkeys(self.places, 0)
        for dockerd in self.places.values():
            dockerd.one_run()  # warm-up
        for _ in range(self.runs):
            for place, dockerd in self.places.items():
                rc, elapsed = dockerd.one_run()
                if rc == 0:
                    times[place].append(elapsed)
                else:
                    failures[place] += 1
        return {p: latency(times[p], failures[p]) for p in self.places}

    def requests(self) -> dict:
        samples: dict[str, list[int]] = {p: [] for p in self.places}
        for _ in range(self.samples):
            for place, dockerd in self.places.items():
                samples[place].append(dockerd.neutron_requests(dockerd.one_run))
        return {p: counts(samples[p]) for p in self.places}

    def bursts(self) -> dict:
        out = {}
        for place, dockerd in self.places.items():
            self.log(f"{place}: burst of {self.burst} concurrent docker run --rm ...")
            row = dockerd.burst(dockerd.net, self.burst)
            row["failures"] = row["size"] - row["succeeded"]
            out[place] = row
        return out

    def reach(self) -> dict:
        address = self.places[HOST].start_target()
        self.log(f"target container on the host: {address}")
        samples: dict[str, list[tuple[float, int] | None]] = {p: [] for p in self.places}
        for index in range(self.samples):
            for place, dockerd in self.places.items():
                samples[place].append(dockerd.reach_once(address, index))
        return {p: reach(samples[p]) for p in self.places}


def main(args: argparse.Namespace) -> int:
    runs = args.runs or (5 if args.quick else 10)
    samples = 3 if args.quick else 5
    burst = max(args.bursts) if args.bursts else BURST

    def log(message: str) -> None:
        print(f"kuryr-bench: {message}", file=sys.stderr, flush=True)

    layout = Layout.default()
    bench = NestedBench(layout, log, runs, samples, burst)
    started = time.monotonic()
    result: dict = {"machine": {"cores": os.cpu_count(), "runs": runs, "samples": samples,
                                "quick": bool(args.quick)},
                    "vms": {place: {"name": vm, "mode": mode}
                            for place, (vm, mode) in VMS.items()},
                    "burst_size": burst}
    try:
        bench.setup()
        log(f"docker run --rm latency, {runs} runs in each place (interleaved) ...")
        result["docker_run_ms"] = bench.latency()
        log(f"Neutron requests per docker run, {samples} counts in each place ...")
        result["neutron_requests_per_run"] = bench.requests()
        result["burst"] = bench.bursts()
        log(f"docker run -d -> first ping answered by a container on the host, "
            f"{samples} in each place ...")
        result["time_to_reach_ms"] = bench.reach()
        result["ratios"] = ratios(result)
    finally:
        bench.teardown()
    result["machine"]["seconds"] = round(time.monotonic() - started)
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0
