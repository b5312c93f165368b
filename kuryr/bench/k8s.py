"""`kuryr-bench --k8s`: pod create -> Running on the all-in-one stack's
Kubernetes cluster, Kuryr's CNI against the reference `bridge` CNI plugin on
the same kubelet and containerd, in one run.

The cluster is shared with the integration tests: the whole run holds the
exclusive lock /run/kuryr-aio/k8s.lock (they take it too).  containerd loads
only the first network configuration of its conf dir (max_conf_num = 1), so
the bridge plugin is switched in by a conflist that sorts first and switched
out by deleting it; containerd reloads the directory on change, and a probe
pod's address (from the bridge's subnet, or Kuryr's) proves which is live.

NETWORK SAFETY: the bridge is a bridge of its own (kbench0) with no address,
no gateway, no masquerading and no port mapping: nothing of it routes or NATs
off the machine.  It, its conflist, its plugin links and the host-local data
are deleted at the end whatever happens, and Kuryr's conflist is put back as
it was found.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import ssl
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from kuryr.aio import kubernetes
from kuryr.aio.layout import POD_CIDR, POD_NETWORK, Layout
from kuryr.aio.procs import StackError
from kuryr.bench import cpu
from kuryr.bench.stats import percentile

BRIDGE_NAME = "kbench0"
BRIDGE_SUBNET = "10.250.0.0/24"
BRIDGE_CONFLIST = "00-kuryr-bench-bridge.conflist"  # sorts before 10-kuryr.conflist
KURYR_CONFLIST = "10-kuryr.conflist"
BRIDGE_PLUGINS = ("bridge", "host-local")  # loopback is linked by kuryr-aio already
SYSTEM_CNI_DIR = Path("/usr/lib/cni")
NETNS_DIR = Path("/var/run/netns")
# A Neutron count ends once neutron-server has logged nothing new for this long.
QUIET_SECONDS = 2.0
SWITCH_TIMEOUT = 60.0  # containerd reloading its conf dir, proved by a probe pod
RUNNING_TIMEOUT = 120.0
# The targets of the issue.
SINGLE_RATIO_TARGET = 1.3
BURST_P99_TARGET_S = 5.0
ACCESS_LINE = re.compile(r'"(GET|POST|PUT|DELETE|PATCH|HEAD) (\S+) HTTP/[\d.]+"')


# -- pure parts ---------------------------------------------------------------------------
def parse_time(stamp: str) -> float:
    """An API server or Neutron timestamp (RFC 3339, 1 s resolution, UTC "Z"; a
    time without a zone is UTC too) as epoch seconds."""
    moment = datetime.fromisoformat(stamp)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def api_times(pod: dict) -> dict[str, float | None]:
    """Seconds from the pod's creationTimestamp to its container's startedAt
    (Running) and to its Ready condition, from the pod's own timestamps."""
    created = parse_time(pod["metadata"]["creationTimestamp"])
    status = pod.get("status", {})
    started = None
    for container in status.get("containerStatuses") or []:
        running = (container.get("state") or {}).get("running") or {}
        if running.get("startedAt"):
            started = max(started or 0.0, parse_time(running["startedAt"]))
    ready = next((parse_time(c["lastTransitionTime"]) for c in status.get("conditions") or []
                  if c.get("type") == "Ready" and c.get("status") == "True"
                  and c.get("lastTransitionTime")), None)
    return {"running": None if started is None else started - created,
            "ready": None if ready is None else ready - created}


def summary(values: Sequence[float], tail: float = 0.99) -> dict[str, float | int | None]:
    """p50 / p99 (or the ``tail`` given: 0.95 is "p95") / max in seconds
    (nearest rank), and how many values."""
    key = f"p{round(tail * 100)}"
    if not values:
        return {"n": 0, "p50": None, key: None, "max": None}
    return {"n": len(values), "p50": round(statistics.median(values), 3),
            key: round(percentile(values, tail), 3), "max": round(max(values), 3)}


