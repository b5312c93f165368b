"""`kuryr-bench --hosts N`: what each host's Kuryr asks of neutron-server and
OVN, with 1, 2, ... N hosts, on the all-in-one stack, in one run.

The benchmark brings up simulated hosts of its own (`kuryr-aio host up bh1`,
bh2, ...: each its own namespaces, Open vSwitch, ovn-controller (an OVN
chassis), dockerd and Kuryr), one at a time: phase k runs with bh1..bhk.  The
main host is not one of them (other tests use its dockerd and Kuryr at the
same time, which would blur what one host costs).  Every host's dockerd adopts
one Neutron network the benchmark makes (`-o neutron.net.uuid=<id>`); at the
end whatever happens the Docker networks, the hosts (`host down --purge`) and
the Neutron networks go.

In each phase, per host: `docker run -d` + `docker rm -f` cycles interleaved
across the hosts (Neutron requests counted at neutron-server's access log until
it has been quiet for 2 s; CPU seconds of the host's Kuryr, of neutron-server,
MariaDB and OVN read from /proc around each cycle), what one garbage
collection pass lists in Neutron (the three GETs of kuryr/libnetwork/gc.py,
timed from loopback), and one concurrent burst on all hosts at once.  After
the last phase: `kuryr gc --dry-run` run inside each host, one pool refill of
REFILL_SIZE ports per host, and how the GC listing grows with ports of other
hosts, ports of this host and security groups in Neutron.

The machine is shared and noisy: requests of anyone else using the stack at
the same time are counted too (the minimum of the samples is the least
disturbed), and CPU figures are sums over many cycles.  Ratios between phases
are what to compare.  Traffic stays between namespaces of this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

from kuryr.aio.docker import DOCKER_CLI, IMAGE
from kuryr.aio.layout import Layout
from kuryr.aio.procs import StackError, read_pid
from kuryr.bench.dockerd import QUIET_SECONDS, Bench
from kuryr.bench.nested import aio, parse_exports
from kuryr.bench.stats import percentile

MAX_HOSTS = 4  # every load test is bounded: 4 hosts of dockerd + Kuryr + OVS on the machine
HOST_PREFIX = "bh"  # the benchmark's hosts: bh1, bh2, ...
NETWORK_PREFIX = "bench-hosts-"  # its Neutron networks and filler security groups
SUBNET, GATEWAY = "10.181.0.0/24", "10.181.0.1"
REFILL_SUBNET, REFILL_GATEWAY = "10.181.1.0/24", "10.181.1.1"
REFILL_SIZE = 10  # ports of the one measured refill (-o kuryr.pool.size=N)
BURST_PER_HOST = 5
MAX_BURST_PER_HOST = 20
GC_REPS = 5  # repetitions of each GC listing
GROWTH_REPS = 9  # ... in the growth probe, where the differences are small
EXTRA = 30  # ports of other hosts / of this host / security groups added for the growth probe
FILLER_PROJECT = "kuryrbenchhosts"  # + the run's tag: the filler security groups' project
GROUPS_PER_PROJECT = 8  # + the "default" group Neutron makes: within the quota of 10
FILLER_OWNER = "kuryr-bench:filler"  # never one of Kuryr's device owners: no GC touches them
OTHER_HOSTS = 3  # fake hostnames the "other hosts'" filler ports are bound to
GC_INTERVAL_DEFAULT = 300  # [gc] interval's default (kuryr/config.py)
PORTS_PER_HOST = 20  # the derived scenarios' assumption: ports bound to each host
HOST_COMMAND_TIMEOUT = 600.0
IDLE_SECONDS = 10.0  # each phase's idle window
QUIET_LIMIT = 60.0  # a count ends after this long even if neutron-server never goes quiet
LOCK = "bench-hosts.lock"  # in the stack's run directory: one run of this benchmark at a time
GC_QUERIES = ("ports", "security_groups", "networks")  # the GETs of one pass (gc.collect)
SG_FIELDS = ["id", "name", "description", "created_at", "updated_at"]  # what gc.py asks

# One gunicorn access log line: "... "GET /v2.0/ports?x=y HTTP/1.1" 200 1234 ..."
ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) '
                         r"(?P<size>\d+|-)")
# What Kuryr's pool logs for each refill (kuryr/core/pool.py).
REFILL_LINE = re.compile(r"network (?P<net>\S+): (?P<ports>\d+) ports made ready for the pool "
                         r"in (?P<total>[\d.]+) s \(bulk create (?P<bulk>[\d.]+) s\), "
                         r"(?P<waiting>\d+) requests were waiting")


# -- pure parts ---------------------------------------------------------------------------
class Request(NamedTuple):
    method: str
    path: str
    status: int
    size: int  # response bytes (0 when gunicorn logged "-")

    @property
    def resource(self) -> str:
        """"ports" for /v2.0/ports/ID?x=y; "/" for the version document."""
        parts = [p for p in self.path.split("?", 1)[0].split("/") if p]
        if parts and re.fullmatch(r"v\d+(\.\d+)?", parts[0]):
            parts = parts[1:]
        return parts[0] if parts else "/"

    @property
    def kind(self) -> str:
        return f"{self.method} {self.resource}"


def parse_access(lines: Iterable[str]) -> list[Request]:
    found = []
    for line in lines:
        match = ACCESS_LINE.search(line)
        if match:
            size = match.group("size")
            found.append(Request(match.group("method"), match.group("path"),
                                 int(match.group("status")), 0 if size == "-" else int(size)))
    return found


def kinds(requests: Iterable[Request]) -> dict[str, int]:
    """Requests by "METHOD resource", most first."""
    counted = Counter(r.kind for r in requests)
    return dict(sorted(counted.items(), key=lambda item: (-item[1], item[0])))


def cpu_of_stat(text: str, tick: int) -> float:
    """CPU seconds of a process (and its reaped children) from /proc/PID/stat."""
    fields = text.rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / tick


def ppid_of_stat(text: str) -> int:
    return int(text.rsplit(")", 1)[1].split()[1])


def descendants(root: int, parents: dict[int, int]) -> set[int]:
    """``root`` and every process below it, from a pid -> ppid map."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo.extend(children.get(pid, ()))
    return found


def spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds per process group between two readings (never negative: a
    group whose processes were replaced meanwhile reads as 0)."""
    return {name: round(max(0.0, after[name] - before.get(name, after[name])), 3)
            for name in after}


def summary(values: Sequence[float]) -> dict:
    """Median (and min, max, n) of the samples."""
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}

    def num(value: float) -> float | int:
        return int(value) if float(value).is_integer() else round(value, 3)

    return {"median": num(statistics.median(values)), "min": num(min(values)),
            "max": num(max(values)), "n": len(values)}


def parse_refills(lines: Iterable[str]) -> list[dict]:
    """Kuryr's pool refills: ports made ready, seconds in all and in the bulk create."""
    found = []
    for line in lines:
        match = REFILL_LINE.search(line)
        if match:
            found.append({"network": match.group("net"), "ports": int(match.group("ports")),
                          "total_s": float(match.group("total")),
                          "bulk_create_s": float(match.group("bulk")),
                          "waiting": int(match.group("waiting"))})
    return found


def per(total: float | None, count: float | None, digits: int = 4) -> float | None:
    if total is None or not count:
        return None
    return round(total / count, digits)


def cycles_summary(cycles: Sequence[dict]) -> dict:
    """One host's container cycles in one phase: medians of requests and times;
    CPU as sums over the cycles divided by their number (a single cycle is a few
    10 ms clock ticks)."""
    ok = [c for c in cycles if c.get("ok")]
    out: dict[str, Any] = {
        "cycles": len(cycles), "failures": len(cycles) - len(ok),
        "neutron_requests": summary([c["requests"] for c in ok]),
        "run_ms": summary([c["run_ms"] for c in ok]),
        "rm_ms": summary([c["rm_ms"] for c in ok]),
        # How long each cycle's measuring window was (until neutron-server was quiet):
        # what idle work (idle() below) adds to a cycle's CPU is its rate x this.
        "window_s": summary([c["window_s"] for c in ok if "window_s" in c]),
    }
    totals: Counter[str] = Counter()
    for cycle in ok:
        totals.update(cycle.get("kinds", {}))
    out["kinds_per_cycle"] = {k: round(v / len(ok), 2) for k, v in
                              sorted(totals.items(), key=lambda i: -i[1])} if ok else {}
    cpu: dict[str, float] = {}
    for cycle in ok:
        for name, seconds in cycle.get("cpu", {}).items():
            cpu[name] = cpu.get(name, 0.0) + seconds
    out["cpu_s_per_cycle"] = {name: round(seconds / len(ok), 4)
                              for name, seconds in sorted(cpu.items())} if ok else {}
    requests = sum(c["requests"] for c in ok)
    out["neutron_api_cpu_s_per_request"] = per(cpu.get("neutron-api"), requests)
    return out


def pooled(phase: dict) -> dict:
    """All hosts of one phase together: the figures the model uses."""
    hosts = phase.get("hosts", {})
    rows = [row for row in hosts.values() if row.get("cycles")]
    if not rows:
        return {}

    def weighted(get: Callable[[dict], float | None]) -> float | None:
        values = [(get(r), r["cycles"] - r["failures"]) for r in rows]
        values = [(v, n) for v, n in values if v is not None and n]
        total = sum(n for _, n in values)
        return round(sum(v * n for v, n in values) / total, 4) if total else None

    cpu = [r["cpu_s_per_cycle"] for r in rows]
    return {
        "neutron_requests_median": statistics.median(
            [r["neutron_requests"]["median"] for r in rows
             if r["neutron_requests"]["median"] is not None] or [0]),
        "neutron_requests_min": min((r["neutron_requests"]["min"] for r in rows
                                     if r["neutron_requests"]["min"] is not None), default=None),
        "kuryr_cpu_s": weighted(lambda r: r["cpu_s_per_cycle"].get("kuryr:own")),
        "neutron_api_cpu_s": weighted(lambda r: r["cpu_s_per_cycle"].get("neutron-api")),
        "mariadb_cpu_s": weighted(lambda r: r["cpu_s_per_cycle"].get("mariadb")),
        "ovn_central_cpu_s": weighted(lambda r: sum(r["cpu_s_per_cycle"].get(k, 0.0) for k in (
            "ovn-northd", "ovsdb-nb", "ovsdb-sb"))),
        "ovn_controller_own_cpu_s": weighted(
            lambda r: r["cpu_s_per_cycle"].get("ovn-controller:own")),
        "ovn_controller_each_other_cpu_s": weighted(
            lambda r: r["cpu_s_per_cycle"].get("ovn-controller:others-each")),
        "neutron_api_cpu_s_per_request": weighted(
            lambda r: r.get("neutron_api_cpu_s_per_request")),
        "hosts": len(rows), "components": sorted({k for c in cpu for k in c}),
    }


def gc_total_ms(listing: dict) -> float | None:
    """One pass's Neutron listing time: the sum of its GETs' medians."""
    values = [(listing.get(query) or {}).get("median_ms") for query in GC_QUERIES
              if query in listing]
    if not values or any(v is None for v in values):
        return None
    return round(sum(v for v in values if v is not None), 1)


def _over(value: float | None, base: float | None) -> float | None:
    if value is None or not base:
        return None
    return round(value / base, 2)


def ratios(result: dict) -> dict:
    """Each phase's per-host figures over phase 1's (does a host cost more when
    there are more hosts?), and the GC listing's growth with what others have."""
    out: dict[str, float] = {}
    phases = result.get("phases", [])
    if phases:
        base = phases[0]
        base_pool = base.get("pooled", {})
        base_gc = statistics.median([v for v in (gc_total_ms(g) for g in
                                                 base.get("gc_listing", {}).values())
                                     if v is not None] or [0])
        for phase in phases[1:]:
            k = phase["hosts_up"]
            pool = phase.get("pooled", {})
            for key in ("neutron_requests_median", "kuryr_cpu_s", "neutron_api_cpu_s",
                        "ovn_central_cpu_s", "ovn_controller_own_cpu_s"):
                value = _over(pool.get(key), base_pool.get(key))
                if value is not None:
                    out[f"{key}_per_cycle[{k}_hosts/1]"] = value
            gc = [v for v in (gc_total_ms(g) for g in phase.get("gc_listing", {}).values())
                  if v is not None]
            value = _over(statistics.median(gc) if gc else None, base_gc)
            if value is not None:
                out[f"gc_listing_ms[{k}_hosts/1]"] = value
            burst, base_burst = phase.get("burst", {}), base.get("burst", {})
            value = _over(per(burst.get("wall_s"), burst.get("size")),
                          per(base_burst.get("wall_s"), base_burst.get("size")))
            if value is not None:
                out[f"burst_wall_per_container[{k}_hosts/1]"] = value
    growth = result.get("gc_growth", {})
    baseline = growth.get("baseline", {})
    for step in ("other_hosts_ports", "own_ports", "security_groups"):
        for query in ("ports", "ports_unfiltered", "security_groups", "security_groups_all"):
            value = _over((growth.get(step, {}).get(query) or {}).get("median_ms"),
                          (baseline.get(query) or {}).get("median_ms"))
            if value is not None:
                out[f"gc_{query}_ms[+{step}/baseline]"] = value
    return out


