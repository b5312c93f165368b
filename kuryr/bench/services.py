"""`kuryr-bench --k8s --services N`: Kubernetes Services (ClusterIP) as
Octavia load balancers (OVN provider), on the all-in-one stack's cluster.

In a namespace of its own (deleted at the end): two backend pods (busybox
httpd serving their hostname, label app=bench-web) and a client pod, then

1. N Services, one after another: from just before the API POST of each to
   the client pod's first answer through its cluster IP, port 80;
2. an endpoint change: a third backend, from the moment this client's watch
   sees it Ready to its hostname's first answer through the first Service's
   cluster IP (three times, the pod deleted in between).  The first Service
   selects app=bench-web only, the others app=bench-web and bench-set=all (the
   two first backends carry both): a backend with the first label only joins
   the first Service alone; then again with both labels, joining all N
   Services at once (fan-out: N member updates in the controller's queue);
3. Octavia's and Neutron's requests while each Service was made (their
   access logs, until both were quiet);
4. the Services deleted: the time until Octavia lists none of the
   namespace's load balancers (``kuryr/<namespace>/...``); any left after
   60 s is leaked.

There is no baseline beside it: kube-proxy implements cluster IPs in the
host's netfilter, which packets of pods on OVN ports never cross.

The client polls from inside its pod, in one long `kubectl exec` started
before the POST (the cluster IP is chosen in advance, in the API server's
range): an HTTP GET (busybox nc) every 0.1 s, each answer printed with
/proc/uptime, the boot-time clock the host shares (10 ms resolution; busybox's
date has no %N).  NETWORK SAFETY: traffic goes only between the pods this
benchmark made, through the load balancers it made.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import ssl
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from kuryr.aio import keystone, kubernetes
from kuryr.aio.layout import Layout
from kuryr.aio.procs import StackError, alive, read_pid
from kuryr.bench.k8s import QUIET_SECONDS, PodWatch, requests_by_method, summary

MAX_SERVICES = 30  # every load test is bounded
WEB_LABELS = {"app": "bench-web"}
SHARED_LABELS = {**WEB_LABELS, "bench-set": "all"}  # the first Service's selector lacks it
CLIENT = "bench-client"
BACKENDS = ("bench-web-0", "bench-web-1")
SERVICE_PORT = 80
TARGET_PORT = 8080
# Cluster IPs are chosen from here up, skipping any in use (Services, VIPs).
FIRST_CLUSTER_IP = "10.96.210.10"
CONNECT_TIMEOUT = 60.0  # a Service's first answer
READY_TIMEOUT = 120.0  # a pod's
ENDPOINT_REPEATS = 3
ENDPOINT_TIMEOUT = 60.0  # a new backend's first answer after it is Ready
GONE_TIMEOUT = 60.0  # every load balancer of the namespace after the Services' delete
POLL_INTERVAL = 0.1
# The CNI daemon records a new pod on its port once starts have been quiet for 3 s
# (kuryr.k8s.cni_daemon.LULL_QUIET): those writes must not count as a Service's.
SETUP_QUIET_SECONDS = 6.0
# The target (kuryr-kubernetes with amphorae took minutes).
FIRST_CONNECTION_P50_TARGET_S = 5.0
BASELINE_NOTE = ("no baseline: kube-proxy implements cluster IPs in the host's netfilter, "
                 "which packets of pods on OVN ports never cross")
HTTPD = "hostname > /var/www/index.html && exec httpd -f -p 8080 -h /var/www"
# $1 address, $2 the answer that ends it ("-": any), $3 rounds, $4 requests per round.
# Every answer is printed as "<uptime> <last line of the answer>"; "start <uptime>"
# once running, "end" when done.  Each request is bounded by nc -w 1, the loop by $3.
POLLER = r"""
ip=$1 want=$2 rounds=$3 par=$4 mark=/tmp/kuryr-bench-poll.$$
read up rest < /proc/uptime; echo "start $up"
i=0
while [ ! -e "$mark" ] && [ "$i" -lt "$rounds" ]; do
  k=0
  while [ "$k" -lt "$par" ]; do
    (a=$(printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 1 "$ip" 80 2>/dev/null | tail -n 1)
     if [ -n "$a" ]; then
       read up rest < /proc/uptime; echo "$up $a"
       if [ "$want" = - ] || [ "$a" = "$want" ]; then touch "$mark"; fi
     fi) &
    k=$((k + 1))
  done
  usleep 100000
  i=$((i + 1))
