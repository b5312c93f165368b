"""kuryr-bench --k8s --services: the pure parts (the poller's output, the
cluster IPs chosen, the documents, access-log counts, the targets, the
table) and how --services selects what runs."""

from __future__ import annotations

import contextlib
import json
import subprocess
from types import SimpleNamespace

import pytest

from kuryr.bench import k8s, run, services

OCTAVIA_LINE = ('127.0.0.1 - - [01/Dec/2026:05:27:01 +0000] "{} HTTP/1.1" 200 842 "-" '
                '"{}"')
KURYR = "cli.py keystoneauth1/5.18.1 python-requests/2.34.2 CPython/3.11.7"


def test_services_count_is_bounded():
    assert services.services_count("1") == 1
    assert services.services_count("30") == 30
    for bad in ("0", "31", "-1", "ten", ""):
        with pytest.raises(ValueError, match="from 1 to 30"):
            services.services_count(bad)


def test_the_option_needs_k8s_and_a_bounded_count(capsys):
    with pytest.raises(SystemExit):
        run.main(["--services", "5"])
    assert "--services needs --k8s" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run.main(["--k8s", "--services", "31"])
    assert "from 1 to 30" in capsys.readouterr().err


def test_the_poller_output_is_parsed_in_time_order():
    lines = ["start 68656.61\n", "68660.02 bench-web-1\n", "68659.90 bench-web-0\n",
             "garbage\n", "end\n"]
    started, answers = services.parse_poller(lines)
    assert started == 68656.61
    assert answers == [(68659.90, "bench-web-0"), (68660.02, "bench-web-1")]
    assert services.parse_poller([]) == (None, [])


def test_the_first_answer_is_any_or_the_wanted_hosts():
    answers = [(10.0, "bench-web-0"), (10.5, "bench-web-new-0"), (11.0, "bench-web-new-0")]
    assert services.first_answer(answers) == 10.0
    assert services.first_answer(answers, "bench-web-new-0") == 10.5
    assert services.first_answer(answers, "bench-web-new-0", since=10.7) == 11.0
    assert services.first_answer(answers, "bench-web-new-1") is None
    assert services.first_answer([]) is None


def test_cluster_ips_skip_those_in_use_and_stay_in_the_range():
    used = ["10.96.210.10", "10.96.210.12", "None", "", "10.96.0.1"]
    assert services.free_addresses(used, 3) == ["10.96.210.11", "10.96.210.13",
                                                "10.96.210.14"]
    with pytest.raises(ValueError, match="fewer than 3"):
        services.free_addresses([], 3, first="10.96.255.253")


def selects(service, pod):
    labels = pod["metadata"]["labels"]
    return all(labels.get(k) == v for k, v in service["spec"]["selector"].items())


def test_the_service_asks_for_its_cluster_ip_and_selects_the_backends():
    doc = services.service_doc("bench-svc-01", "ns", "10.96.210.11")
    assert doc["spec"]["clusterIP"] == "10.96.210.11"
    assert doc["spec"]["selector"] == {"app": "bench-web", "bench-set": "all"}
    assert doc["spec"]["ports"] == [{"name": "http", "protocol": "TCP", "port": 80,
                                     "targetPort": 8080}]
    json.dumps(doc)


def test_backends_serve_their_hostname_and_the_client_is_no_backend():
    web = services.pod_doc("bench-web-0", "ns", web=True)
    assert web["metadata"]["labels"] == {"app": "bench-web", "bench-set": "all"}
    container = web["spec"]["containers"][0]
    assert "hostname > /var/www/index.html" in container["command"][-1]
    assert container["readinessProbe"]["httpGet"]["port"] == 8080
    client = services.pod_doc("bench-client", "ns", web=False)
    assert client["metadata"]["labels"].get("app") != "bench-web"
    assert "readinessProbe" not in client["spec"]["containers"][0]