@dataclass
class Model:
    """What N hosts, each starting and stopping M containers a minute, ask of
    neutron-server, MariaDB, OVN and Kuryr: derived from measured figures."""

    requests_per_container: float  # Neutron requests per start + stop (incl. pool top-up)
    neutron_api_cpu_per_container: float  # CPU s of neutron-server's API workers
    mariadb_cpu_per_container: float
    ovn_central_cpu_per_container: float  # ovn-northd + NB + SB ovsdb-servers
    ovn_controller_own_cpu_per_container: float  # the host's own ovn-controller
    ovn_controller_other_cpu_per_container: float  # each other host's ovn-controller
    kuryr_cpu_per_container: float
    gc_requests_per_pass: float = 3.0
    gc_neutron_cpu_per_pass: float = 0.0
    gc_listing_ms_per_pass: float = 0.0
    # Neutron's time per port in a ports listing (unfiltered minus filtered listing,
    # over the ports only the unfiltered one returned), and the filtered GET's own
    # (a GC pass's: Kuryr sends the host filter to Neutron).
    listing_ms_per_port: float = 0.0
    filtered_ports_listing_ms: float = 0.0

    def at(self, hosts: int, per_minute: float, interval: float = GC_INTERVAL_DEFAULT,
           ports_per_host: int = PORTS_PER_HOST) -> dict:
        containers_per_s = hosts * per_minute / 60
        gc_passes_per_s = hosts / interval if interval > 0 else 0.0
        # Before the fix each pass listed every port of the deployment (hosts x
        # ports_per_host); with the host filter applied by Neutron, only its own.
        unfiltered_s = (self.filtered_ports_listing_ms
                        + self.listing_ms_per_port * hosts * ports_per_host) / 1000
        filtered_s = (self.filtered_ports_listing_ms
                      + self.listing_ms_per_port * ports_per_host) / 1000
        neutron_cores = (containers_per_s * self.neutron_api_cpu_per_container
                         + gc_passes_per_s * self.gc_neutron_cpu_per_pass)
        return {
            "hosts": hosts, "containers_per_minute_per_host": per_minute,
            "gc_interval_s": interval,
            "containers_per_s": round(containers_per_s, 2),
            "neutron_requests_per_s": round(containers_per_s * self.requests_per_container, 1),
            "gc_requests_per_s": round(gc_passes_per_s * self.gc_requests_per_pass, 2),
            # Every Kuryr started at the same moment (a fleet restart) collects in step:
            "gc_requests_in_one_synchronized_round": round(hosts * self.gc_requests_per_pass),
            "gc_synchronized_round_neutron_cpu_s": round(
                hosts * self.gc_neutron_cpu_per_pass, 2),
            "neutron_api_cores": round(neutron_cores, 2),
            "neutron_api_cores_gc_share": round(
                gc_passes_per_s * self.gc_neutron_cpu_per_pass / neutron_cores, 4)
            if neutron_cores else None,
            "mariadb_cores": round(containers_per_s * self.mariadb_cpu_per_container, 2),
            "ovn_central_cores": round(containers_per_s * self.ovn_central_cpu_per_container, 2),
            # Every host's ovn-controller sees every port change of a network it has a
            # port on: with all hosts on one network, each handles all the changes.
            "ovn_controller_cores_per_host_one_shared_network": round(
                (per_minute / 60) * self.ovn_controller_own_cpu_per_container
                + (hosts - 1) * (per_minute / 60) * self.ovn_controller_other_cpu_per_container,
                3),
            "kuryr_cores_per_host": round((per_minute / 60) * self.kuryr_cpu_per_container, 4),
            "ports_per_host": ports_per_host,
            "gc_ports_listing_s_per_pass_unfiltered": round(unfiltered_s, 3),
            "gc_ports_listing_neutron_cores_unfiltered": round(gc_passes_per_s * unfiltered_s,
                                                               3),
            "gc_ports_listing_s_per_pass_filtered": round(filtered_s, 3),
            "gc_ports_listing_neutron_cores_filtered": round(gc_passes_per_s * filtered_s, 4),
        }

    def saturation(self) -> dict:
        """Containers per second (all hosts together) at which each central
        component needs one full core: the first to reach it is the bottleneck
        of a single-worker deployment like this stack's."""
        out = {}
        for name, cost in (("neutron_api", self.neutron_api_cpu_per_container),
                           ("mariadb", self.mariadb_cpu_per_container),
                           ("ovn_central", self.ovn_central_cpu_per_container)):
            out[name] = round(1 / cost, 1) if cost > 0 else None
        return out


def model_of(result: dict) -> Model | None:
    """The model from the last phase's pooled figures and the GC listing."""
    phases = result.get("phases", [])
    if not phases:
        return None
    pool = phases[-1].get("pooled", {})
    if pool.get("neutron_api_cpu_s") is None:
        return None
    listing = phases[-1].get("gc_listing", {})
    gc_cpu = [g.get("neutron_api_cpu_s_per_pass") for g in listing.values()]
    gc_cpu_values = [v for v in gc_cpu if v is not None]
    gc_ms = [v for v in (gc_total_ms(g) for g in listing.values()) if v is not None]
    gc_requests = [g.get("requests_per_pass") for g in listing.values()
                   if g.get("requests_per_pass") is not None]
    slopes = [v for v in (listing_ms_per_port(g, phases[-1].get("neutron_ports_total"))
                          for g in listing.values()) if v is not None]
    per_port = statistics.median(slopes) if slopes else None
    filtered = [g["ports"]["median_ms"] for g in listing.values()
                if (g.get("ports") or {}).get("median_ms") is not None]
    return Model(
        requests_per_container=float(pool.get("neutron_requests_median") or 0),
        neutron_api_cpu_per_container=pool.get("neutron_api_cpu_s") or 0.0,
        mariadb_cpu_per_container=pool.get("mariadb_cpu_s") or 0.0,
        ovn_central_cpu_per_container=pool.get("ovn_central_cpu_s") or 0.0,
        ovn_controller_own_cpu_per_container=pool.get("ovn_controller_own_cpu_s") or 0.0,
        ovn_controller_other_cpu_per_container=pool.get("ovn_controller_each_other_cpu_s")
        or 0.0,
        kuryr_cpu_per_container=pool.get("kuryr_cpu_s") or 0.0,
        gc_requests_per_pass=float(statistics.median(gc_requests)) if gc_requests else 3.0,
        gc_neutron_cpu_per_pass=statistics.median(gc_cpu_values) if gc_cpu_values else 0.0,
        gc_listing_ms_per_pass=statistics.median(gc_ms) if gc_ms else 0.0,
        listing_ms_per_port=per_port or 0.0,
        filtered_ports_listing_ms=statistics.median(filtered) if filtered else 0.0)