done
wait
rm -f "$mark"
echo end
"""
AGENT = re.compile(r'"([^"]*)"\s*$')
LIST_AGENT = "Python-urllib"  # this benchmark's own requests to Octavia


# -- pure parts ---------------------------------------------------------------------------
def services_count(text: str) -> int:
    """``--services N``: from 1 to MAX_SERVICES."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_SERVICES:
        raise ValueError(f"{text!r}: a number of Services from 1 to {MAX_SERVICES}")
    return count


def parse_poller(lines: Iterable[str]) -> tuple[float | None, list[tuple[float, str]]]:
    """The poller's output: when it started, and each (time, answer) in time
    order (boot-time clock, seconds)."""
    started: float | None = None
    answers = []
    for line in lines:
        head, _, rest = line.strip().partition(" ")
        if head == "start":
            with contextlib.suppress(ValueError):
                started = float(rest)
            continue
        try:
            answers.append((float(head), rest.strip()))
        except ValueError:
            continue
    return started, sorted(answers)


def first_answer(answers: Sequence[tuple[float, str]], want: str | None = None,
                 since: float | None = None) -> float | None:
    """When the first answer (from ``want`` only, when given; not before
    ``since``) came."""
    return next((at for at, text in sorted(answers)
                 if text and (want is None or text == want)
                 and (since is None or at >= since)), None)


def free_addresses(used: Iterable[str], count: int, first: str = FIRST_CLUSTER_IP,
                   cidr: str = kubernetes.SERVICE_CIDR) -> list[str]:
    """``count`` addresses of ``cidr`` from ``first`` up, none of ``used``."""
    network = ipaddress.ip_network(cidr)
    taken = {ipaddress.ip_address(a) for a in used if a and a != "None"}
    found: list[str] = []
    address = ipaddress.ip_address(first)
    while len(found) < count:
        if address not in network or address == network.broadcast_address:
            raise ValueError(f"fewer than {count} free addresses in {cidr} from {first}")
        if address not in taken:
            found.append(str(address))
        address += 1
    return found


def service_doc(name: str, namespace: str, cluster_ip: str, shared: bool = True) -> dict:
    """A Service of the backends: all those labelled app=bench-web, or
    (``shared``) only those labelled bench-set=all too."""
    selector = SHARED_LABELS if shared else WEB_LABELS
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "selector": selector,
                     "ports": [{"name": "http", "protocol": "TCP", "port": SERVICE_PORT,
                                "targetPort": TARGET_PORT}]}}


def pod_doc(name: str, namespace: str, web: bool, shared: bool = True) -> dict:
    """A backend (httpd serving its hostname, Ready once it answers kubelet's
    probe; of every Service, or only of those selecting app=bench-web alone
    unless ``shared``) or the client (sleeping)."""
    container: dict[str, Any] = {"name": "main", "image": "busybox",
                                 "imagePullPolicy": "IfNotPresent"}
    if web:
        container["command"] = ["sh", "-c", HTTPD]
        container["readinessProbe"] = {"httpGet": {"path": "/", "port": TARGET_PORT},
                                       "periodSeconds": 1, "failureThreshold": 60}
    else:
        container["command"] = ["sleep", "3600"]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": ((SHARED_LABELS if shared else WEB_LABELS) if web
                                    else {"app": CLIENT})},
            "spec": {"containers": [container], "terminationGracePeriodSeconds": 0,
                     "automountServiceAccountToken": False, "enableServiceLinks": False}}


