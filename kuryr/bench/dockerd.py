"""The Docker benchmark's measurements against one dockerd (`kuryr-bench`,
run.py; `kuryr-bench --nested` uses them against the host's and VMs' dockerds).
Neutron requests are counted at Neutron's side (neutron-server's access log)."""

from __future__ import annotations

import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Callable

from kuryr.aio.docker import DOCKER_CLI, IMAGE
from kuryr.aio.layout import Layout
from kuryr.aio.procs import StackError
from kuryr.bench.stats import percentile

# A count ends once neutron-server has logged nothing new for this long.
QUIET_SECONDS = 2


class Bench:
    def __init__(self, layout: Layout, log: Callable[[str], None]) -> None:
        self.layout = layout
        self.log = log
        self.access_log = layout.log("neutron-access")
        self.docker_host = layout.docker_host  # --nested: a VM's dockerd instead
        self.tag = uuid.uuid4().hex[:6]
        self.cleanup: list[list[str]] = []

    # -- plumbing ---------------------------------------------------------------------
    def docker(self, *args: str, check: bool = True, timeout: float = 300) -> tuple[int, float]:
        started = time.monotonic()
        proc = subprocess.run([DOCKER_CLI, "-H", self.docker_host, *args],
                              capture_output=True, text=True, timeout=timeout, check=False)
        elapsed = time.monotonic() - started
        if check and proc.returncode != 0:
            raise StackError(f"docker {' '.join(args)}: {proc.stderr.strip()}")
        return proc.returncode, elapsed

    def docker_out(self, *args: str) -> str:
        return subprocess.run([DOCKER_CLI, "-H", self.docker_host, *args],
                              capture_output=True, text=True, check=True).stdout.strip()

    def _access_lines(self) -> int:
        try:
            with self.access_log.open("rb") as fh:
                return sum(1 for _ in fh)
        except OSError:
            return 0

    def neutron_requests(self, action: Callable[[], object]) -> int:
        """Requests neutron-server logged while ``action`` ran (and settled)."""
        before = self._access_lines()
        action()
        # Background writes (device_id, deletes, a pool's bulk fill) land after the
        # command returns: count until neutron-server has been quiet for QUIET_SECONDS.
        seen, quiet_since, deadline = -1, time.monotonic(), time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = self._access_lines()
            if now != seen:
                seen, quiet_since = now, time.monotonic()
            elif time.monotonic() - quiet_since >= QUIET_SECONDS:
                break
        return seen - before

    def counted(self, *docker_args: str) -> int:
        """Neutron requests caused by one docker command."""
        return self.neutron_requests(lambda: self.docker(*docker_args))

    def network(self, driver: str, subnet: str, gateway: str, *extra: str) -> str:
        name = f"bench-{driver}-{self.tag}-{subnet.split('/', 1)[0].replace('.', '-')}"
        self.docker("network", "create", "-d", driver, "--ipam-driver", driver,
                    "--subnet", subnet, "--gateway", gateway, *extra, name)
        self.cleanup.append(["network", "rm", name])
        return name

    def finish(self) -> None:
        for args in reversed(self.cleanup):
            self.docker(*args, check=False)
        self.cleanup.clear()

    # -- measurements -----------------------------------------------------------------
    def request_counts(self, driver: str, rounds: int, octet: int,
                       extra: tuple[str, ...] = ()) -> dict[str, int]:
        counts: dict[str, list[int]] = {k: [] for k in (
            "network_create", "network_create_dual_stack", "container_start",
            "container_stop", "network_rm", "network_rm_dual_stack")}
        create = ("network", "create", "-d", driver, "--ipam-driver", driver, *extra)
        for i in range(rounds):
            name = f"bench-{driver}-{self.tag}-c{i}"
            container, dual = f"{name}-c", f"{name}-6"
            self.cleanup += [["network", "rm", name], ["network", "rm", dual],
                             ["rm", "-f", container]]
            counts["network_create"].append(self.counted(
                *create, "--subnet", f"10.{octet}.{i}.0/24", "--gateway", f"10.{octet}.{i}.1",
                name))
            self.docker("create", "--name", container, "--net", name, IMAGE, "sleep", "600")
            counts["container_start"].append(self.counted("start", container))
            counts["container_stop"].append(self.counted("stop", "-t", "0", container))
            self.docker("rm", "-f", container)
            counts["network_rm"].append(self.counted("network", "rm", name))
            counts["network_create_dual_stack"].append(self.counted(
                *create, "--ipv6", "--subnet", f"10.{octet}.{i + 100}.0/24",
                "--gateway", f"10.{octet}.{i + 100}.1", "--subnet", f"fd{octet:02x}:{i}::/64",
                "--gateway", f"fd{octet:02x}:{i}::1", dual))
            counts["network_rm_dual_stack"].append(self.counted("network", "rm", dual))
        return {k: int(statistics.median(v)) for k, v in counts.items() if v}

    def run_latency(self, net_args: list[str], runs: int) -> dict:
        times, failures = [], 0
        self.docker("run", "--rm", *net_args, IMAGE, "true", check=False)  # warm-up
        for _ in range(runs):
            rc, elapsed = self.docker("run", "--rm", *net_args, IMAGE, "true", check=False)
            if rc == 0:
                times.append(elapsed)
            else:
                failures += 1
        if not times:
            return {"failures": failures}
        return {"median": round(statistics.median(times) * 1000),
                "p95": round(percentile(times, 0.95) * 1000), "runs": len(times),
                "failures": failures}

    def time_to_reach(self, network: str, runs: int) -> dict:
        """From `docker run` to a first ping answered by another container."""
        peer = f"bench-target-{self.tag}"
        self.docker("run", "-d", "--name", peer, "--net", network, IMAGE, "sleep", "600")
        self.cleanup.append(["rm", "-f", peer])
        address = self.docker_out("inspect", "-f",
                                  f'{{{{(index .NetworkSettings.Networks "{network}")'
                                  '.IPAddress}}', peer)
        times, first_ping_ok = [], 0
        for _ in range(runs):
            rc, elapsed = self.docker("run", "--rm", "--net", network, IMAGE, "ping", "-c",
                                      "1", "-W", "2", address, check=False)
            first_ping_ok += rc == 0
            times.append(elapsed)
        return {"median": round(statistics.median(times) * 1000),
                "first_ping_answered": f"{first_ping_ok}/{runs}"}

    def wait_for_pool(self, network: str, size: int, timeout: float = 300) -> float:
        """Seconds until ``size`` free pooled ports of ``network`` exist in Neutron."""
        from kuryr.neutron import marks
        from kuryr.neutron.client import connect_endpoint

        neutron = connect_endpoint(self.layout.neutron_url)
        docker_id = self.docker_out("network", "inspect", "-f", "{{.Id}}", network)
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            found = neutron.networks_tagged(marks.network_tags(docker_id))
            if found and len([p for p in neutron.ports(network_id=found[0].id,
                                                       device_owner=marks.POOL_DEVICE_OWNER)
                              if not p.device_id]) >= size:
                time.sleep(2)  # the last bulk's veths are being plugged
                return time.monotonic() - started
            time.sleep(1)
        raise StackError(f"the pool of {network} did not reach {size} ports in {timeout:.0f} s")

    def burst(self, network: str, size: int) -> dict:
        results: list[tuple[int, float]] = []
        lock = threading.Lock()

        def one() -> None:
            rc, elapsed = self.docker("run", "--rm", "--net", network, IMAGE, "true",
                                      check=False, timeout=600)
            with lock:
                results.append((rc, elapsed))

        threads = [threading.Thread(target=one) for _ in range(size)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.monotonic() - started
        ok = [e for rc, e in results if rc == 0]
        return {"size": size, "succeeded": len(ok), "wall_s": round(wall, 1),
                "p95_ms": round(percentile(ok, 0.95) * 1000) if ok else None}
