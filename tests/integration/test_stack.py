"""The all-in-one stack is real: Neutron binds ports to this host through OVN,
plugged veths carry packets, and security groups are enforced."""

from __future__ import annotations

import subprocess

from . import helpers


def port_on_this_host(neutron, stack, network, cleanup, **extra):
    port = neutron.api.create_port(network_id=network.id, binding_host_id=stack.host,
                                   device_owner="compute:kuryr-test", **extra)
    cleanup(lambda: neutron.api.delete_port(port.id, ignore_missing=True))
    return port


def test_status_reports_every_component_up(stack):
    proc = subprocess.run([helpers.aio_command(), "status"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "neutron" in proc.stdout
    assert "DOWN" not in proc.stdout


def test_port_bound_to_this_host_gets_ovs_vif(neutron, stack, tenant_net, cleanup):
    net, _ = tenant_net
    port = port_on_this_host(neutron, stack, net, cleanup)
    assert port.binding_vif_type == "ovs"
    assert port.binding_vif_details.get("bridge_name") == "br-int"
    assert port.binding_vif_details.get("datapath_type") == "netdev"


def test_plugged_port_turns_active(neutron, ovs, stack, tenant_net, cleanup, unique):
    net, _ = tenant_net
    port = port_on_this_host(neutron, stack, net, cleanup)
    assert neutron.api.get_port(port.id).status == "DOWN"
    ns = helpers.make_netns(f"t-{unique}", cleanup)
    vif = helpers.plug_port_into_netns(neutron, ovs, port, ns, cleanup, mtu=net.mtu)
    assert ovs.wait_installed(vif.host_ifname, timeout=15)
    active = helpers.wait_until(lambda: neutron.api.get_port(port.id).status == "ACTIVE", 20)
    assert active, f"port {port.id} did not turn ACTIVE"


def test_two_namespaces_ping_and_tcp(neutron, ovs, stack, tenant_net, cleanup, unique):
    net, _ = tenant_net
    ports = [port_on_this_host(neutron, stack, net, cleanup) for _ in range(2)]
    namespaces = [helpers.make_netns(f"t{i}-{unique}", cleanup) for i in range(2)]
    for port, ns in zip(ports, namespaces, strict=True):
        vif = helpers.plug_port_into_netns(neutron, ovs, port, ns, cleanup, mtu=net.mtu)
        assert ovs.wait_installed(vif.host_ifname, timeout=15)
    server_ip = ports[1].fixed_ips[0]["ip_address"]
    assert helpers.wait_until(lambda: helpers.ping(namespaces[0], server_ip), 10)
    server = helpers.tcp_listen(namespaces[1], 8080)
    try:
        assert helpers.tcp_exchange(namespaces[0], server, server_ip, 8080) is not None
    finally:
        server.close()


def test_security_group_blocks_then_allows_tcp(neutron, ovs, stack, tenant_net, cleanup,
                                               unique):
    net, _ = tenant_net
    sg = neutron.api.create_security_group(name=f"test-closed-{unique}")
    cleanup(lambda: neutron.api.delete_security_group(sg.id, ignore_missing=True))
    assert not [r for r in sg.security_group_rules if r["direction"] == "ingress"]
    server_port = port_on_this_host(neutron, stack, net, cleanup, security_group_ids=[sg.id])
    client_port = port_on_this_host(neutron, stack, net, cleanup)
    server_ns = helpers.make_netns(f"ts-{unique}", cleanup)
    client_ns = helpers.make_netns(f"tc-{unique}", cleanup)
    for port, ns in ((server_port, server_ns), (client_port, client_ns)):
        vif = helpers.plug_port_into_netns(neutron, ovs, port, ns, cleanup, mtu=net.mtu)
        assert ovs.wait_installed(vif.host_ifname, timeout=15)
    server_ip = server_port.fixed_ips[0]["ip_address"]
    server = helpers.tcp_listen(server_ns, 8080)
    try:
        assert helpers.tcp_exchange(client_ns, server, server_ip, 8080, timeout=2) is None
        neutron.api.create_security_group_rule(
            security_group_id=sg.id, direction="ingress", ethertype="IPv4",
            protocol="tcp", port_range_min=8080, port_range_max=8080)
        passed = helpers.wait_until(
            lambda: helpers.tcp_exchange(client_ns, server, server_ip, 8080, timeout=1), 10)
        assert passed, "TCP still dropped after the ingress rule"
    finally:
        server.close()