def bridge_conflist(bridge: str, subnet: str, data_dir: Path) -> dict:
    """The reference plugin's configuration: an isolated bridge.  No gateway
    address on the bridge, no default route in the pod, no masquerading, no
    port mapping: pods reach each other on ``bridge`` and nothing else."""
    ipaddress.ip_network(subnet)  # a valid network, or raise
    return {
        "cniVersion": "0.4.0",
        "name": "kuryr-bench-bridge",
        "plugins": [{
            "type": "bridge", "bridge": bridge,
            "isGateway": False, "isDefaultGateway": False, "ipMasq": False,
            "hairpinMode": False, "forceAddress": False,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                     "routes": [], "dataDir": str(data_dir)},
        }],
    }


def requests_by_method(lines: Iterable[str]) -> dict[str, int]:
    """neutron-server access-log lines counted by HTTP method (and in total)."""
    counts: dict[str, int] = {}
    for line in lines:
        match = ACCESS_LINE.search(line)
        if match:
            counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    counts["total"] = sum(counts.values())
    return counts


def ports_made_after(pods: Sequence[dict], ports: Sequence[tuple[str, str]]) -> list[str]:
    """Pods whose port (matched by address: ``ports`` is (address, created_at))
    was not made before the pod was created: their start waited on Neutron (a
    port created on ADD's path, or a pool refill).  Same second counts as after
    (the API's 1 s resolution): an upper bound.  A pod with no port found is
    listed too."""
    created_at = {address: parse_time(stamp) for address, stamp in ports}
    late = []
    for pod in pods:
        address = pod.get("status", {}).get("podIP")
        made = created_at.get(address or "")
        if made is None or made >= int(parse_time(pod["metadata"]["creationTimestamp"])):
            late.append(pod["metadata"]["name"])
    return late


def ratio(kuryr: float | None, bridge: float | None) -> float | None:
    return round(kuryr / bridge, 2) if kuryr and bridge else None


def checks(result: dict) -> list[tuple[str, bool, str]]:
    """The issue's targets: (name, passed, the figures behind it)."""
    found = []
    single = result["ratios"].get("single_p50_running")
    found.append(("single pod p50 create->Running, Kuryr <= 1.3x bridge",
                  single is not None and single <= SINGLE_RATIO_TARGET,
                  f"ratio {single}"))
    burst = next((b for b in result["kuryr"]["bursts"] if b["size"] == max(
        x["size"] for x in result["kuryr"]["bursts"])), None)
    if burst is not None:
        p99 = burst["client"]["running"]["p99"]
        ok = burst["running"] == burst["size"] and p99 is not None and \
            p99 <= BURST_P99_TARGET_S
        found.append((f"burst of {burst['size']}: all Running, p99 <= 5 s (Kuryr)", ok,
                      f"{burst['running']}/{burst['size']} Running, p99 {p99} s"))
    late = result["kuryr"]["pods_waiting_on_neutron"]
    total = result["kuryr"]["pods_measured"]
    found.append(("Neutron requests on a pod start's critical path: 0 (Kuryr)", late == 0,
                  f"{late}/{total} pods' ports were made after the pod was created"))
    return found