def test_a_backend_joins_the_first_service_alone_or_all_of_them():
    first = services.service_doc("bench-svc-00", "ns", "10.96.210.10", shared=False)
    other = services.service_doc("bench-svc-01", "ns", "10.96.210.11")
    base = services.pod_doc("bench-web-0", "ns", web=True)
    alone = services.pod_doc("bench-web-new-0", "ns", web=True, shared=False)
    client = services.pod_doc("bench-client", "ns", web=False)
    assert [selects(first, base), selects(other, base)] == [True, True]
    assert [selects(first, alone), selects(other, alone)] == [True, False]
    assert [selects(first, client), selects(other, client)] == [False, False]


def test_the_poller_script_is_valid_shell():
    subprocess.run(["sh", "-n", "-c", services.POLLER], check=True)


def test_only_the_namespaces_live_load_balancers_count():
    listed = [{"name": "kuryr/ns/a", "provisioning_status": "ACTIVE"},
              {"name": "kuryr/ns/b", "provisioning_status": "PENDING_DELETE"},
              {"name": "kuryr/ns/c", "provisioning_status": "DELETED"},
              {"name": "kuryr/ns2/a", "provisioning_status": "ACTIVE"},
              {"name": None, "provisioning_status": "ACTIVE"}]
    assert services.load_balancers_of(listed, "ns") == ["kuryr/ns/a", "kuryr/ns/b"]


def test_requests_are_counted_by_client():
    lines = [OCTAVIA_LINE.format("GET /v2/lbaas/loadbalancers", KURYR),
             OCTAVIA_LINE.format("POST /v2/lbaas/loadbalancers", KURYR),
             OCTAVIA_LINE.format("GET /v2/lbaas/providers", "Python-urllib/3.11"),
             "a line of something else"]
    assert services.requests_by_agent(lines) == {"cli.py": 2, "Python-urllib/3.11": 1}
    assert k8s.requests_by_method(lines) == {"GET": 2, "POST": 1, "total": 3}


def test_requests_per_service():
    counts = [{"GET": 7, "POST": 1, "total": 8}, {"GET": 11, "POST": 1, "total": 12},
              {"GET": 9, "total": 9}]
    assert services.per_service(counts) == {
        "n": 3, "median": 9, "mean": 9.67, "max": 12,
        "mean_by_method": {"GET": 9.0, "POST": 0.67}}
    assert services.per_service([]) == {"n": 0}


def test_summary_can_report_p95():
    values = [float(v) for v in range(1, 21)]
    assert k8s.summary(values, tail=0.95) == {"n": 20, "p50": 10.5, "p95": 19.0,
                                              "max": 20.0}
    assert k8s.summary([], tail=0.95) == {"n": 0, "p50": None, "p95": None, "max": None}


def result(p50=3.3, answered=10, leaked=(), before=10):
    stats = {"n": answered, "p50": p50, "p95": 4.0, "max": 4.2}
    per = {"n": 10, "median": 10, "mean": 10.2, "max": 12,
           "mean_by_method": {"GET": 9.2, "POST": 1.0}}
    return {"create": {"services": 10, "answered": answered, "first_answer": stats,
                       "post": {"n": 10, "p50": 0.02, "p95": 0.03, "max": 0.03},
                       "octavia_requests_per_service": per,
                       "neutron_requests_per_service": per,
                       "octavia_requests_by_agent": {"cli.py": 102},
                       "neutron_requests_by_agent": {"octavia-api": 190}},
            "endpoint_change": {"repeats": 3, "ready_to_answer": {
                "n": 3, "p50": 2.7, "p99": 3.4, "max": 3.4}},
            "endpoint_change_all": {"repeats": 3, "services_changed": 10, "ready_to_answer": {
                "n": 3, "p50": 6.5, "p99": 7.9, "max": 7.9}},
            "delete": {"before": before, "all_gone_s": None if leaked else 6.1,
                       "per_load_balancer": {"n": 10, "p50": 5.9, "p99": 6.1, "max": 6.1},
                       "leaked": list(leaked),
                       "octavia_by_agent_until_gone": {"cli.py": 40, "Python-urllib/3.11": 70}}}


