"""`kuryr-bench`: Kuryr against kuryr-libnetwork and Docker's bridge driver,
on the all-in-one stack, in one run.  Neutron requests are counted at
Neutron's side (neutron-server's access log), not by the clients."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from kuryr.aio import stack
from kuryr.aio.layout import Layout
from kuryr.aio.procs import StackError, read_pid
from kuryr.bench.dockerd import Bench
from kuryr.bench.peer import DRIVER as PEER_DRIVER
from kuryr.bench.peer import KuryrLibnetwork
from kuryr.bench.services import MAX_SERVICES, services_count
from kuryr.bench.stats import percentile  # noqa: F401 - kuryr.bench.run.percentile, as before

DRIVERS = {"kuryr": "kuryr", "kuryr-libnetwork": PEER_DRIVER}
NO_POOL = ("-o", "kuryr.pool.size=0")
# What Kuryr logs for every plugin call: "<Method>: <n> Neutron requests {...} in <ms> ms".
CALL_LINE = re.compile(r" INFO kuryr\.libnetwork\.app: (\S+): \d+ Neutron requests .* in (\d+) ms$")


def handler_ms(log_lines: Sequence[str], containers: int) -> dict:
    """Kuryr's own handler time per container, from the per-call durations it logs
    while ``containers`` containers started and stopped: total and by call."""
    by_call: dict[str, float] = {}
    for line in log_lines:
        match = CALL_LINE.search(line)
        if match:
            by_call[match.group(1)] = by_call.get(match.group(1), 0.0) + float(match.group(2))
    per_container = {call: round(ms / containers, 1) for call, ms in sorted(by_call.items())}
    return {"total": round(sum(by_call.values()) / containers, 1), "by_call": per_container}


def kuryr_process_stats() -> tuple[float, float]:
    """(RSS in MB, CPU seconds) of the running Kuryr plugin."""
    pid = read_pid(Layout.default().pidfile("kuryr"))
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(next(line.split()[1] for line in status.splitlines()
                      if line.startswith("VmRSS:")))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss_kb / 1024, cpu


MAX_BURST = 200  # every load test is bounded


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated numbers") from None
    if not sizes or min(sizes) < 1 or max(sizes) > MAX_BURST:
        raise argparse.ArgumentTypeError(f"{text!r}: burst sizes from 1 to {MAX_BURST}")
    return sizes


def _services(text: str) -> int:
    try:
        return services_count(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _hosts(text: str) -> int:
    from kuryr.bench.hosts import MAX_HOSTS

    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of hosts") from None
    if not 1 <= count <= MAX_HOSTS:
        raise argparse.ArgumentTypeError(f"{text!r}: 1 to {MAX_HOSTS} hosts")
    return count


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kuryr-bench", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="a reduced run (under a minute once the stack is up)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--runs", type=int, help="docker run repetitions per driver")
    parser.add_argument("--bursts", type=_sizes, metavar="N[,N...]",
                        help="burst sizes instead of 20,50 (5 with --quick)")
    parser.add_argument("--no-peer", action="store_true",
                        help="skip kuryr-libnetwork (no install, no comparison)")
    parser.add_argument("--k8s", action="store_true",
                        help="Kubernetes pods instead: Kuryr's CNI against the bridge CNI "
                             "plugin on the stack's cluster (kuryr-aio up --k8s first)")
    parser.add_argument("--nested", action="store_true",
                        help="containers in VMs instead: docker run on the host against "
                             "nested-vlan and nested-macvlan VMs (kuryr-aio vm up), in one "
                             "run; --runs defaults to 10 (5 with --quick)")
    parser.add_argument("--hosts", type=_hosts, metavar="N",
                        help="per-host costs instead: simulated hosts bh1..bhN of its own "
                             "(kuryr-aio host up), measured with 1, 2, ... N of them up: "
                             "Neutron requests and CPU per container, GC listing, pool "
                             "refill, a burst on all hosts; --runs (cycles per host and "
                             "phase) defaults to 10 (3 with --quick), --bursts to 5 per host")
    parser.add_argument("--services", type=_services, metavar="N",
                        help=f"with --k8s: N Services (ClusterIP, Octavia load balancers; "
                             f"1 to {MAX_SERVICES}): create -> first connection, endpoint "
                             "change, delete; alone unless --runs or --bursts is given too")
    args = parser.parse_args(argv)
    if args.services is not None and not args.k8s:
        parser.error("--services needs --k8s")
    if args.nested and (args.k8s or args.no_peer):
        parser.error("--nested goes alone (with --quick, --runs, --bursts, --json)")
    if args.hosts is not None and (args.k8s or args.no_peer or args.nested):
        parser.error("--hosts goes alone (with --quick, --runs, --bursts, --json)")
    if args.hosts is not None:
        from kuryr.bench import hosts

        return hosts.main(args)
    if args.nested:
        from kuryr.bench import nested

        return nested.main(args)
    if args.k8s:
        from kuryr.bench import k8s, services

        parts = [] if args.services is None else [services.ServicesPart(args.services)]
        return k8s.main(args, parts)
    runs = args.runs or (5 if args.quick else 20)
    bursts = args.bursts or ([5] if args.quick else [20, 50])
    rounds = 1 if args.quick else 3

    def log(message: str) -> None:
        print(f"kuryr-bench: {message}", file=sys.stderr, flush=True)

    layout = Layout.default()
    stack.up(layout, log=log)
    bench = Bench(layout, log)
    peer = None if args.no_peer else KuryrLibnetwork(layout)
    result: dict = {"machine": {"cores": os.cpu_count(), "runs": runs},
                    "neutron_requests": {}, "docker_run_ms": {}, "burst": {}}
    try:
        if peer is not None:
            log("starting kuryr-libnetwork 18.0.0 (installs on first use) ...")
            try:
                peer.start()
            except StackError as exc:
                log(f"kuryr-libnetwork unavailable: {exc}")
                peer.stop()
                result["kuryr-libnetwork_error"] = str(exc)
                peer = None
        drivers = ["kuryr"] + (["kuryr-libnetwork"] if peer else [])
        for index, name in enumerate(list(drivers)):
            log(f"{name}: Neutron requests per operation ...")
            try:
                result["neutron_requests"][name] = bench.request_counts(
                    DRIVERS[name], rounds, 140 + index)
            except StackError as exc:
                if name == "kuryr":
                    raise
                log(f"{name} failed, leaving it out: {exc}")
                result[f"{name}_error"] = str(exc)
                drivers.remove(name)
            bench.finish()
        log("kuryr without its port pool: Neutron requests per operation ...")
        result["neutron_requests"]["kuryr (no pool)"] = bench.request_counts(
            "kuryr", rounds, 146, NO_POOL)
        bench.finish()
        nets = {name: bench.network(DRIVERS[name], f"10.{150 + i}.0.0/24", f"10.{150 + i}.0.1")
                for i, name in enumerate(drivers)}
        nets["kuryr (no pool)"] = bench.network("kuryr", "10.159.0.0/24", "10.159.0.1",
                                                *NO_POOL)
        time.sleep(3)  # let the pool fill
        rss_before, cpu_before = kuryr_process_stats()
        log(f"docker run --rm latency, {runs} runs each ...")
        kuryr_log = layout.log("kuryr")
        logged_before = len(kuryr_log.read_text().splitlines())
        result["docker_run_ms"]["kuryr"] = bench.run_latency(["--net", nets["kuryr"]], runs)
        _, cpu_after = kuryr_process_stats()
        result["kuryr_cpu_s_per_start"] = round((cpu_after - cpu_before) / (runs + 1), 3)
        time.sleep(1)  # the last container's stop calls
        result["kuryr_handler_ms_per_container"] = handler_ms(
            kuryr_log.read_text().splitlines()[logged_before:], runs + 1)
        result["docker_run_ms"]["kuryr (no pool)"] = bench.run_latency(
            ["--net", nets["kuryr (no pool)"]], runs)
        if "kuryr-libnetwork" in nets:
            result["docker_run_ms"]["kuryr-libnetwork"] = bench.run_latency(
                ["--net", nets["kuryr-libnetwork"]], runs)
        result["docker_run_ms"]["bridge"] = bench.run_latency([], runs)
        # A user-defined network, like every Kuryr network, gets Docker's embedded
        # DNS server (set up inside each container's namespace); the default bridge
        # does not.  This is the like-for-like baseline.
        user_bridge = f"bench-bridge-{bench.tag}"
        bench.docker("network", "create", "-d", "bridge", "--subnet", "10.158.0.0/24",
                     user_bridge)
        bench.cleanup.append(["network", "rm", user_bridge])
        result["docker_run_ms"]["bridge (user-defined)"] = bench.run_latency(
            ["--net", user_bridge], runs)
        result["docker_run_ms"]["none"] = bench.run_latency(["--net", "none"], runs)
        log("time until a new container reaches another ...")
        result["time_to_reach_ms"] = {"kuryr": bench.time_to_reach(nets["kuryr"], runs)}
        nets["bridge (user-defined)"] = user_bridge
        for name in [*drivers, "kuryr (no pool)", "bridge (user-defined)"]:
            result["burst"][name] = []
            for size in bursts:
                log(f"{name}: burst of {size} concurrent docker run ...")
                result["burst"][name].append(bench.burst(nets[name], size))
        # A network sized for its bursts (-o kuryr.pool.size=N): every container of
        # the burst finds a port ready, made ahead of time in bulk.
        sized = f"kuryr (pool {max(bursts)})"
        nets[sized] = bench.network("kuryr", "10.157.0.0/24", "10.157.0.1", "-o",
                                    f"kuryr.pool.size={max(bursts)}")
        result["burst"][sized] = []
        for size in bursts:
            log(f"{sized}: waiting for {max(bursts)} pooled ports ...")
            filled = bench.wait_for_pool(nets[sized], max(bursts))
            log(f"{sized}: pool ready after {filled:.0f} s; burst of {size} ...")
            result["burst"][sized].append(bench.burst(nets[sized], size))
        rss_after, _ = kuryr_process_stats()
        result["kuryr_rss_mb"] = round(max(rss_before, rss_after), 1)
        result["ratios"] = ratios(result)
    finally:
        bench.finish()
        if peer is not None:
            peer.stop()
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def ratios(result: dict) -> dict:
    runs = result["docker_run_ms"]
    out = {}
    if runs.get("kuryr", {}).get("median") and runs.get("bridge", {}).get("median"):
        out["kuryr_over_bridge"] = round(runs["kuryr"]["median"] / runs["bridge"]["median"], 2)
    if runs.get("kuryr", {}).get("median") and runs.get("bridge (user-defined)", {}).get(
            "median"):
        out["kuryr_over_user_defined_bridge"] = round(
            runs["kuryr"]["median"] / runs["bridge (user-defined)"]["median"], 2)
    if runs.get("kuryr-libnetwork", {}).get("median") and runs.get("kuryr", {}).get("median"):
        out["kuryr_libnetwork_over_kuryr"] = round(
            runs["kuryr-libnetwork"]["median"] / runs["kuryr"]["median"], 2)
    # The burst target: p95 of a container in a burst against one start alone.  The
    # user-defined bridge's own ratio shows what Docker's concurrency costs by itself.
    for name, rows in result.get("burst", {}).items():
        baseline = "kuryr" if name.startswith("kuryr (pool") else name
        single = runs.get(baseline, {}).get("median")
        if not single or baseline not in ("kuryr", "bridge (user-defined)"):
            continue
        for row in rows:
            if row.get("p95_ms") and row["succeeded"] == row["size"]:
                out[f"burst_{row['size']}_p95_over_single[{name}]"] = round(
                    row["p95_ms"] / single, 2)
    return out


def table(result: dict) -> str:
    lines = ["", "Neutron requests per operation (counted at neutron-server)"]
    requests = result["neutron_requests"]
    names = list(requests)
    keys = list(next(iter(requests.values()))) if requests else []
    lines.append(f"  {'operation':28}" + "".join(f"{n:>18}" for n in names))
    lines.extend(f"  {key:28}" + "".join(f"{requests[n].get(key, '-'):>18}" for n in names)
                 for key in keys)
    lines += ["", "docker run --rm IMG true (ms)"]
    for name, stats in result["docker_run_ms"].items():
        lines.append(f"  {name:28}median {stats.get('median', '-'):>6}   p95 "
                     f"{stats.get('p95', '-'):>6}   failures {stats.get('failures', 0)}")
    reach = result.get("time_to_reach_ms", {}).get("kuryr", {})
    lines += ["", (f"new container's first ping answered (kuryr): "
                   f"{reach.get('first_ping_answered')}, median {reach.get('median')} ms"), "",
              "bursts (concurrent docker run --rm)"]
    for name, rows in result["burst"].items():
        for row in rows:
            lines.append(f"  {name:20} {row['size']:>3}: {row['succeeded']:>3} ok, "
                         f"wall {row['wall_s']} s, p95 {row['p95_ms']} ms")
    handlers = result.get("kuryr_handler_ms_per_container", {})
    lines += ["", (f"kuryr RSS {result.get('kuryr_rss_mb')} MB, CPU "
                   f"{result.get('kuryr_cpu_s_per_start')} s per container start"),
              (f"kuryr handler time per container: {handlers.get('total')} ms "
               f"{json.dumps(handlers.get('by_call', {}))}"),
              f"ratios: {json.dumps(result.get('ratios', {}))}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