def listing_ms_per_port(listing: dict, ports_total: int | None) -> float | None:
    """Neutron's time per port listed: the unfiltered ports GET minus the one
    Neutron filters, over the ports only the first returned."""
    full = (listing.get("ports_unfiltered") or {}).get("median_ms")
    own = listing.get("ports") or {}
    if full is None or own.get("median_ms") is None or ports_total is None:
        return None
    extra = ports_total - (own.get("items") or 0)
    if extra <= 0:
        return None
    return round(max(0.0, full - own["median_ms"]) / extra, 3)


SCENARIOS = ((10, 10), (100, 10), (100, 60), (1000, 10))


def derive(result: dict, scenarios: Sequence[tuple[int, float]] = SCENARIOS,
           interval: float = GC_INTERVAL_DEFAULT) -> dict:
    """Derived (not measured): the scenarios' load from the measured figures."""
    model = model_of(result)
    if model is None:
        return {}
    return {"inputs": dict(vars(model)),
            "saturation_containers_per_s": model.saturation(),
            "scenarios": [model.at(hosts, per_minute, interval)
                          for hosts, per_minute in scenarios]}


def table(result: dict) -> str:
    lines = ["", ("Per-host costs with 1..N simulated hosts (kuryr-bench --hosts); "
                  "CPU s per docker run -d + rm -f cycle")]
    for phase in result.get("phases", []):
        k = phase["hosts_up"]
        lines.append(f" {k} host(s) up:")
        for name, row in phase.get("hosts", {}).items():
            cpu = row.get("cpu_s_per_cycle", {})
            lines.append(
                f"  {name:5} cycles {row['cycles']:>3} (fail {row['failures']}): Neutron "
                f"requests median {row['neutron_requests']['median']} (min "
                f"{row['neutron_requests']['min']}), run -d {row['run_ms']['median']} ms, "
                f"rm -f {row['rm_ms']['median']} ms; CPU kuryr {cpu.get('kuryr:own')} "
                f"neutron-api {cpu.get('neutron-api')} mariadb {cpu.get('mariadb')} "
                f"ovn-northd {cpu.get('ovn-northd')} ovn-controller own "
                f"{cpu.get('ovn-controller:own')} others-each "
                f"{cpu.get('ovn-controller:others-each')}")
        for name, listing in phase.get("gc_listing", {}).items():
            parts = ", ".join(f"{q} {row.get('median_ms')} ms/{row.get('items')} items/"
                              f"{row.get('bytes')} B" for q, row in listing.items()
                              if isinstance(row, dict) and (q in GC_QUERIES or
                                                            q.endswith(("_unfiltered",
                                                                        "_all"))))
            lines.append(f"  GC listing {name}: {parts}; neutron-api CPU "
                         f"{listing.get('neutron_api_cpu_s_per_pass')} s/pass")
        idle = phase.get("idle", {})
        if idle:
            rates = idle.get("cpu_s_per_s", {})
            lines.append(f"  idle {idle.get('seconds')} s, CPU s per s: " + ", ".join(
                f"{k} {v}" for k, v in rates.items() if v) +
                f"; others' Neutron requests {idle.get('neutron_requests_of_others')}")
        burst = phase.get("burst", {})
        if burst:
            lines.append(f"  burst: {burst.get('succeeded')}/{burst.get('size')} ok on "
                         f"{k} host(s), wall {burst.get('wall_s')} s, p95 "
                         f"{burst.get('p95_ms')} ms, Neutron requests "
                         f"{burst.get('neutron_requests')}")
    for name, row in result.get("gc_command", {}).items():
        lines.append(f" kuryr gc --dry-run on {name}: {row.get('neutron_requests')} requests "
                     f"{json.dumps(row.get('kinds', {}))}, {row.get('wall_s')} s")
    for name, row in result.get("refill", {}).items():
        lines.append(f" refill of {REFILL_SIZE} on {name}: {json.dumps(row)}")
    growth = result.get("gc_growth", {})
    for step, row in growth.items():
        if isinstance(row, dict) and "ports" in row:
            every = row.get("ports_unfiltered") or {}
            lines.append(f" GC listing growth, {step}: ports {row['ports'].get('median_ms')} ms "
                         f"({row['ports'].get('bytes')} B, {row['ports'].get('items')} of "
                         f"{row.get('neutron_ports_total')} ports), unfiltered (before the fix) "
                         f"{every.get('median_ms')} ms ({every.get('bytes')} B), security groups "
                         f"{row['security_groups'].get('median_ms')} ms "
                         f"({row['security_groups'].get('items')} items), all groups "
                         f"{(row.get('security_groups_all') or {}).get('median_ms')} ms "
                         f"({(row.get('security_groups_all') or {}).get('items')} items)")
    lines += ["", f"ratios: {json.dumps(result.get('ratios', {}))}", ""]
    return "\n".join(lines)