def test_services_targets():
    assert [ok for _, ok, _ in services.checks(result())] == [True, True]
    assert [ok for _, ok, _ in services.checks(result(p50=5.1))] == [False, True]
    assert [ok for _, ok, _ in services.checks(result(answered=9))] == [False, True]
    assert [ok for _, ok, _ in services.checks(result(p50=None, answered=0))] == [False, True]
    leaked = services.checks(result(leaked=["kuryr/ns/bench-svc-03"]))
    assert [ok for _, ok, _ in leaked] == [True, False]
    assert "kuryr/ns/bench-svc-03" in leaked[1][2]
    # None made at all is no pass either.
    assert [ok for _, ok, _ in services.checks(result(before=0))] == [True, False]


def test_the_services_table_says_there_is_no_baseline():
    text = "\n".join(services.table(result()))
    assert "no baseline" in text
    assert "3.3 / 4.0 / 4.2  (10/10 answered)" in text
    assert "p50 / max: 2.7 / 3.4 (n=3/3)" in text
    assert "joining all 10 Services at once: p50 / max 6.5 / 7.9 (n=3/3)" in text
    assert "leaked: none" in text
    assert '{"cli.py": 40, "Python-urllib/3.11": 70}' in text


@pytest.mark.parametrize(("argv", "pods", "services_run"), [
    (["--k8s"], True, False),
    (["--k8s", "--services", "4"], False, True),
    (["--k8s", "--services", "4", "--bursts", "5"], True, True),
])
def test_services_alone_skip_the_pod_parts(monkeypatch, capsys, tmp_path, argv, pods,
                                           services_run):
    ran = []

    class Pods:
        def __init__(self, layout, log):
            pass

        def run(self, runs, bursts):
            ran.append("pods")
            return {"pods": True}

    class Services:
        def __init__(self, layout, log):
            pass

        def run(self, count):
            ran.append(f"services {count}")
            return result()

    monkeypatch.setattr(k8s, "K8sBench", Pods)
    monkeypatch.setattr(services, "ServicesBench", Services)
    monkeypatch.setattr(k8s, "cluster_lock", lambda layout, log: contextlib.nullcontext())
    monkeypatch.setattr(k8s, "pod_ratios", lambda found: {})
    monkeypatch.setattr(k8s, "checks", lambda found: [])
    monkeypatch.setattr(k8s, "pods_table", lambda found: ["pods table"])
    monkeypatch.setattr(k8s.Layout, "default", staticmethod(SimpleNamespace))
    out = tmp_path / "out.json"
    assert run.main([*argv, "--json", str(out)]) == 0
    assert ran == (["pods"] if pods else []) + (["services 4"] if services_run else [])
    written = json.loads(out.read_text())
    assert ("services" in written) is services_run
    printed = capsys.readouterr().out
    assert ("pods table" in printed) is pods
    assert ("no baseline" in printed) is services_run


def test_a_switch_that_died_during_the_run_fails_a_check():
    crash = ("2026-12-01T05:57:21.861Z|00143|util|EMER|../lib/conntrack.c:1063: assertion "
             "conn->conn_type == CT_CONN_TYPE_DEFAULT failed in conn_update_state()")
    lines = ["2026-12-01T05:57:05.279Z|00142|connmgr|INFO|br-int<->unix#1: 50 flow_mods",
             crash + "\n"]
    assert services.emergencies(lines) == [crash]
    died = services.switch_report(28823, 28823, False, lines)
    assert died == {"pid_before": 28823, "pid_after": 28823, "survived": False,
                    "emergencies": [crash]}
    assert not services.switch_report(28823, 30001, True, [])["survived"]
    assert not services.switch_report(None, None, False, [])["survived"]
    assert services.switch_report(28823, 28823, True, lines[:1])["survived"]
    found = result()
    found["ovs_vswitchd"] = died
    checks = services.checks(found)
    assert [ok for _, ok, _ in checks] == [True, True, False]
    assert "conntrack.c:1063" in checks[2][2]
    assert "ovs-vswitchd died during the run" in "\n".join(services.table(found))
    found["ovs_vswitchd"] = services.switch_report(1, 1, True, [])
    assert [ok for _, ok, _ in services.checks(found)] == [True, True, True]