def emergencies(lines: Iterable[str]) -> list[str]:
    """ovs-vswitchd's log lines of an abort (an assertion failed, a fatal signal)."""
    return [line.strip() for line in lines if "|EMER|" in line]


def switch_report(before: int | None, after: int | None, running: bool,
                  log_lines: Iterable[str]) -> dict[str, Any]:
    """Whether the ovs-vswitchd of the run's start is the one running at its
    end (a crash kills every pod's traffic until `kuryr-aio up` restarts it)."""
    return {"pid_before": before, "pid_after": after,
            "survived": before is not None and before == after and running,
            "emergencies": emergencies(log_lines)}


def load_balancers_of(listed: Sequence[dict], namespace: str) -> list[str]:
    """Names of Octavia's load balancers (a GET of the list) that Kuryr made
    for ``namespace``'s Services, DELETED ones left out."""
    prefix = f"kuryr/{namespace}/"
    return sorted(lb.get("name") or "" for lb in listed
                  if (lb.get("name") or "").startswith(prefix)
                  and lb.get("provisioning_status") != "DELETED")


def requests_by_agent(lines: Iterable[str]) -> dict[str, int]:
    """Access-log lines counted by the client's User-Agent (its first word:
    ``cli.py`` is Kuryr's controller, ``octavia-api`` Octavia's own calls)."""
    counts: dict[str, int] = {}
    for line in lines:
        match = AGENT.search(line)
        if match and '" ' in line:
            agent = (match.group(1).split() or ["-"])[0]
            counts[agent] = counts.get(agent, 0) + 1
    return counts


def per_service(counts: Sequence[dict[str, int]]) -> dict[str, Any]:
    """Request counts of each Service's creation: the median and mean total,
    the largest, and the mean per method."""
    if not counts:
        return {"n": 0}
    totals = [c.get("total", 0) for c in counts]
    methods = sorted({m for c in counts for m in c if m != "total"})
    return {"n": len(counts), "median": statistics.median(totals),
            "mean": round(statistics.mean(totals), 2), "max": max(totals),
            "mean_by_method": {m: round(sum(c.get(m, 0) for c in counts) / len(counts), 2)
                               for m in methods}}


def checks(result: dict) -> list[tuple[str, bool, str]]:
    """The Services targets: (name, passed, the figures behind it)."""
    created, deleted = result["create"], result["delete"]
    answered, count = created["answered"], created["services"]
    p50 = created["first_answer"]["p50"]
    leaked = deleted["leaked"]
    first = (f"Services: all answered, p50 create -> first connection <= "
             f"{FIRST_CONNECTION_P50_TARGET_S:g} s")
    gone = f"Services: no leaked load balancers ({GONE_TIMEOUT:.0f} s after the delete)"
    gone_detail = f"{deleted['before']} before the delete, {len(leaked)} left"
    gone_detail += f": {', '.join(leaked)}" if leaked else \
        f", all gone after {deleted['all_gone_s']} s"
    found = [
        (first, answered == count and p50 is not None and p50 <= FIRST_CONNECTION_P50_TARGET_S,
         f"{answered}/{count} answered, p50 {p50} s"),
        (gone, not leaked and deleted["before"] == count, gone_detail),
    ]
    switch = result.get("ovs_vswitchd")
    if switch is not None:
        detail = f"pid {switch['pid_before']} -> {switch['pid_after']}"
        if switch["emergencies"]:
            detail += f"; {switch['emergencies'][-1]}"
        found.append(("Services: ovs-vswitchd survived the run", switch["survived"], detail))
    return found