# -- the stack ------------------------------------------------------------------------------
def proc_table(proc: Path = Path("/proc")) -> tuple[dict[int, int], dict[int, str]]:
    """pid -> ppid, pid -> stat text of every process now."""
    parents, stats = {}, {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        pid = int(entry.name)
        parents[pid] = ppid_of_stat(text)
        stats[pid] = text
    return parents, stats


class CpuMeter:
    """CPU seconds of named process groups (a PID file's process and everything
    below it), read from /proc."""

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self.groups: dict[str, Path] = {}
        self.proc = proc
        self.tick = os.sysconf("SC_CLK_TCK")

    def add(self, name: str, pidfile: Path | str | None) -> None:
        if pidfile:
            self.groups[name] = Path(pidfile)

    def remove(self, prefix: str) -> None:
        for name in [n for n in self.groups if n.startswith(prefix)]:
            del self.groups[name]

    def read(self) -> dict[str, float]:
        parents, stats = proc_table(self.proc)
        out = {}
        for name, pidfile in self.groups.items():
            root = read_pid(pidfile)
            if root is None or root not in stats:
                continue
            out[name] = sum(cpu_of_stat(stats[pid], self.tick)
                            for pid in descendants(root, parents) if pid in stats)
        return out


class AccessLog:
    """neutron-server's access log, read from an offset."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def since(self, offset: int) -> list[Request]:
        try:
            with self.path.open("rb") as fh:
                fh.seek(offset)
                text = fh.read().decode(errors="replace")
        except OSError:
            return []
        return parse_access(text.splitlines())

    def wait_quiet(self, quiet: float = QUIET_SECONDS, limit: float = QUIET_LIMIT) -> None:
        """Until neutron-server has logged nothing for ``quiet`` seconds (background
        writes, a pool's top-up land after the docker command returns)."""
        seen, quiet_since, deadline = -1, time.monotonic(), time.monotonic() + limit
        while time.monotonic() < deadline:
            time.sleep(0.25)
            now = self.mark()
            if now != seen:
                seen, quiet_since = now, time.monotonic()
            elif time.monotonic() - quiet_since >= quiet:
                return


@dataclass
class SimHost:
    """One of the benchmark's hosts: its exports (`kuryr-aio host env`) and a
    Bench against its dockerd."""

    name: str
    env: dict[str, str]
    bench: Bench
    log_path: Path

    @property
    def hostname(self) -> str:
        return self.env.get("KURYR_HOST_NAME") or self.name

    @property
    def exec_prefix(self) -> list[str]:
        return shlex.split(self.env.get("KURYR_HOST_EXEC", ""))


class HostsBench:
    def __init__(self, layout: Layout, log: Callable[[str], None], hosts: int, runs: int,
                 burst: int, extra: int = EXTRA) -> None:
        from kuryr.neutron.client import connect_endpoint

        self.layout = layout
        self.log = log
        self.count = hosts
        self.runs = runs
        self.burst_per_host = burst
        self.extra = extra
        self.tag = uuid.uuid4().hex[:6]
        self.access = AccessLog(layout.log("neutron-access"))
        self.neutron = connect_endpoint(layout.neutron_url)
        self.hosts: dict[str, SimHost] = {}
        self.made_hosts: list[str] = []
        self.networks: dict[str, str] = {}  # "main"/"refill" -> Neutron network id
        self.filler_groups: list[str] = []
        self.filler_project = f"{FILLER_PROJECT}{self.tag}"
        self.filler_ports: list[str] = []
        self.cpu = CpuMeter()
        self.cpu.add("neutron-api", layout.pidfile("neutron-api"))
        self.cpu.add("neutron-maintenance", layout.pidfile("neutron-ovn-maintenance-worker"))
        self.cpu.add("mariadb", layout.pidfile("mariadb"))
        self.cpu.add("ovn-northd", layout.ovn_run / "ovn-northd.pid")
        self.cpu.add("ovsdb-nb", layout.ovn_run / "ovnnb_db.pid")
        self.cpu.add("ovsdb-sb", layout.ovn_run / "ovnsb_db.pid")

    # -- plumbing -----------------------------------------------------------------
    def window(self, action: Callable[[], object]) -> tuple[list[Request], dict[str, float],
                                                           object]:
        """Requests at neutron-server and CPU spent while ``action`` ran and settled."""
        before_cpu = self.cpu.read()
        offset = self.access.mark()
        value = action()
        self.access.wait_quiet()
        requests = self.access.since(offset)
        return requests, spent(before_cpu, self.cpu.read()), value

    def net_name(self, which: str) -> str:
        return f"{NETWORK_PREFIX}{self.tag}-{which}"

    # -- set-up -------------------------------------------------------------------
    def remove_leftovers(self) -> None:
        """What an interrupted run of this benchmark left: its hosts, its Neutron
        networks (and their ports) and filler security groups."""
        for index in range(1, MAX_HOSTS + 1):
            name = f"{HOST_PREFIX}{index}"
            if (self.layout.base / "hosts" / name).exists():
                self.log(f"host {name} left by an interrupted run: host down --purge ...")
                with contextlib.suppress(StackError, subprocess.TimeoutExpired):
                    aio("host", "down", name, "--purge", timeout=HOST_COMMAND_TIMEOUT)
        for net in self.neutron.api.networks():
            if str(net.name or "").startswith(NETWORK_PREFIX):
                self.log(f"Neutron network {net.name} left by an interrupted run: deleting")
                self.delete_network(net.id)
        for group in self.neutron.api.security_groups():
            if (group.name or "").startswith(NETWORK_PREFIX) or \
                    str(group.project_id or "").startswith(FILLER_PROJECT):
                with contextlib.suppress(Exception):
                    self.neutron.delete_security_group(group.id)

    def make_networks(self) -> None:
        for which, cidr, gateway in (("main", SUBNET, GATEWAY),
                                     ("refill", REFILL_SUBNET, REFILL_GATEWAY)):
            net = self.neutron.create_network(self.net_name(which))
            self.networks[which] = net.id
            self.neutron.create_subnet(net.id, cidr, self.net_name(which), gateway,
                                       enable_dhcp=False)

    def delete_network(self, network_id: str) -> None:
        for port in self.neutron.ports(network_id=network_id):
            if port.device_owner.startswith("network:"):
                continue  # the DHCP/metadata port goes with the network
            with contextlib.suppress(Exception):
                self.neutron.delete_port(port.id)
        try:
            self.neutron.delete_network(network_id)
        except Exception as exc:  # noqa: BLE001 - say so, go on cleaning
            self.log(f"cannot delete Neutron network {network_id}: {exc}")

    def host_up(self, index: int) -> dict:
        name = f"{HOST_PREFIX}{index}"
        self.log(f"kuryr-aio host up {name} ...")
        self.made_hosts.append(name)
        started = time.monotonic()
        requests, cpu, _ = self.window(
            lambda: aio("host", "up", name, timeout=HOST_COMMAND_TIMEOUT))
        up_s = time.monotonic() - started
        env = parse_exports(aio("host", "env", name, capture=True, timeout=60))
        if not env.get("DOCKER_HOST"):
            raise StackError(f"kuryr-aio host env {name}: no DOCKER_HOST")
        bench = Bench(self.layout, self.log)
        bench.docker_host = env["DOCKER_HOST"]
        bench.tag = self.tag
        log_path = Path(env.get("KURYR_HOST_KURYR_LOG", "")
                        or self.layout.log(f"host-{name}-kuryr"))
        host = SimHost(name, env, bench, log_path)
        self.hosts[name] = host
        self.cpu.add(f"kuryr:{name}", env.get("KURYR_HOST_KURYR_PIDFILE"))
        self.cpu.add(f"ovn-controller:{name}", env.get("KURYR_HOST_OVN_CONTROLLER_PIDFILE"))
        self.cpu.add(f"dockerd:{name}", env.get("KURYR_HOST_DOCKERD_PIDFILE"))
        self.ensure_image(host)
        self.log(f"{name} (hostname {host.hostname}): adopting {self.net_name('main')} ...")
        adopt_requests, adopt_cpu, _ = self.window(lambda: self.adopt(host, "main"))
        return {"hostname": host.hostname, "up_s": round(up_s, 1),
                "up_neutron_requests": len(requests), "up_kinds": kinds(requests),
                "up_cpu_s": {k: v for k, v in cpu.items() if v},
                "adopt_neutron_requests": len(adopt_requests),
                "adopt_cpu_s": {k: v for k, v in adopt_cpu.items() if v},
                "adopt_kinds": kinds(adopt_requests),
                "exports": sorted(env)}

    def ensure_image(self, host: SimHost) -> None:
        rc, _ = host.bench.docker("image", "inspect", IMAGE, check=False)
        if rc == 0:
            return
        self.log(f"{host.name}: loading {IMAGE} from the main dockerd ...")
        with subprocess.Popen([DOCKER_CLI, "-H", self.layout.docker_host, "save", IMAGE],
                              stdout=subprocess.PIPE) as save:
            subprocess.run([DOCKER_CLI, "-H", host.bench.docker_host, "load"],
                           stdin=save.stdout, capture_output=True, check=True, timeout=300)
        if save.returncode != 0:
            raise StackError(f"docker save {IMAGE} failed")

    def adopt(self, host: SimHost, which: str, *extra: str) -> str:
        cidr, gateway = (SUBNET, GATEWAY) if which == "main" else (REFILL_SUBNET,
                                                                     REFILL_GATEWAY)
        name = self.net_name(which)
        host.bench.docker("network", "create", "-d", "kuryr", "--ipam-driver", "kuryr",
                          "-o", f"neutron.net.uuid={self.networks[which]}", *extra,
                          "--subnet", cidr, "--gateway", gateway, name)
        host.bench.cleanup.append(["network", "rm", name])
        return name

    # -- measurements -------------------------------------------------------------
    def cycle(self, host: SimHost, index: int) -> dict:
        """One `docker run -d` + `docker rm -f` on ``host``."""
        name = f"{NETWORK_PREFIX}{self.tag}-{host.name}-{index}"
        times: dict[str, tuple[int, float]] = {}

        def action() -> None:
            times["run"] = host.bench.docker("run", "-d", "--name", name, "--net",
                                             self.net_name("main"), IMAGE, "sleep", "600",
                                             check=False)
            times["rm"] = host.bench.docker("rm", "-f", name, check=False)

        started = time.monotonic()
        requests, cpu, _ = self.window(action)
        window_s = time.monotonic() - started
        ok = times["run"][0] == 0 and times["rm"][0] == 0
        if times["rm"][0] != 0:
            host.bench.cleanup.append(["rm", "-f", name])
        others = [n for n in self.hosts if n != host.name]
        own = {"kuryr:own": cpu.get(f"kuryr:{host.name}", 0.0),
               "ovn-controller:own": cpu.get(f"ovn-controller:{host.name}", 0.0),
               "dockerd:own": cpu.get(f"dockerd:{host.name}", 0.0)}
        if others:
            own["ovn-controller:others-each"] = round(sum(
                cpu.get(f"ovn-controller:{n}", 0.0) for n in others) / len(others), 4)
            own["kuryr:others-each"] = round(sum(
                cpu.get(f"kuryr:{n}", 0.0) for n in others) / len(others), 4)
        central = {k: v for k, v in cpu.items() if ":" not in k}
        return {"ok": ok, "requests": len(requests), "kinds": kinds(requests),
                "run_ms": round(times["run"][1] * 1000), "rm_ms": round(times["rm"][1] * 1000),
                "window_s": round(window_s, 2), "cpu": {**central, **own}}

    def cycles(self) -> dict[str, dict]:
        """``runs`` cycles per host, interleaved (the order rotates each round)."""
        names = list(self.hosts)
        done: dict[str, list[dict]] = {n: [] for n in names}
        for host in self.hosts.values():  # warm-up (not counted): first run after adopt
            self.cycle(host, 999)
        for round_ in range(self.runs):
            order = names[round_ % len(names):] + names[:round_ % len(names)]
            for name in order:
                done[name].append(self.cycle(self.hosts[name], round_))
        return {name: cycles_summary(rows) for name, rows in done.items()}

    def idle(self, seconds: float = IDLE_SECONDS) -> dict:
        """CPU per second of every process group while the benchmark does nothing
        (its hosts idle; anyone else's requests still counted)."""
        before = self.cpu.read()
        offset = self.access.mark()
        time.sleep(seconds)
        cpu = spent(before, self.cpu.read())
        requests = self.access.since(offset)
        return {"seconds": seconds,
                "cpu_s_per_s": {k: round(v / seconds, 4) for k, v in sorted(cpu.items())},
                "neutron_requests_of_others": len(requests)}

    def gc_listing(self, host: SimHost, reps: int = GC_REPS) -> dict:
        """The Neutron part of one GC pass of ``host`` (kuryr/libnetwork/gc.py
        collect: its ports by binding:host_id, every security group, its networks
        by host tag), each GET ``reps`` times, timed from loopback."""
        from kuryr.neutron import marks

        queries: dict[str, tuple[Callable[[], list], str]] = {
            "ports": (lambda: self.neutron.ports(binding_host_id=host.hostname), "ports"),
            "security_groups": (lambda: self.neutron.security_groups(
                fields=SG_FIELDS, description=marks.expose_group_description(host.hostname)),
                                "security-groups"),
            "networks": (lambda: self.neutron.networks_tagged([marks.host_tag(host.hostname)]),
                         "networks"),
        }
        out: dict[str, Any] = {}
        before_cpu = self.cpu.read()
        for query, (call, resource) in queries.items():
            out[query] = self.timed_query(call, resource, reps)
        cpu = spent(before_cpu, self.cpu.read())
        out["requests_per_pass"] = len(queries)
        out["neutron_api_cpu_s_per_pass"] = per(cpu.get("neutron-api"), reps)
        out["mariadb_cpu_s_per_pass"] = per(cpu.get("mariadb"), reps)
        # Not part of the pass: the listing every pass made before Kuryr sent the
        # host filter to Neutron (openstacksdk knows it only as "binding:host_id";
        # given as binding_host_id it fetched every port and filtered here).
        before_cpu = self.cpu.read()
        out["ports_unfiltered"] = self.timed_query(
            lambda: list(self.neutron.api.ports()), "ports", reps)
        out["ports_unfiltered"]["neutron_api_cpu_s_per_request"] = per(
            spent(before_cpu, self.cpu.read()).get("neutron-api"), reps)
        # Nor this: every group Kuryr can see, as the start-up pass (and every
        # pass before groups had one description per host) lists them.
        out["security_groups_all"] = self.timed_query(
            lambda: self.neutron.security_groups(fields=SG_FIELDS), "security-groups", reps)
        return out

    def timed_query(self, call: Callable[[], list], resource: str, reps: int) -> dict:
        offset = self.access.mark()
        times, items = [], 0
        for _ in range(reps):
            started = time.monotonic()
            items = len(call())
            times.append(time.monotonic() - started)
        sizes = [r.size for r in self.access.since(offset)
                 if r.method == "GET" and r.resource == resource]
        return {"median_ms": round(statistics.median(times) * 1000, 1),
                "min_ms": round(min(times) * 1000, 1), "items": items,
                "bytes": int(statistics.median(sizes)) if sizes else None}

    def burst(self) -> dict:
        """``burst_per_host`` concurrent `docker run --rm` on every host at once."""
        results: dict[str, list[tuple[int, float]]] = {n: [] for n in self.hosts}
        lock = threading.Lock()

        def one(host: SimHost) -> None:
            rc, elapsed = host.bench.docker("run", "--rm", "--net", self.net_name("main"),
                                            IMAGE, "true", check=False, timeout=600)
            with lock:
                results[host.name].append((rc, elapsed))

        threads = [threading.Thread(target=one, args=(host,)) for host in self.hosts.values()
                   for _ in range(self.burst_per_host)]
        walls: dict[str, float] = {}

        def action() -> None:
            started = time.monotonic()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            walls["all"] = time.monotonic() - started

        requests, cpu, _ = self.window(action)
        ok = [e for rows in results.values() for rc, e in rows if rc == 0]
        size = len(threads)
        return {"size": size, "per_host": self.burst_per_host, "succeeded": len(ok),
                "failures": size - len(ok), "wall_s": round(walls["all"], 1),
                "p95_ms": round(percentile(ok, 0.95) * 1000) if ok else None,
                "by_host": {n: sum(1 for rc, _ in rows if rc == 0) for n, rows in
                            results.items()},
                "neutron_requests": len(requests), "kinds": kinds(requests),
                "cpu_s": {k: round(v, 2) for k, v in cpu.items() if v}}

    def gc_command(self, host: SimHost) -> dict:
        """`kuryr gc --dry-run` inside the host with its own kuryr.conf: a whole
        pass as the daemon makes it (plus the command's connection set-up)."""
        kuryr = Path(sys.executable).parent / "kuryr"
        conf = host.env.get("KURYR_HOST_KURYR_CONF")
        if not host.exec_prefix or not conf:
            return {"error": "no KURYR_HOST_EXEC / KURYR_HOST_KURYR_CONF"}
        out: dict[str, Any] = {}

        def action() -> None:
            started = time.monotonic()
            proc = subprocess.run([*host.exec_prefix, str(kuryr), "gc", "--dry-run",
                                   "--config-file", conf], capture_output=True, text=True,
                                  timeout=120, check=False)
            out["wall_s"] = round(time.monotonic() - started, 2)
            out["rc"] = proc.returncode
            out["output"] = (proc.stdout.strip() or proc.stderr.strip())[-300:]

        requests, _, _ = self.window(action)
        out["neutron_requests"] = len(requests)
        out["kinds"] = kinds(requests)
        return out

    def refill(self, host: SimHost) -> dict:
        """One refill of REFILL_SIZE ports: the refill network adopted with
        -o kuryr.pool.size=REFILL_SIZE (the adoption's requests included), then
        removed again (the pool drained)."""
        from kuryr.neutron.types import NewPort

        log_offset = host.log_path.stat().st_size if host.log_path.exists() else 0
        network_id = self.networks["refill"]
        refills: list[dict] = []

        def action() -> None:
            self.adopt(host, "refill", "-o", f"kuryr.pool.size={REFILL_SIZE}")
            # neutron-server logs a request when it has answered: a bulk create of
            # seconds looks quiet.  Kuryr logs the refill once its ports are plugged.
            deadline = time.monotonic() + QUIET_LIMIT
            while time.monotonic() < deadline:
                refills[:] = [r for r in self.kuryr_log_since(host, log_offset)
                              if r["network"] == network_id]
                if sum(r["ports"] for r in refills) >= REFILL_SIZE:
                    return
                time.sleep(0.5)

        requests, cpu, _ = self.window(action)
        posts = [r for r in requests if r.kind == "POST ports"]
        body = {"ports": [NewPort(network_id=self.networks["refill"],
                                  fixed_ips=({"subnet_id": "0" * 36},),
                                  device_owner="kuryr:pool", binding_host_id=host.hostname,
                                  name="kuryr-pool-port").body()
                          for _ in range(REFILL_SIZE)]}
        drain, drain_cpu, _ = self.window(
            lambda: host.bench.docker("network", "rm", self.net_name("refill")))
        host.bench.cleanup.remove(["network", "rm", self.net_name("refill")])
        return {"adopt_and_fill_requests": len(requests), "kinds": kinds(requests),
                "bulk_posts": len(posts),
                "bulk_post_response_bytes": [r.size for r in posts],
                "bulk_post_request_bytes_computed": len(json.dumps(body)),
                "kuryr_log": refills,
                "cpu_s": {k: round(v, 3) for k, v in cpu.items() if v},
                "drain_requests": len(drain), "drain_kinds": kinds(drain),
                "drain_neutron_api_cpu_s": drain_cpu.get("neutron-api")}

    @staticmethod
    def kuryr_log_since(host: SimHost, offset: int) -> list[dict]:
        try:
            with host.log_path.open("rb") as fh:
                fh.seek(offset)
                return parse_refills(fh.read().decode(errors="replace").splitlines())
        except OSError:
            return []

    def gc_growth(self, host: SimHost) -> dict:
        """How one host's GC listing grows: with ``extra`` ports bound to other
        hosts, then ``extra`` more bound to this host (a device owner no GC
        collects), then ``extra`` security groups in the project."""
        from kuryr.neutron.types import NewPort

        def listing() -> dict:
            row = self.gc_listing(host, GROWTH_REPS)
            return {"ports": row["ports"], "security_groups": row["security_groups"],
                    "networks": row["networks"], "total_ms": gc_total_ms(row),
                    "ports_unfiltered": row["ports_unfiltered"],
                    "security_groups_all": row["security_groups_all"],
                    "neutron_ports_total": len(list(self.neutron.api.ports())),
                    "neutron_api_cpu_s_per_pass": row["neutron_api_cpu_s_per_pass"]}

        subnet = self.neutron.subnets(network_id=self.networks["main"])[0]

        def fillers(hostname: Callable[[int], str], label: str) -> None:
            made = self.neutron.create_ports([NewPort(
                network_id=self.networks["main"], fixed_ips=({"subnet_id": subnet.id},),
                device_owner=FILLER_OWNER, binding_host_id=hostname(i),
                name=f"{NETWORK_PREFIX}{self.tag}-{label}-{i}") for i in range(self.extra)])
            self.filler_ports += [p.id for p in made]

        out: dict[str, Any] = {"host": host.name, "extra": self.extra,
                               "neutron_ports_total_before": len(self.neutron.ports())}
        out["baseline"] = listing()
        self.log(f"GC listing growth: +{self.extra} ports of other hosts ...")
        fillers(lambda i: f"{NETWORK_PREFIX}other-{i % OTHER_HOSTS}", "other")
        out["other_hosts_ports"] = listing()
        self.log(f"GC listing growth: +{self.extra} ports of {host.name} ...")
        fillers(lambda i: host.hostname, "own")
        out["own_ports"] = listing()
        # In projects of their own: Neutron's default quota is 10 security groups
        # a project.  Kuryr here is admin (no-auth), so its GC lists
        # every project's groups, these too (with Keystone, only its project's).
        self.log(f"GC listing growth: +{self.extra} security groups (projects "
                 f"{self.filler_project}-*) ...")
        for i in range(self.extra):
            group = self.neutron.api.create_security_group(
                name=f"{NETWORK_PREFIX}{self.tag}-sg{i}", description="kuryr-bench --hosts",
                project_id=self.filler_project_of(i))
            self.filler_groups.append(group.id)
        out["security_groups_added"] = len(self.filler_group_ids())  # and projects' "default"
        out["security_groups"] = listing()
        self.remove_fillers()
        return out

    def filler_project_of(self, index: int) -> str:
        """Neutron's default quota is 10 security groups a project, its "default"
        one included: GROUPS_PER_PROJECT in each."""
        return f"{self.filler_project}-{index // GROUPS_PER_PROJECT}"

    def filler_group_ids(self) -> set[str]:
        return {g.id for g in self.neutron.api.security_groups()
                if str(g.project_id or "").startswith(self.filler_project)}

    def remove_fillers(self) -> None:
        for port_id in self.filler_ports:
            with contextlib.suppress(Exception):
                self.neutron.delete_port(port_id)
        self.filler_ports.clear()
        groups = set(self.filler_groups)
        with contextlib.suppress(Exception):  # and the projects' default groups Neutron made
            groups |= self.filler_group_ids()
        for group_id in groups:
            with contextlib.suppress(Exception):
                self.neutron.delete_security_group(group_id)
        self.filler_groups.clear()

    # -- the run ------------------------------------------------------------------
    def phase(self, index: int) -> dict:
        out: dict[str, Any] = {"hosts_up": index}
        out["host_up"] = self.host_up(index)
        self.log(f"{index} host(s): {self.runs} docker run -d + rm -f cycles per host, "
                 "interleaved ...")
        out["hosts"] = self.cycles()
        out["pooled"] = pooled(out)
        self.log(f"{index} host(s): {IDLE_SECONDS:.0f} s idle ...")
        out["idle"] = self.idle()
        self.log(f"{index} host(s): GC listing per host ...")
        out["neutron_ports_total"] = len(list(self.neutron.api.ports()))
        out["gc_listing"] = {name: self.gc_listing(host) for name, host in self.hosts.items()}
        self.log(f"{index} host(s): burst of {self.burst_per_host} per host on all at once ...")
        out["burst"] = self.burst()
        return out

    def teardown(self) -> None:
        for host in reversed(list(self.hosts.values())):
            try:
                host.bench.finish()
            except Exception as exc:  # noqa: BLE001 - the host goes anyway
                self.log(f"{host.name}: docker cleanup failed: {exc}")
        for name in reversed(self.made_hosts):
            self.log(f"kuryr-aio host down {name} --purge ...")
            try:
                aio("host", "down", name, "--purge", timeout=HOST_COMMAND_TIMEOUT)
            except (StackError, subprocess.TimeoutExpired) as exc:
                self.log(str(exc))
        self.remove_fillers()
        for network_id in self.networks.values():
            self.delete_network(network_id)


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[IO[str]]:
    """One run of this benchmark at a time (its host names are fixed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StackError(f"another kuryr-bench --hosts holds {path}") from None
        yield fh


def main(args: argparse.Namespace) -> int:
    runs = args.runs or (3 if args.quick else 10)
    burst = max(args.bursts) if args.bursts else BURST_PER_HOST
    burst = min(burst, MAX_BURST_PER_HOST)

    def log(message: str) -> None:
        print(f"kuryr-bench: {message}", file=sys.stderr, flush=True)

    layout = Layout.default()
    started = time.monotonic()
    result: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "runs_per_host_per_phase": runs,
                    "burst_per_host": burst, "hosts": args.hosts, "quick": bool(args.quick),
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
        "hosts": "simulated hosts bh1..bhN only (kuryr-aio host up); the main host's "
                 "dockerd and Kuryr are not measured (shared with other tests)",
        "phases": []}
    with exclusive(layout.run / LOCK):
        bench = HostsBench(layout, log, args.hosts, runs, burst,
                           extra=10 if args.quick else EXTRA)
        errors: dict[str, str] = {}

        def part(name: str, measure: Callable[[], object]) -> None:
            """A part that fails is reported, and the run goes on to the next."""
            try:
                result[name] = measure()
            except Exception as exc:  # noqa: BLE001 - any failure: reported, the run goes on
                log(f"{name} failed: {exc}")
                errors[name] = str(exc)

        try:
            bench.remove_leftovers()
            bench.make_networks()
            for index in range(1, args.hosts + 1):
                result["phases"].append(bench.phase(index))
            log("kuryr gc --dry-run inside each host ...")
            part("gc_command", lambda: {n: bench.gc_command(h) for n, h in bench.hosts.items()})
            log(f"one refill of {REFILL_SIZE} ports per host ...")
            part("refill", lambda: {n: bench.refill(h) for n, h in bench.hosts.items()})
            part("gc_growth", lambda: bench.gc_growth(next(iter(bench.hosts.values()))))
        finally:
            bench.teardown()
            result["ratios"] = ratios(result)
            result["derived"] = derive(result)
            if errors:
                result["errors"] = errors
            result["machine"]["seconds"] = round(time.monotonic() - started)
            if args.json:
                Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    return 1 if errors else 0