# -- the cluster ----------------------------------------------------------------------------
@contextlib.contextmanager
def cluster_lock(layout: Layout, log: Callable[[str], None]) -> Iterator[None]:
    """The integration tests' lock on the cluster, held exclusively."""
    path = layout.run / "k8s.lock"
    with path.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for {path} (the cluster is in use) ...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class PodWatch:
    """When this client first saw each pod Running, with an address, Ready: a
    watch on the namespace's pods through the API server (ms resolution)."""

    def __init__(self, layout: Layout, namespace: str) -> None:
        self.seen: dict[str, dict[str, float]] = {}
        self._stop = threading.Event()
        self._changed = threading.Condition()
        pki = kubernetes.pki_of(layout)
        ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        ctx.load_cert_chain(str(pki.cert("admin")), str(pki.key("admin")))
        url = (f"{kubernetes.api_url()}/api/v1/namespaces/{namespace}/pods"
               "?watch=1&timeoutSeconds=900")
        self._resp = urllib.request.urlopen(url, context=ctx, timeout=900)  # noqa: S310
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            while not self._stop.is_set():
                line = self._resp.readline()
                if not line:
                    break
                self._event(json.loads(line), time.time())
        self._resp.close()

    def _event(self, event: dict, now: float) -> None:
        pod = event.get("object", {})
        name = pod.get("metadata", {}).get("name", "")
        status = pod.get("status", {})
        with self._changed:
            seen = self.seen.setdefault(name, {})
            if status.get("phase") == "Running":
                seen.setdefault("running", now)
            if status.get("podIP"):
                seen.setdefault("ip", now)
            if any(c.get("type") == "Ready" and c.get("status") == "True"
                   for c in status.get("conditions") or []):
                seen.setdefault("ready", now)
            self._changed.notify_all()

    def wait_running(self, names: Sequence[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not all("running" in self.seen.get(n, {}) for n in names):
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._changed.wait(min(left, 1.0))
        return True

    def stop(self) -> None:
        """The reader ends at its next event (the pods' deletion brings some)."""
        self._stop.set()


class K8sBench:
    def __init__(self, layout: Layout, log: Callable[[str], None]) -> None:
        self.layout = layout
        self.log = log
        self.access_log = layout.log("neutron-access")
        self.namespace = f"kuryr-bench-{uuid.uuid4().hex[:6]}"
        self.cni_conf = layout.k8s_dir / "cni" / "net.d"
        self.cni_bin = layout.k8s_dir / "cni" / "bin"
        self.host_local_dir = layout.k8s_dir / "bench-host-local"
        self.count = 0
        self.watch: PodWatch | None = None
        self.linked: list[Path] = []
        self.baseline_netns: set[str] = set()

    # -- plumbing -----------------------------------------------------------------------
    def kubectl(self, *args: str, timeout: float = 120, input_text: str | None = None) -> str:
        return kubernetes.kubectl(self.layout, *args, timeout=timeout, input_text=input_text)

    def _access_size(self) -> int:
        try:
            return self.access_log.stat().st_size
        except OSError:
            return 0

    def _access_since(self, offset: int) -> list[str]:
        try:
            with self.access_log.open("rb") as fh:
                fh.seek(offset)
                return fh.read().decode(errors="replace").splitlines()
        except OSError:
            return []

    def wait_neutron_quiet(self, limit: float = 90) -> None:
        """Until neutron-server has logged nothing for QUIET_SECONDS."""
        seen, quiet_since = -1, time.monotonic()
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            now = self._access_size()
            if now != seen:
                seen, quiet_since = now, time.monotonic()
            elif time.monotonic() - quiet_since >= QUIET_SECONDS:
                return
            time.sleep(0.25)

    def pod_doc(self, name: str) -> dict:
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": self.namespace,
                             "labels": {"app": "kuryr-bench"}},
                "spec": {"containers": [{"name": "main", "image": "busybox",
                                         "imagePullPolicy": "IfNotPresent",
                                         "command": ["sleep", "3600"]}],
                         "terminationGracePeriodSeconds": 0,
                         "automountServiceAccountToken": False,
                         "enableServiceLinks": False}}

    def pods(self) -> list[dict]:
        listed = json.loads(self.kubectl("get", "pods", "-n", self.namespace, "-o", "json"))
        return listed["items"]

    def _netns(self) -> set[str]:
        try:
            return {p.name for p in NETNS_DIR.iterdir() if p.name.startswith("cni-")}
        except OSError:
            return set()

    def delete_pods(self, timeout: float = 180) -> None:
        """Every pod of the namespace gone from the API and its sandbox torn down:
        containerd removes a pod's network namespace after the CNI DEL."""
        self.kubectl("delete", "pods", "--all", "-n", self.namespace, "--wait=true",
                     f"--timeout={int(timeout)}s", timeout=timeout + 30)
        deadline = time.monotonic() + 60
        while self._netns() - self.baseline_netns:
            if time.monotonic() > deadline:
                raise StackError("pod sandboxes still have network namespaces 60 s after "
                                 "their pods were deleted: "
                                 f"{' '.join(sorted(self._netns() - self.baseline_netns))}")
            time.sleep(0.25)

    def start(self, count: int) -> tuple[list[str], float, bool]:
        """``count`` pods created by one `kubectl apply` of a List; their names,
        the wall time just before, and whether all were seen Running in time."""
        assert self.watch is not None  # noqa: S101 - set by run()
        names = [f"p{self.count + i}" for i in range(count)]
        self.count += count
        manifest = {"apiVersion": "v1", "kind": "List",
                    "items": [self.pod_doc(n) for n in names]}
        began = time.time()
        self.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))
        return names, began, self.watch.wait_running(names, RUNNING_TIMEOUT)

    def measure(self, count: int, neutron_ports: bool) -> tuple[dict, list[dict]]:
        """Start ``count`` pods at once: client-side and API-side times, Neutron
        requests while they started (create -> all Running) and until quiet; with
        ``neutron_ports``, how many of them waited on Neutron for their port."""
        assert self.watch is not None  # noqa: S101 - set by run()
        self.wait_neutron_quiet()
        offset = self._access_size()
        cpu_before = cpu.cpu_seconds()
        names, began, ok = self.start(count)
        cpu_started = cpu.cpu_seconds()
        during = requests_by_method(self._access_since(offset))
        self.wait_neutron_quiet()
        settled = requests_by_method(self._access_since(offset))
        cpu_settled = cpu.cpu_seconds()
        pods = [p for p in self.pods() if p["metadata"]["name"] in names]
        client: dict[str, list[float]] = {"running": [], "ip": [], "ready": []}
        for name in names:
            for key, seen in self.watch.seen.get(name, {}).items():
                client[key].append(seen - began)
        api: dict[str, list[float]] = {"running": [], "ready": []}
        for pod in pods:
            for key, value in api_times(pod).items():
                if value is not None:
                    api[key].append(value)
        row = {"size": count, "running": len(client["running"]), "all_running": ok,
               "client": {k: summary(v) for k, v in client.items()},
               "api": {k: summary(v) for k, v in api.items()},
               "neutron_requests_during_start": during,
               "neutron_requests_until_quiet": settled,
               "neutron_requests_per_pod": round(settled["total"] / count, 2),
               "cpu_s_during_start": cpu.spent(cpu_before, cpu_started),
               "cpu_s_until_quiet": cpu.spent(cpu_before, cpu_settled)}
        if neutron_ports:  # after the count: its own GET is not counted
            row["pods_waiting_on_neutron"] = len(ports_made_after(pods, self.pod_ports()))
        return row, pods

    def pod_ports(self) -> list[tuple[str, str]]:
        """(address, created_at) of every port on the pods' Neutron network (1 GET)."""
        from kuryr.aio.outside import stack_neutron

        neutron = stack_neutron(self.layout)
        try:
            net = neutron.api.find_network(POD_NETWORK)
            if net is None:
                return []
            return [(f.ip_address, port.created_at)
                    for port in neutron.ports(network_id=net.id) for f in port.fixed_ips]
        finally:
            neutron.close()

    def phase(self, name: str, runs: int, bursts: Sequence[int], subnet: str) -> dict:
        """One CNI: a probe pod proving it is live, ``runs`` single pods (each
        deleted before the next), then each burst; every pod deleted at the end."""
        self.log(f"{name}: probe pod ...")
        self.probe(subnet)
        kuryr = name == "kuryr"
        singles: list[float] = []
        api_singles: list[float] = []
        waited = measured = 0
        for i in range(runs):
            row, pods = self.measure(1, kuryr)
            waited += row.get("pods_waiting_on_neutron", 0)
            measured += len(pods)
            if row["client"]["running"]["p50"] is not None:
                singles.append(row["client"]["running"]["p50"])
            if row["api"]["running"]["p50"] is not None:
                api_singles.append(row["api"]["running"]["p50"])
            self.log(f"{name}: single pod {i + 1}/{runs}: Running after "
                     f"{row['client']['running']['p50']} s, "
                     f"{row['neutron_requests_until_quiet']['total']} Neutron requests")
            self.delete_pods()
        result: dict[str, Any] = {"single": {"client_running": summary(singles),
                                             "api_running": summary(api_singles)},
                                  "bursts": []}
        for size in bursts:
            self.log(f"{name}: burst of {size} pods (one kubectl apply) ...")
            row, pods = self.measure(size, kuryr)
            waited += row.get("pods_waiting_on_neutron", 0)
            measured += len(pods)
            result["bursts"].append(row)
            self.log(f"{name}: burst of {size}: {row['running']}/{size} Running, p50 "
                     f"{row['client']['running']['p50']} s, p99 "
                     f"{row['client']['running']['p99']} s, "
                     f"{row['neutron_requests_until_quiet']['total']} Neutron requests")
            self.delete_pods()
        if kuryr:
            result["pods_measured"] = measured
            result["pods_waiting_on_neutron"] = waited
        return result

    def probe(self, subnet: str, timeout: float = SWITCH_TIMEOUT) -> str:
        """A pod Running with an address in ``subnet`` (the live CNI's); retried
        while containerd still uses the other configuration."""
        network = ipaddress.ip_network(subnet)
        deadline = time.monotonic() + timeout
        while True:
            names, _, ok = self.start(1)
            pod = next(p for p in self.pods() if p["metadata"]["name"] == names[0])
            address = pod.get("status", {}).get("podIP", "")
            self.delete_pods()
            if ok and address and ipaddress.ip_address(address) in network:
                return address
            if time.monotonic() > deadline:
                raise StackError(f"no pod got an address in {subnet} within {timeout:.0f} s "
                                 f"(last: {address or 'none'}): containerd did not switch")
            self.log(f"probe pod got {address or 'no address'}, not one in {subnet}; "
                     "again ...")
            time.sleep(2)

    # -- switching the CNI --------------------------------------------------------------
    def _check_bridge_is_new(self) -> None:
        if Path(f"/sys/class/net/{BRIDGE_NAME}").exists():
            raise StackError(f"interface {BRIDGE_NAME} exists already: not ours to use")
        ours = ipaddress.ip_network(BRIDGE_SUBNET)
        routes = subprocess.run(["/usr/sbin/ip", "-4", "route", "show", "table", "all"],
                                capture_output=True, text=True, check=True).stdout
        for line in routes.splitlines():
            dest = line.split()[0] if line.split() else ""
            if dest.startswith(("local", "broadcast", "default", "unreachable")):
                continue
            with contextlib.suppress(ValueError):
                if ipaddress.ip_network(dest, strict=False).overlaps(ours):
                    raise StackError(f"{BRIDGE_SUBNET} overlaps a route of this host: {line}")

    def switch_to_bridge(self) -> None:
        self._check_bridge_is_new()
        for plugin in BRIDGE_PLUGINS:
            link = self.cni_bin / plugin
            if link.exists() or link.is_symlink():
                continue
            link.symlink_to(SYSTEM_CNI_DIR / plugin)
            self.linked.append(link)
        self.host_local_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(bridge_conflist(BRIDGE_NAME, BRIDGE_SUBNET, self.host_local_dir),
                          indent=1) + "\n"
        staged = self.cni_conf / f".{BRIDGE_CONFLIST}.tmp"  # not a name containerd loads
        staged.write_text(text)
        staged.replace(self.cni_conf / BRIDGE_CONFLIST)

    def restore(self, kuryr_conflist: str) -> None:
        """Kuryr's conflist as it was, nothing of the bridge's left."""
        (self.cni_conf / BRIDGE_CONFLIST).unlink(missing_ok=True)
        (self.cni_conf / f".{BRIDGE_CONFLIST}.tmp").unlink(missing_ok=True)
        kuryr = self.cni_conf / KURYR_CONFLIST
        if not kuryr.exists() or kuryr.read_text() != kuryr_conflist:
            kuryr.write_text(kuryr_conflist)
        for link in self.linked:
            link.unlink(missing_ok=True)
        self.linked.clear()
        if Path(f"/sys/class/net/{BRIDGE_NAME}").exists():
            subprocess.run(["/usr/sbin/ip", "link", "del", BRIDGE_NAME], check=False,
                           capture_output=True, timeout=30)
        if self.host_local_dir.exists():
            for entry in sorted(self.host_local_dir.rglob("*"), reverse=True):
                if entry.is_dir():
                    entry.rmdir()
                else:
                    entry.unlink()
            self.host_local_dir.rmdir()

    # -- the run ------------------------------------------------------------------------
    def run(self, runs: int, bursts: Sequence[int]) -> dict:
        kuryr_conflist = (self.cni_conf / KURYR_CONFLIST).read_text()
        if (self.cni_conf / BRIDGE_CONFLIST).exists():
            raise StackError(f"{self.cni_conf / BRIDGE_CONFLIST} exists: a bench run died "
                             "without cleaning up; delete it (and the kbench0 bridge)")
        self.baseline_netns = self._netns()
        others = self.kubectl("get", "pods", "-A", "--no-headers").strip()
        if others:
            self.log(f"note: other pods run on the cluster:\n{others}")
        self.kubectl("create", "namespace", self.namespace)
        result: dict[str, Any] = {}
        try:
            self.watch = PodWatch(self.layout, self.namespace)
            result["kuryr"] = self.phase("kuryr", runs, bursts, POD_CIDR)
            self.log(f"switching containerd to the bridge plugin ({BRIDGE_NAME}, "
                     f"{BRIDGE_SUBNET}) ...")
            self.switch_to_bridge()
            result["bridge"] = self.phase("bridge", runs, bursts, BRIDGE_SUBNET)
        finally:
            try:
                # No pod may outlive its CNI: its DEL goes to the live configuration.
                with contextlib.suppress(StackError, subprocess.SubprocessError):
                    self.delete_pods()
            finally:
                self.log("restoring Kuryr's CNI ...")
                self.restore(kuryr_conflist)
                try:
                    self.probe(POD_CIDR)
                    self.log("Kuryr's CNI is live again")
                finally:
                    if self.watch is not None:
                        self.watch.stop()
                    self.kubectl("delete", "namespace", self.namespace, "--wait=true",
                                 timeout=180)
        return result