def table(result: dict) -> list[str]:
    created, change, deleted = result["create"], result["endpoint_change"], result["delete"]
    first = created["first_answer"]
    lines = ["",
             ("Services (ClusterIP -> Octavia load balancer, provider ovn), "
              f"N={created['services']}; {BASELINE_NOTE}"),
             (f"  create -> first answer through ClusterIP:{SERVICE_PORT} (s), p50 / p95 / "
              f"max:  {first['p50']} / {first['p95']} / {first['max']}"
              f"  ({created['answered']}/{created['services']} answered)"),
             (f"  API POST of the Service (s), p50 / max: {created['post']['p50']} / "
              f"{created['post']['max']}")]
    ready = change["ready_to_answer"]
    lines.append(f"  endpoint change: new backend Ready -> its answers through the ClusterIP "
                 f"(s), p50 / max: {ready['p50']} / {ready['max']} "
                 f"(n={ready['n']}/{change['repeats']})")
    fan_out = result.get("endpoint_change_all")
    if fan_out:
        ready = fan_out["ready_to_answer"]
        lines.append(f"{'':4}the backend joining all {fan_out['services_changed']} Services at "
                     f"once: p50 / max {ready['p50']} / {ready['max']} "
                     f"(n={ready['n']}/{fan_out['repeats']})")
    for name in ("octavia", "neutron"):
        row = created[f"{name}_requests_per_service"]
        if row["n"]:
            lines.append(f"  {name.capitalize()} requests per Service create (until quiet): "
                         f"median {row['median']}, mean {row['mean']}, max {row['max']}; "
                         f"mean by method {json.dumps(row['mean_by_method'])}")
        lines.append(f"{'':4}by client, all {created['services']} creates: "
                     + json.dumps(created[f"{name}_requests_by_agent"]))
    switch = result.get("ovs_vswitchd")
    if switch is not None and not switch["survived"]:
        lines.append(f"  ovs-vswitchd died during the run: {'; '.join(switch['emergencies'])}")
    gone = deleted["per_load_balancer"]
    lines.append(f"  delete -> load balancers gone (s): all {deleted['before']} after "
                 f"{deleted['all_gone_s']}; per load balancer p50 / max {gone['p50']} / "
                 f"{gone['max']}; leaked: {', '.join(deleted['leaked']) or 'none'}")
    if "octavia_by_agent_until_gone" in deleted:
        lines.append(f"{'':4}Octavia requests from the delete until gone, by client: "
                     + json.dumps(deleted["octavia_by_agent_until_gone"])
                     + f" (this benchmark's list GETs are {LIST_AGENT}'s)")
    return lines


# -- plumbing ------------------------------------------------------------------------------
def boottime() -> float:
    """The clock the pods' /proc/uptime shows."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class AccessLog:
    """A server's access log, read from an offset on."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def since(self, offset: int) -> list[str]:
        try:
            with self.path.open("rb") as fh:
                fh.seek(offset)
                return fh.read().decode(errors="replace").splitlines()
        except OSError:
            return []


def wait_quiet(logs: Sequence[AccessLog], limit: float = 30,
               quiet: float = QUIET_SECONDS) -> bool:
    """Until none of ``logs`` has grown for ``quiet`` seconds (at most ``limit``)."""
    seen: tuple[int, ...] = ()
    quiet_since, deadline = time.monotonic(), time.monotonic() + limit
    while time.monotonic() < deadline:
        now = tuple(log.size() for log in logs)
        if now != seen:
            seen, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet:
            return True
        time.sleep(0.25)
    return False


