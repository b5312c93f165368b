"""kuryr-bench --k8s: the pure parts (timestamps, percentiles, the bridge's
configuration, Neutron counts, which pods waited on Neutron, the targets)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kuryr.bench import k8s


def pod(name="p0", created="2026-11-30T20:00:00Z", started="2026-11-30T20:00:02Z",
        ready="2026-11-30T20:00:03Z", ip="10.244.0.5"):
    status = {"podIP": ip, "phase": "Running",
              "conditions": [{"type": "PodScheduled", "status": "True",
                              "lastTransitionTime": created},
                             {"type": "Ready", "status": "True",
                              "lastTransitionTime": ready}],
              "containerStatuses": [{"name": "main",
                                     "state": {"running": {"startedAt": started}}}]}
    return {"metadata": {"name": name, "creationTimestamp": created}, "status": status}


def test_api_timestamps_are_utc_seconds():
    assert k8s.parse_time("1970-01-01T00:00:10Z") == 10.0
    # Neutron's created_at carries a Z too; a time without a zone is UTC.
    assert k8s.parse_time("1970-01-01T00:01:00") == 60.0


def test_api_times_from_the_pods_own_timestamps():
    assert k8s.api_times(pod()) == {"running": 2.0, "ready": 3.0}


def test_a_pod_not_yet_running_has_no_api_times():
    waiting = pod()
    waiting["status"] = {"phase": "Pending", "containerStatuses": [
        {"name": "main", "state": {"waiting": {"reason": "ContainerCreating"}}}],
        "conditions": [{"type": "Ready", "status": "False",
                        "lastTransitionTime": "2026-11-30T20:00:00Z"}]}
    assert k8s.api_times(waiting) == {"running": None, "ready": None}


def test_summary_is_median_nearest_rank_p99_and_max():
    values = [float(v) for v in range(1, 51)]  # 50 pods: p99 is the slowest
    assert k8s.summary(values) == {"n": 50, "p50": 25.5, "p99": 50.0, "max": 50.0}
    assert k8s.summary([]) == {"n": 0, "p50": None, "p99": None, "max": None}
    hundred = [float(v) for v in range(1, 101)]
    assert k8s.summary(hundred)["p99"] == 99.0


def test_the_bridge_neither_routes_nor_nats_off_the_machine():
    conf = k8s.bridge_conflist("kbench0", "10.250.0.0/24", Path("/var/lib/x/host-local"))
    assert [p["type"] for p in conf["plugins"]] == ["bridge"]  # no portmap, no firewall
    bridge = conf["plugins"][0]
    assert bridge["isGateway"] is False
    assert bridge["isDefaultGateway"] is False
    assert bridge["ipMasq"] is False
    assert bridge["bridge"] == "kbench0"
    assert bridge["ipam"] == {"type": "host-local", "ranges": [[{"subnet": "10.250.0.0/24"}]],
                              "routes": [], "dataDir": "/var/lib/x/host-local"}
    json.dumps(conf)  # what is written to the conf dir


def test_the_bridge_conflist_sorts_before_kuryrs():
    assert k8s.BRIDGE_CONFLIST < k8s.KURYR_CONFLIST


def test_a_bad_subnet_is_refused():
    with pytest.raises(ValueError, match="does not appear"):
        k8s.bridge_conflist("kbench0", "not-a-subnet", Path("/x"))


def test_neutron_requests_are_counted_by_method():
    lines = [
        '127.0.0.1 - - [30/Nov/2026:20:47:13 +0000] "GET /v2.0/ports HTTP/1.1" 200 1 "-" "k"',
        '127.0.0.1 - - [30/Nov/2026:20:47:13 +0000] "PUT /v2.0/ports/a HTTP/1.1" 200 1 "-" "k"',
        '127.0.0.1 - - [30/Nov/2026:20:47:14 +0000] "PUT /v2.0/ports/b HTTP/1.1" 200 1 "-" "k"',
        "a line of something else",
    ]
    assert k8s.requests_by_method(lines) == {"GET": 1, "PUT": 2, "total": 3}
    assert k8s.requests_by_method([]) == {"total": 0}


def test_a_pod_whose_port_was_made_before_it_did_not_wait_on_neutron():
    pods = [pod("pooled", ip="10.244.0.5"), pod("new", ip="10.244.0.6"),
            pod("same-second", ip="10.244.0.7"), pod("no-port", ip="10.244.0.8")]
    ports = [("10.244.0.5", "2026-11-30T19:59:59Z"), ("10.244.0.6", "2026-11-30T20:00:01Z"),
             ("10.244.0.7", "2026-11-30T20:00:00Z")]
    assert k8s.ports_made_after(pods, ports) == ["new", "same-second", "no-port"]


def burst(size, p50, p99, running=None):
    stats = {"n": size, "p50": p50, "p99": p99, "max": p99}
    return {"size": size, "running": size if running is None else running,
            "client": {"running": stats}}


def result(k_single=1.2, b_single=1.0, k_burst=(3.0, 4.5), b_burst=(2.0, 3.0), waited=0,
           running=None):
    def side(single, bursts):
        return {"single": {"client_running": {"n": 7, "p50": single, "p99": single,
                                              "max": single}},
                "bursts": [burst(20, 1.0, 2.0), burst(50, *bursts, running=running)]}
    found = {"kuryr": side(k_single, k_burst), "bridge": side(b_single, b_burst)}
    found["kuryr"]["pods_waiting_on_neutron"] = waited
    found["kuryr"]["pods_measured"] = 77
    found["ratios"] = k8s.pod_ratios(found)
    return found


def test_ratios_are_kuryr_over_bridge():
    ratios = result()["ratios"]
    assert ratios["single_p50_running"] == 1.2
    assert ratios["burst_50_p50_running"] == 1.5
    assert ratios["burst_50_p99_running"] == 1.5
    assert ratios["burst_20_p50_running"] == 1.0


def test_targets_pass():
    assert [ok for _, ok, _ in k8s.checks(result())] == [True, True, True]


def test_targets_fail_each_on_its_own_figure():
    assert [ok for _, ok, _ in k8s.checks(result(k_single=1.4))] == [False, True, True]
    assert [ok for _, ok, _ in k8s.checks(result(k_burst=(3.0, 5.1)))] == [True, False, True]
    assert [ok for _, ok, _ in k8s.checks(result(running=49))] == [True, False, True]
    assert [ok for _, ok, _ in k8s.checks(result(waited=1))] == [True, True, False]


def test_the_table_shows_every_target():
    found = result()
    for side in ("kuryr", "bridge"):
        found[side]["single"]["api_running"] = {"n": 7, "p50": 1.0, "p99": 1.0, "max": 1.0}
        for row in found[side]["bursts"]:
            row["api"] = {"running": {"n": 1, "p50": 1.0, "p99": 1.0, "max": 1.0}}
            row["client"]["ip"] = row["client"]["ready"] = row["client"]["running"]
            row["neutron_requests_during_start"] = {"PUT": 2, "total": 2}
            row["neutron_requests_until_quiet"] = {"PUT": 4, "total": 4}
            row["neutron_requests_per_pod"] = 0.2
    found["checks"] = [{"target": n, "pass": ok, "measured": d}
                       for n, ok, d in k8s.checks(found)]
    found["duration_s"] = 300
    text = k8s.table(found)
    assert text.count("PASS: ") == 3
    assert "Neutron 2 while starting" in text