class Part(Protocol):
    """A measurement run in the same cluster lock as the pods' (or instead of
    them): its figures go under ``key`` in the result."""

    key: str
    count: int
    measure: str

    def run(self, layout: Layout, log: Callable[[str], None]) -> dict: ...

    def checks(self, result: dict) -> list[tuple[str, bool, str]]: ...

    def table(self, result: dict) -> list[str]: ...


def main(args: Any, parts: Sequence[Part] = ()) -> int:  # noqa: ANN401 - run.py's arguments
    """The pods' measurements, and ``parts``: with parts, the pods' only when
    --runs or --bursts asks for them too."""
    def log(message: str) -> None:
        print(f"kuryr-bench --k8s: {message}", file=sys.stderr, flush=True)

    pods = not parts or args.runs is not None or args.bursts is not None
    runs = args.runs or (3 if args.quick else 7)
    bursts = args.bursts or ([5] if args.quick else [20, 50])
    layout = Layout.default()
    started = time.monotonic()
    measured: dict[str, Any] = {}
    with cluster_lock(layout, log):
        if pods:
            measured.update(K8sBench(layout, log).run(runs, bursts))
        for part in parts:
            measured[part.key] = part.run(layout, log)
    machine: dict[str, Any] = {"cores": os.cpu_count()}
    if pods:
        machine.update(runs=runs, bursts=bursts)
    machine.update({part.key: part.count for part in parts})
    result: dict[str, Any] = {"machine": machine}
    if pods:
        result["measure"] = ("client-side: wall time from just before `kubectl apply` to "
                             "this client's watch seeing phase Running (ms); api: "
                             "creationTimestamp to startedAt / Ready (1 s resolution)")
    result.update({f"measure_{part.key}": part.measure for part in parts})
    result.update(measured)
    result["duration_s"] = round(time.monotonic() - started)
    found = []
    if pods:
        result["ratios"] = pod_ratios(result)
        found += checks(result)
    for part in parts:
        found += part.checks(result[part.key])
    result["checks"] = [{"target": name, "pass": ok, "measured": detail}
                        for name, ok, detail in found]
    lines = pods_table(result) if pods else []
    for part in parts:
        lines += part.table(result[part.key])
    print("\n".join([*lines, *footer(result)]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def pod_ratios(result: dict) -> dict[str, float | None]:
    kuryr, bridge = result["kuryr"], result["bridge"]
    out = {"single_p50_running": ratio(kuryr["single"]["client_running"]["p50"],
                                       bridge["single"]["client_running"]["p50"])}
    for k_row, b_row in zip(kuryr["bursts"], bridge["bursts"], strict=True):
        for stat in ("p50", "p99", "max"):
            out[f"burst_{k_row['size']}_{stat}_running"] = ratio(
                k_row["client"]["running"][stat], b_row["client"]["running"][stat])
    return out


def table(result: dict) -> str:
    return "\n".join([*pods_table(result), *footer(result)])


def footer(result: dict) -> list[str]:
    lines = [""]
    lines += [f"{'PASS' if c['pass'] else 'FAIL'}: {c['target']} ({c['measured']})"
              for c in result["checks"]]
    return [*lines, f"run took {result['duration_s']} s", ""]


def pods_table(result: dict) -> list[str]:
    lines = ["", "Pod create -> Running, client-side (s): p50 / p99 / max"]
    lines.append(f"  {'':22}{'kuryr':>26}{'bridge':>26}{'ratio p50':>11}")

    def cell(stats: dict) -> str:
        return f"{stats['p50']} / {stats['p99']} / {stats['max']}"

    k_single = result["kuryr"]["single"]["client_running"]
    b_single = result["bridge"]["single"]["client_running"]
    lines.append(f"  {'single (n=' + str(k_single['n']) + ')':22}{cell(k_single):>26}"
                 f"{cell(b_single):>26}{result['ratios']['single_p50_running']!s:>11}")
    for k_row, b_row in zip(result["kuryr"]["bursts"], result["bridge"]["bursts"],
                            strict=True):
        size = k_row["size"]
        lines.append(f"  {'burst of ' + str(size):22}{cell(k_row['client']['running']):>26}"
                     f"{cell(b_row['client']['running']):>26}"
                     f"{result['ratios'][f'burst_{size}_p50_running']!s:>11}")
    lines += ["", "API timestamps (creationTimestamp -> startedAt, 1 s resolution): p50 / max"]
    for name in ("kuryr", "bridge"):
        single = result[name]["single"]["api_running"]
        parts = [f"single {single['p50']} / {single['max']}"]
        parts += [f"burst {r['size']} {r['api']['running']['p50']} / "
                  f"{r['api']['running']['max']}" for r in result[name]["bursts"]]
        lines.append(f"  {name:8}" + ";  ".join(parts))
    lines += ["", "Bursts: Running, pod IP seen, Ready (client-side p99, s); Neutron requests"]
    for name in ("kuryr", "bridge"):
        for row in result[name]["bursts"]:
            during = row["neutron_requests_during_start"]
            settled = row["neutron_requests_until_quiet"]
            lines.append(
                f"  {name:8}{row['size']:>3}: {row['running']}/{row['size']} Running, "
                f"all by {row['client']['running']['max']} s; ip p99 "
                f"{row['client']['ip']['p99']}, ready p99 {row['client']['ready']['p99']}; "
                f"Neutron {during['total']} while starting "
                f"{json.dumps({k: v for k, v in during.items() if k != 'total'})}, "
                f"{settled['total']} until quiet ({row['neutron_requests_per_pod']}/pod)")
            if "cpu_s_during_start" in row:
                lines.append(f"{'':13}CPU s while starting: " + ", ".join(
                    f"{k} {v}" for k, v in row["cpu_s_during_start"].items()))
    kuryr = result["kuryr"]
    lines += ["", (f"Kuryr pods whose port was made after the pod was created (their start "
                   f"waited on Neutron): {kuryr['pods_waiting_on_neutron']}/"
                   f"{kuryr['pods_measured']}")]
    return lines