class Poller:
    """POLLER in the client pod, one `kubectl exec` (a process of ours)."""

    def __init__(self, layout: Layout, namespace: str, address: str, want: str | None,
                 timeout: float, parallel: int) -> None:
        self.lines: list[str] = []
        self.started = threading.Event()
        self.timeout = timeout
        rounds = max(1, round(timeout / POLL_INTERVAL))
        self._stderr: IO[str] = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in wait
        self.proc = subprocess.Popen(
            [str(kubernetes.kubectl_path(layout)), f"--kubeconfig={kubernetes.kubeconfig(layout)}",
             "exec", "-n", namespace, CLIENT, "--", "sh", "-c", POLLER, "sh", address,
             want or "-", str(rounds), str(parallel)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout or ():
            self.lines.append(line)
            if line.startswith("start "):
                self.started.set()

    def wait_started(self, timeout: float = 30) -> None:
        if not self.started.wait(timeout):
            self.wait(0)
            raise StackError(f"the poller did not start in the client pod within "
                             f"{timeout:.0f} s: {self.error()}")

    def wait(self, extra: float = 30) -> list[str]:
        """Its output once it ended (its own bound plus ``extra``; killed after)."""
        try:
            self.proc.wait(self.timeout + extra)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(10)
        return list(self.lines)

    def error(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().strip()[-500:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._stderr.close()


class ServicesBench:
    def __init__(self, layout: Layout, log: Callable[[str], None]) -> None:
        self.layout = layout
        self.log = log
        self.namespace = f"kuryr-bench-svc-{uuid.uuid4().hex[:6]}"
        self.octavia_log = AccessLog(layout.log("octavia-access"))
        self.switch_log = AccessLog(layout.log("ovs-vswitchd"))
        self.switch_pid = layout.ovs_run / "ovs-vswitchd.pid"
        self.neutron_log = AccessLog(layout.log("neutron-access"))
        pki = kubernetes.pki_of(layout)
        self._ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        self._ctx.load_cert_chain(str(pki.cert("admin")), str(pki.key("admin")))
        self.watch: PodWatch | None = None
        self.services: list[tuple[str, str]] = []  # (name, cluster IP)

    # -- APIs ----------------------------------------------------------------------------
    def kubectl(self, *args: str, timeout: float = 120, input_text: str | None = None) -> str:
        return kubernetes.kubectl(self.layout, *args, timeout=timeout, input_text=input_text)

    def kube(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 - the stack's API server
            f"{kubernetes.api_url()}{path}", data=data, method=method,
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, context=self._ctx, timeout=30) as resp:  # noqa: S310
            return json.load(resp)

    def load_balancers(self) -> list[dict]:
        """Octavia's list of load balancers (one GET)."""
        headers = {}
        if self.layout.keystone_mode:
            headers["X-Auth-Token"] = str(keystone.admin_session().get_token())
        request = urllib.request.Request(  # noqa: S310 - http://127.0.0.1:PORT
            f"{self.layout.octavia_url}/v2/lbaas/loadbalancers", headers=headers)
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
            return json.load(resp)["loadbalancers"]

    def load_balancer_status(self, name: str) -> dict | None:
        """The status tree of the load balancer named ``name`` (two GETs)."""
        listed = [lb for lb in self.load_balancers() if lb.get("name") == name
                  and lb.get("provisioning_status") != "DELETED"]
        if not listed:
            return None
        headers = {}
        if self.layout.keystone_mode:
            headers["X-Auth-Token"] = str(keystone.admin_session().get_token())
        request = urllib.request.Request(  # noqa: S310 - http://127.0.0.1:PORT
            f"{self.layout.octavia_url}/v2/lbaas/loadbalancers/{listed[0]['id']}/status",
            headers=headers)
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
            return json.load(resp)["statuses"]["loadbalancer"]

    def lb_name(self, service: str) -> str:
        return f"kuryr/{self.namespace}/{service}"

    def poller(self, address: str, want: str | None, timeout: float,
               parallel: int) -> Poller:
        poller = Poller(self.layout, self.namespace, address, want, timeout, parallel)
        try:
            poller.wait_started()
        except BaseException:
            poller.close()
            raise
        return poller

    # -- steps -------------------------------------------------------------------------
    def start_pods(self, names: Sequence[str], web: bool) -> None:
        docs = [pod_doc(n, self.namespace, web) for n in names]
        self.kubectl("apply", "-f", "-", input_text=json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": docs}))
        for name in names:
            self.kubectl("wait", "-n", self.namespace, "--for=condition=Ready", f"pod/{name}",
                         f"--timeout={READY_TIMEOUT:.0f}s", timeout=READY_TIMEOUT + 30)

    def choose_addresses(self, count: int, skip: Iterable[str] = ()) -> list[str]:
        listed = json.loads(self.kubectl("get", "services", "-A", "-o", "json"))
        used = {ip for svc in listed["items"]
                for ip in [svc["spec"].get("clusterIP"), *(svc["spec"].get("clusterIPs") or [])]
                if ip}
        used |= {lb.get("vip_address") or "" for lb in self.load_balancers()}
        return free_addresses(used | set(skip), count)

    def create_one(self, name: str, address: str, shared: bool) -> dict:
        """One Service: the client-side time from its POST to its first answer,
        and the requests Octavia and Neutron served meanwhile (until quiet)."""
        wait_quiet([self.octavia_log, self.neutron_log])
        offsets = (self.octavia_log.size(), self.neutron_log.size())
        poller = self.poller(address, None, CONNECT_TIMEOUT, 1)
        try:
            began = boottime()
            self.kube("POST", f"/api/v1/namespaces/{self.namespace}/services",
                      service_doc(name, self.namespace, address, shared))
            posted = boottime() - began
            self.services.append((name, address))
            lines = poller.wait()
        finally:
            poller.close()
        _, answers = parse_poller(lines)
        first = first_answer(answers)
        quiet = wait_quiet([self.octavia_log, self.neutron_log])
        octavia = self.octavia_log.since(offsets[0])
        neutron = self.neutron_log.since(offsets[1])
        return {"name": name, "cluster_ip": address, "post_s": round(posted, 3),
                "first_answer_s": None if first is None else round(first - began, 3),
                "answered_by": next((text for at, text in answers if at == first), None),
                "octavia_requests": requests_by_method(octavia),
                "neutron_requests": requests_by_method(neutron),
                "octavia_by_agent": requests_by_agent(octavia),
                "neutron_by_agent": requests_by_agent(neutron),
                "quiet": quiet}

    def create(self, count: int) -> dict:
        rows: list[dict] = []
        addresses = self.choose_addresses(count)
        skipped: list[str] = []
        while len(rows) < count:
            name = f"bench-svc-{len(rows):02d}"
            address = addresses[len(rows)]
            try:
                row = self.create_one(name, address, shared=bool(rows))
            except urllib.error.HTTPError as exc:
                text = exc.read().decode(errors="replace")
                if "already allocated" not in text or len(skipped) >= count:
                    raise StackError(f"POST of Service {name} ({address}): {exc}: "
                                     f"{text[:300]}") from exc
                # Taken since it was chosen (another user of the cluster): the next one.
                skipped.append(address)
                addresses[len(rows):] = self.choose_addresses(count - len(rows),
                                                              skip=skipped)
                continue
            rows.append(row)
            self.log(f"Service {len(rows)}/{count} ({address}): first answer after "
                     f"{row['first_answer_s']} s ({row['answered_by']}); Octavia "
                     f"{row['octavia_requests']['total']}, Neutron "
                     f"{row['neutron_requests']['total']} requests")
        firsts = [r["first_answer_s"] for r in rows if r["first_answer_s"] is not None]
        by_agent: dict[str, dict[str, int]] = {"octavia": {}, "neutron": {}}
        for row in rows:
            for name, counts in by_agent.items():
                for agent, n in row[f"{name}_by_agent"].items():
                    counts[agent] = counts.get(agent, 0) + n
        return {"services": count, "answered": len(firsts),
                "first_answer": summary(firsts, tail=0.95),
                "post": summary([r["post_s"] for r in rows], tail=0.95),
                "octavia_requests_per_service": per_service(
                    [r["octavia_requests"] for r in rows]),
                "neutron_requests_per_service": per_service(
                    [r["neutron_requests"] for r in rows]),
                "octavia_requests_by_agent": by_agent["octavia"],
                "neutron_requests_by_agent": by_agent["neutron"],
                "rows": rows}

    def settled(self, service: str, addresses: set[str]) -> bool:
        """Whether the Service's load balancer is ACTIVE in every part, with
        exactly ``addresses`` as members."""
        tree = self.load_balancer_status(self.lb_name(service))
        if tree is None:
            return False
        parts = [tree, *tree.get("listeners", [])]
        members: set[str] = set()
        for listener in tree.get("listeners", []):
            for pool in listener.get("pools", []):
                parts += [pool, *pool.get("members", [])]
                members |= {m.get("address") for m in pool.get("members", [])}
        return members == addresses and all(
            p.get("provisioning_status", "ACTIVE") == "ACTIVE" for p in parts)

    def wait_settled(self, names: Sequence[str], addresses: set[str],
                     limit: float = 60) -> bool:
        """Until every named Service's load balancer is settled on ``addresses``
        (a backend removed gone from them; no change left for the controller)."""
        deadline = time.monotonic() + limit
        left = list(names)
        while time.monotonic() < deadline:
            left = [n for n in left if not self.settled(n, addresses)]
            if not left:
                return True
            time.sleep(0.5)
        self.log(f"note: load balancers of {', '.join(left)} did not settle on "
                 f"{sorted(addresses)} within {limit:.0f} s")
        return False

    def backends(self) -> set[str]:
        listed = json.loads(self.kubectl("get", "pods", "-n", self.namespace, "-l",
                                         "app=bench-web", "-o", "json"))["items"]
        return {p["status"]["podIP"] for p in listed}

    def endpoint_change(self, repeats: int, shared: bool) -> dict:
        """A third backend: from this client seeing it Ready to its hostname
        answering through the first Service's cluster IP.  It joins the first
        Service alone, or (``shared``) all of them."""
        if self.watch is None:
            raise StackError("the pod watch is not running")
        service, address = self.services[0]
        touched = [n for n, _ in self.services] if shared else [service]
        backends = self.backends()
        rows: list[dict[str, Any]] = []
        times: list[float] = []
        for i in range(repeats):
            name = f"bench-web-{'all' if shared else 'new'}-{i}"
            poller = self.poller(address, name, ENDPOINT_TIMEOUT + READY_TIMEOUT, 3)
            try:
                self.kubectl("apply", "-f", "-", input_text=json.dumps(
                    pod_doc(name, self.namespace, True, shared)))
                self.kubectl("wait", "-n", self.namespace, "--for=condition=Ready",
                             f"pod/{name}", f"--timeout={READY_TIMEOUT:.0f}s",
                             timeout=READY_TIMEOUT + 30)
                waited = boottime()
                lines = poller.wait()
            finally:
                poller.close()
            # The watch's time (ms) is time.time(): on the boot-time clock.
            seen_ready = self.watch.seen.get(name, {}).get("ready")
            ready = waited if seen_ready is None else seen_ready - time.time() + boottime()
            _, answers = parse_poller(lines)
            first = first_answer(answers, name)
            early = [at for at, text in answers if text == name and at < ready]
            if first is not None:
                times.append(round(first - ready, 3))
            rows.append({"pod": name, "ready_seen_by": "watch" if seen_ready else "kubectl wait",
                         "ready_to_answer_s": None if first is None else times[-1],
                         "answers_before_ready": len(early)})
            self.log(f"endpoint change{' (all Services)' if shared else ''} {i + 1}/{repeats}: "
                     f"{name} answered {rows[-1]['ready_to_answer_s']} s after it was Ready")
            self.kubectl("delete", "pod", "-n", self.namespace, name, "--wait=true",
                         timeout=READY_TIMEOUT)
            self.wait_settled(touched, backends)
        return {"service": service, "services_changed": len(touched), "repeats": repeats,
                "ready_to_answer": summary(times), "rows": rows}

    def delete(self) -> dict:
        """Every Service deleted (one request), then Octavia listed until none of
        the namespace's load balancers is left (at most GONE_TIMEOUT)."""
        before = load_balancers_of(self.load_balancers(), self.namespace)
        offset = self.octavia_log.size()
        began = time.monotonic()
        self.kubectl("delete", "services", "--all", "-n", self.namespace, "--wait=false")
        left, gone_at = set(before), {}
        while left and time.monotonic() - began < GONE_TIMEOUT:
            time.sleep(0.25)
            now = set(load_balancers_of(self.load_balancers(), self.namespace))
            for name in left - now:
                gone_at[name] = time.monotonic() - began
            left &= now
        all_gone = None if left else round(max(gone_at.values(), default=0.0), 3)
        # The Services themselves: gone once the controller released its finalizer.
        kubernetes.kubectl(self.layout, "wait", "-n", self.namespace, "--for=delete",
                           "services", "--all", "--timeout=60s", timeout=90, check=False)
        self.services.clear()
        requests = self.octavia_log.since(offset)
        return {"before": len(before), "all_gone_s": all_gone,
                "per_load_balancer": summary(list(gone_at.values())),
                "leaked": sorted(left),
                "octavia_requests_until_gone": requests_by_method(requests),
                "octavia_by_agent_until_gone": requests_by_agent(requests)}

    # -- the run ------------------------------------------------------------------------
    def switch(self, before: int | None, offset: int) -> dict[str, Any]:
        after = read_pid(self.switch_pid)
        report = switch_report(before, after, alive(after, "ovs-vswitchd"),
                               self.switch_log.since(offset))
        if not report["survived"]:
            self.log(f"ovs-vswitchd did not survive the run (pid {before} -> {after}): "
                     + "; ".join(report["emergencies"][-1:])
                     + " -- `kuryr-aio up` starts it again")
        return report

    def run(self, count: int) -> dict:
        switch_before, switch_offset = read_pid(self.switch_pid), self.switch_log.size()
        self.kubectl("create", "namespace", self.namespace)
        result: dict[str, Any] = {"namespace": self.namespace, "baseline": BASELINE_NOTE}
        try:
            self.watch = PodWatch(self.layout, self.namespace)
            self.log(f"services: backends {', '.join(BACKENDS)} and {CLIENT} in "
                     f"{self.namespace} ...")
            self.start_pods(BACKENDS, web=True)
            self.start_pods([CLIENT], web=False)
            wait_quiet([self.octavia_log, self.neutron_log], limit=60,
                       quiet=SETUP_QUIET_SECONDS)
            self.log(f"services: {count} Services, one after another ...")
            result["create"] = self.create(count)
            self.log(f"services: endpoint change on {self.services[0][0]}, "
                     f"{ENDPOINT_REPEATS} times ...")
            result["endpoint_change"] = self.endpoint_change(ENDPOINT_REPEATS, shared=False)
            if count > 1:
                self.log(f"services: endpoint change on all {count} Services, "
                         f"{ENDPOINT_REPEATS} times ...")
                result["endpoint_change_all"] = self.endpoint_change(ENDPOINT_REPEATS,
                                                                     shared=True)
            # Nothing left for the controller to do: the delete is timed alone.
            self.wait_settled([n for n, _ in self.services], self.backends())
            self.log("services: deleting the Services ...")
            result["delete"] = self.delete()
        finally:
            result["ovs_vswitchd"] = self.switch(switch_before, switch_offset)
            if self.watch is not None:
                self.watch.stop()
            self.log(f"services: deleting namespace {self.namespace} ...")
            self.kubectl("delete", "namespace", self.namespace, "--wait=true", timeout=240)
            if "delete" not in result:  # a failed run: whatever is left is reported
                with contextlib.suppress(OSError, ValueError, KeyError):
                    left = load_balancers_of(self.load_balancers(), self.namespace)
                    if left:
                        self.log(f"load balancers left of {self.namespace}: {left}")
        return result


class ServicesPart:
    """``kuryr-bench --k8s --services N`` (a :class:`kuryr.bench.k8s.Part`)."""

    key = "services"
    measure = ("client-side: from just before the Service's API POST to the client pod's "
               "first HTTP answer through its cluster IP (polled every 0.1 s from inside the "
               "pod, /proc/uptime: 10 ms); endpoint change: this client's watch seeing the "
               "new backend Ready to its first answer through the cluster IP")

    def __init__(self, count: int) -> None:
        self.count = count

    def run(self, layout: Layout, log: Callable[[str], None]) -> dict:
        return ServicesBench(layout, log).run(self.count)

    def checks(self, result: dict) -> list[tuple[str, bool, str]]:
        return checks(result)

    def table(self, result: dict) -> list[str]:
        return table(result)
