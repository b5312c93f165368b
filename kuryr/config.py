"""Kuryr's configuration: every option group in one place.

Option names follow kuryr-lib / kuryr-libnetwork so an existing
``/etc/kuryr/kuryr.conf`` keeps working.  Nothing here reads a file at import
time: :func:`load` builds a fresh :class:`oslo_config.cfg.ConfigOpts` when the
program starts, so drivers are chosen from the file that was actually given.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from keystoneauth1 import loading as ks_loading
from oslo_config import cfg

DEFAULT_CONFIG_FILE = "/etc/kuryr/kuryr.conf"
# Names the config file when the command line names none (`kuryr-aio env` sets it).
CONFIG_FILE_ENV = "KURYR_CONFIG_FILE"
NEUTRON_GROUP = "neutron"
OCTAVIA_GROUP = "octavia"

core_opts = [
    cfg.BoolOpt("debug", default=False, help="Log at debug level."),
    cfg.StrOpt(
        "log_file",
        default="",
        help="Also log to this file (stderr gets the log anyway), relative to log_dir "
        "when that is set. kuryr-libnetwork's option: its kuryr.conf keeps working.",
    ),
    cfg.StrOpt(
        "log_dir",
        default="",
        help="Directory of log_file; set alone, the log goes to <log_dir>/kuryr.log "
        "(kuryr serve), kuryr-cni-daemon.log or kuryr-k8s-controller.log.",
    ),
    cfg.StrOpt(
        "kuryr_uri",
        default="unix:///run/docker/plugins/kuryr.sock",
        help="Where the Docker plugin API listens: unix:///path/to.sock, or "
        "http://HOST:PORT (a spec file is then written to plugin_spec_dir). Empty: no "
        "Docker plugin on this host (a Kubernetes node): `kuryr status` skips the "
        "plugin's and dockerd's checks.",
    ),
    cfg.FloatOpt(
        "plugin_call_timeout",
        default=60.0,
        min=1.0,
        help="Seconds after which a Docker plugin call is answered with an error even "
        "though Neutron has not finished (Docker never times out a plugin call, so a "
        "hung Neutron would hang dockerd). Work that completes later is undone.",
    ),
    cfg.StrOpt(
        "socket_group",
        default="",
        help="Group given read/write access to the unix plugin socket (mode 0660). "
        "Empty: the socket is root-only (0600). Whoever can write to it can create "
        "Neutron ports with Kuryr's credentials.",
    ),
    cfg.StrOpt(
        "ssl_cert_file",
        default="",
        help="TLS certificate of the TCP plugin listener. A TCP kuryr_uri on an address "
        "other than loopback is refused unless ssl_cert_file, ssl_key_file and "
        "ssl_client_ca_file are all set.",
    ),
    cfg.StrOpt("ssl_key_file", default="", help="Private key of ssl_cert_file."),
    cfg.StrOpt(
        "ssl_client_ca_file",
        default="",
        help="CA that signed the client certificates the TCP listener accepts (dockerd's "
        "TLSConfig CertFile). Clients without such a certificate are refused.",
    ),
    cfg.StrOpt(
        "plugin_spec_dir",
        default="/etc/docker/plugins",
        help="Directory where a kuryr.spec file is written when kuryr_uri is TCP.",
    ),
    cfg.StrOpt(
        "docker_uri",
        default="unix:///var/run/docker.sock",
        help="Where the local dockerd's API listens (unix:///path.sock or tcp://HOST:PORT). "
        "Read by `kuryr status`, garbage collection and, for Neutron DNS, to learn "
        "container names from dockerd's events (Docker sends a remote driver none).",
    ),
    cfg.BoolOpt(
        "container_names_in_dns",
        default=True,
        help="Give each container's Neutron port the container's name as dns_name "
        "(sanitised to a DNS label; renames follow), so Neutron's DNS resolves it on "
        "the network. Needs Neutron's dns-integration extension and dockerd at docker_uri.",
    ),
    cfg.StrOpt(
        "capability_scope",
        default="local",
        choices=["local", "global"],
        help="Scope Kuryr reports to Docker in GetCapabilities.",
    ),
    cfg.StrOpt(
        "local_default_address_space",
        default="no_address_space",
        help="Default local address space returned to Docker's IPAM.",
    ),
    cfg.StrOpt(
        "global_default_address_space",
        default="no_address_space",
        help="Default global address space returned to Docker's IPAM.",
    ),
    cfg.BoolOpt(
        "process_external_connectivity",
        default=True,
        help="Handle ProgramExternalConnectivity (published and exposed ports).",
    ),
    cfg.StrOpt(
        "subnetpool_name_prefix",
        default="kuryrPool",
        help="Prefix of the names of subnetpools Kuryr creates for user subnets.",
    ),
    cfg.StrOpt(
        "host",
        help="Host name used as binding:host_id of ports; defaults to the machine's "
        "host name. Must match the name the local OVN chassis / agent reports.",
    ),
    cfg.StrOpt(
        "port_driver",
        default="veth",
        choices=[("veth", ("a veth pair into the host's switch (OVS or a Linux bridge, as "
                  "Neutron's binding says)")),
                 ("nested-vlan", ("containers inside a VM: each port a sub-port of the VM "
                  "port's trunk with a VLAN id of its own ([binding] vlan_tagging)")),
                 ("nested-macvlan", ("containers inside a VM: each port's addresses in the VM "
                  "port's allowed address pairs, an ipvlan (L2) device on [binding] "
                  "link_iface"))],
        help="How container ports are wired.  The nested drivers run Kuryr inside an "
        "OpenStack VM with the VM's own (non-admin) credentials; see docs/nested.md.",
    ),
    cfg.StrOpt(
        "docker_netns_dir",
        default="/var/run/docker/netns",
        help="Where dockerd keeps container network namespaces (<exec-root>/netns); "
        "Join's SandboxKey must name a file in it, and it is used to find running "
        "containers again after a Kuryr restart.",
    ),
    cfg.StrOpt(
        "state_dir",
        default="/var/lib/kuryr",
        help="Directory for Kuryr's local files (never the source of truth: Neutron is).",
    ),
]

neutron_opts = [
    cfg.StrOpt(
        "cloud",
        help="Take credentials from this clouds.yaml entry instead of the options below.",
    ),
    cfg.StrOpt(
        "default_subnetpool_v4",
        default="kuryr",
        help="Neutron subnetpool used when a network is created without --subnet.",
    ),
    cfg.StrOpt(
        "default_subnetpool_v6",
        default="kuryr6",
        help="Neutron IPv6 subnetpool used when an IPv6 network has no --subnet.",
    ),
    cfg.StrOpt(
        "default_subnetpool_v4_prefix",
        default="10.10.0.0/16",
        help="Prefix Kuryr gives the default IPv4 pool when it has to create it.",
    ),
    cfg.StrOpt(
        "default_subnetpool_v6_prefix",
        default="fd0a:6b75:7279::/48",
        help="Prefix Kuryr gives the default IPv6 pool when it has to create it.",
    ),
    cfg.BoolOpt(
        "vif_plugging_is_fatal",
        default=True,
        help="Fail Join when the port is not wired within vif_plugging_timeout.",
    ),
    cfg.IntOpt(
        "vif_plugging_timeout",
        default=30,
        min=0,
        help="Seconds to wait for a container's port to be wired before Join returns.",
    ),
    cfg.BoolOpt(
        "enable_dhcp",
        default=False,
        help="Enable DHCP on subnets Kuryr creates (containers get their address from Docker).",
    ),
    cfg.FloatOpt(
        "request_timeout",
        default=30.0,
        help="Seconds before one Neutron request is abandoned, so a hung Neutron never "
        "hangs dockerd (Docker has no timeout of its own for plugin calls).",
    ),
]

binding_opts = [
    cfg.StrOpt(
        "default_driver",
        default="kuryr.lib.binding.drivers.veth",
        help="Accepted for compatibility with kuryr-lib; the VIF type Neutron reports "
        "(ovs, bridge) decides how a veth is plugged.",
    ),
    cfg.ListOpt(
        "enabled_drivers",
        default=["kuryr.lib.binding.drivers.veth"],
        help="Accepted for compatibility with kuryr-lib.",
    ),
    cfg.StrOpt(
        "veth_dst_prefix",
        default="eth",
        help="Interface name prefix inside the container.",
    ),
    cfg.StrOpt(
        "link_iface",
        default="",
        help="Nested drivers: the VM's interface on its own Neutron port (e.g. eth0). "
        "Its MAC finds the VM's port unless [binding] parent_port names it; kernel devices "
        "(802.1Q, ipvlan) are made on it.",
    ),
    cfg.StrOpt(
        "parent_port",
        default="",
        help="Nested drivers: the VM's own Neutron port (id or name); empty: the port "
        "with link_iface's MAC.",
    ),
    cfg.StrOpt(
        "vlan_tagging",
        default="kernel",
        choices=[("kernel", "an 802.1Q device per container on link_iface"),
                 ("ovs", ("a veth per container, its VM end an access port of the "
                  "sub-port's VLAN on the VM's own Open vSwitch bridge ovs_bridge, which "
                  "also holds link_iface (for VMs that run OVS, or kernels without 802.1Q)"))],
        help="nested-vlan: who tags a container's frames with its sub-port's VLAN id.",
    ),
    cfg.StrOpt(
        "pairs_device",
        default="ipvlan",
        choices=[("ipvlan", "an ipvlan (L2 mode) device per container on link_iface"),
                 ("routed-veth", ("a veth per container; the VM routes the container's "
                  "address to it and answers ARP for it on link_iface (proxy ARP, IPv4 "
                  "only; sets net.ipv4.ip_forward in the VM): for kernels without ipvlan"))],
        help="nested-macvlan: the container's interface. Either way its frames carry "
        "the VM port's MAC: Neutron 29 with OVN refuses other MACs than VRRP ones in "
        "allowed address pairs.",
    ),
    cfg.StrOpt(
        "ovs_bridge",
        default="br-int",
        help="Integration bridge used when Neutron's binding does not name one.",
    ),
    cfg.StrOpt(
        "ovsdb_connection",
        default="unix:/run/openvswitch/db.sock",
        help="OVSDB endpoint of the local Open vSwitch.",
    ),
]


publish_opts = [
    cfg.StrOpt(
        "floating_ip_network",
        default="",
        help="Also publish -p ports through Neutron: a floating IP on this external "
        "network (name or id) with one port forwarding per published port, so they are "
        "reachable from outside the host. Kuryr attaches the container's subnet to a "
        "router with its gateway on this network. Empty: host-only publishing.",
    ),
    cfg.StrOpt(
        "router_name",
        default="kuryr-publish",
        help="Router Kuryr creates (or reuses) for floating-IP publishing.",
    ),
    cfg.StrOpt(
        "default_host_ip",
        default="",
        help="Address a port published without one (-p 8080:80) listens on, as "
        "dockerd's \"ip\" (daemon.json) does for its bridge driver, e.g. 127.0.0.1 to "
        "keep such ports on this host. Empty: every address, Docker's default. Only "
        "ports published on every address are also forwarded on the floating IP.",
    ),
    cfg.IntOpt(
        "max_connections_per_port",
        default=256,
        min=1,
        help="Concurrent TCP connections (or UDP peers) one published port serves; "
        "further ones are refused (TCP) or replace the least recently active peer "
        "(UDP), with a log line.",
    ),
    cfg.IntOpt(
        "max_connections",
        default=2048,
        min=1,
        help="Concurrent TCP connections and UDP peers of all published ports together. "
        "Each takes two descriptors (one for UDP) in Kuryr's process; Kuryr raises its "
        "descriptor limit to fit them and keeps a reserve for the plugin, or lowers "
        "this when the hard limit is too low (logged at start).",
    ),
    cfg.IntOpt(
        "tcp_idle_timeout",
        default=3600,
        min=1,
        help="Seconds a published TCP connection may carry no data in either direction "
        "before both sides are closed (TCP keepalive finds dead peers sooner).",
    ),
    cfg.IntOpt(
        "udp_idle_timeout",
        default=60,
        min=1,
        help="Seconds after which a UDP peer of a published port that sent or received "
        "nothing is forgotten and its upstream socket closed.",
    ),
]


pool_opts = [
    cfg.IntOpt(
        "size",
        default=3,
        min=0,
        deprecated_name="ports_per_network",
        help="Ports kept ready (created, bound to this host and plugged) for each "
        "Kuryr network, so a container start makes no Neutron request. 0 disables: "
        "one Neutron port per container and nothing else, as kuryr-libnetwork. "
        "A network can override it with -o kuryr.pool.size=N.",
    ),
    cfg.FloatOpt(
        "wait_for_refill",
        default=0.0,
        min=0.0,
        help="Seconds an address request that finds the pool empty waits for the next "
        "bulk refill before creating a port of its own. 0 (measured fastest for bursts "
        "on a busy Neutron): create at once.",
    ),
]


kubernetes_opts = [
    cfg.StrOpt(
        "kubeconfig",
        default="",
        help="kubeconfig file of the API server (the controller and the CNI daemon). "
        "Empty: the in-cluster service account (KUBERNETES_SERVICE_HOST and the "
        "mounted token).",
    ),
    cfg.StrOpt(
        "node_name",
        default="",
        help="This node's name in Kubernetes; empty: [DEFAULT] host (as kubelet "
        "defaults its node name to the host name).",
    ),
    cfg.StrOpt(
        "pod_network_driver",
        default="shared",
        choices=[("shared", "every pod on one Neutron network, pod_network"),
                 ("namespace", ("a Neutron network and subnet per Kubernetes namespace, "
                                "made by the controller from pod_subnetpool"))],
        help="Where pods' ports are made.",
    ),
    cfg.StrOpt(
        "pod_network",
        default="",
        help="shared driver: the Neutron network (name or UUID) of every pod; it must "
        "have one IPv4 subnet.",
    ),
    cfg.StrOpt(
        "pod_subnetpool",
        default="",
        help="namespace driver: the subnetpool (name or UUID) namespaces' subnets come from.",
    ),
    cfg.IntOpt(
        "pod_subnet_prefixlen",
        default=24,
        min=8,
        max=30,
        help="namespace driver: the prefix length of each namespace's subnet.",
    ),
    cfg.StrOpt(
        "pod_router",
        default="",
        help="namespace driver: the Neutron router (name or UUID) every namespace's "
        "subnet is attached to, so pods of different namespaces (and the host's "
        "probe port) reach each other.",
    ),
    cfg.FloatOpt(
        "namespace_network_wait",
        default=10.0,
        min=0.0,
        max=60.0,
        help="namespace driver, CNI daemon: seconds an ADD waits for its namespace's "
        "network annotation (the controller writes it) before answering CNI error 11, "
        "try again later.",
    ),
    cfg.StrOpt(
        "node_network",
        default="",
        help="namespace driver, CNI daemon: the Neutron network (name or UUID, one IPv4 "
        "subnet whose gateway is pod_router's interface) of the node's own port, so "
        "kubelet's probes reach pods of every namespace: the host routes "
        "pod_subnetpool's prefixes via that gateway. Empty: no node port (probes from "
        "the host do not reach pods).",
    ),
    cfg.ListOpt(
        "pod_security_groups",
        default=[],
        help="Security groups (UUIDs) of every pod port; empty: the project's default group.",
    ),
    cfg.ListOpt(
        "pod_probe_cidrs",
        default=[],
        help="Addresses (CIDRs) kubelet's probes come from, beyond the nodes' own ports "
        "on the pod network (found in Neutron at start): the controller lets them into "
        "every pod a NetworkPolicy isolates.",
    ),
    cfg.IntOpt(
        "pool_size",
        default=10,
        min=0,
        help="Ports kept ready on this node for each pod network (created, bound and "
        "plugged), so a pod's ADD makes no Neutron request. Size it for the node's "
        "largest burst of pod starts: the pods of a burst beyond it wait for a bulk "
        "refill. A network tagged kuryr.pool.size:N in Neutron overrides it. "
        "[pool] size is Docker's.",
    ),
    cfg.FloatOpt(
        "wait_for_refill",
        default=15.0,
        min=0.0,
        help="Seconds a pod's ADD that finds the pool empty waits for the next refill "
        "before creating a port of its own: a burst of pods is then served by a few bulk "
        "creates (one POST for many ports) instead of one POST per pod on Neutron's "
        "critical path. [pool] wait_for_refill is Docker's.",
    ),
    cfg.FloatOpt(
        "defer_writes_during_starts",
        default=10.0,
        min=0.0,
        help="Seconds at most that Neutron writes no pod start waits for (a pod's "
        "record on its port, a pool refill nobody waits on) are held while pods start "
        "on this node, so a burst gets the node's CPU and Neutron's attention; they run "
        "once no ADD has been in flight for 3 seconds. A pod's NetworkPolicy groups "
        "follow its record: up to this much later during a burst. 0: write at once.",
    ),
    cfg.StrOpt(
        "service_subnet",
        default="",
        help="The Neutron subnet (name or UUID) of Services' cluster IPs: its range "
        "holds the API server's --service-cluster-ip-range, and a router joins it to "
        "the pods' subnets. The controller makes each Service an Octavia load balancer "
        "whose VIP is the cluster IP ([octavia]). Empty: Services are not handled.",
    ),
    cfg.StrOpt(
        "external_network",
        default="",
        help="The external Neutron network (name or UUID) the floating IPs of Services "
        "of type LoadBalancer come from. Empty: such Services get no external address.",
    ),
    cfg.IntOpt(
        "controller_workers",
        default=4,
        min=1,
        help="Threads of the controller handling events (one object's events in order).",
    ),
    cfg.StrOpt(
        "daemon_socket",
        default="/run/kuryr/cni.sock",
        help="The CNI daemon's unix socket (root only); kuryr-cni's conflist names the same.",
    ),
]

octavia_opts = [
    cfg.StrOpt(
        "endpoint_override",
        default="",
        help="Octavia's URL (e.g. http://127.0.0.1:9876); empty: the 'load-balancer' "
        "endpoint of Keystone's catalog. Needed with [neutron] auth_type = none.",
    ),
    cfg.StrOpt(
        "provider",
        default="ovn",
        help="Octavia provider of Services' load balancers. Kuryr is tested with 'ovn' "
        "(no amphora VMs: the load balancer is OVN's own, up in about 2 seconds).",
    ),
]

gc_opts = [
    cfg.IntOpt(
        "interval",
        default=300,
        min=0,
        help="Seconds between garbage collections of what this host's Kuryr left behind "
        "(ports, veths, OVS ports, security groups of containers that are gone). "
        "0: only at start-up and with `kuryr gc`.",
    ),
    cfg.IntOpt(
        "grace",
        default=120,
        min=0,
        help="Leave anything younger than this many seconds alone: it may belong to a "
        "container that is starting right now.",
    ),
]


def _neutron_auth_opts() -> list[cfg.Opt]:
    """Keystoneauth session, adapter and auth-plugin options for [neutron]."""
    opts: list[cfg.Opt] = []
    opts += ks_loading.get_session_conf_options()
    opts += ks_loading.get_auth_common_conf_options()
    opts += ks_loading.get_adapter_conf_options(include_deprecated=False)
    # Options of the plugins users actually configure, so they show in the sample.
    for plugin in ("password", "v3applicationcredential", "none"):
        opts += ks_loading.get_auth_plugin_conf_options(plugin)
    return _unique(opts)


def _unique(opts: Iterable[cfg.Opt]) -> list[cfg.Opt]:
    seen: dict[str, cfg.Opt] = {}
    for opt in opts:
        seen.setdefault(opt.dest, opt)
    return list(seen.values())


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(core_opts)
    conf.register_opts(neutron_opts, group=NEUTRON_GROUP)
    conf.register_opts(binding_opts, group="binding")
    conf.register_opts(publish_opts, group="publish")
    conf.register_opts(pool_opts, group="pool")
    conf.register_opts(gc_opts, group="gc")
    conf.register_opts(kubernetes_opts, group="kubernetes")
    conf.register_opts(octavia_opts, group=OCTAVIA_GROUP)
    ks_loading.register_session_conf_options(conf, NEUTRON_GROUP)
    ks_loading.register_auth_conf_options(conf, NEUTRON_GROUP)
    ks_loading.register_adapter_conf_options(conf, NEUTRON_GROUP, include_deprecated=False)


class ConfigFileMissing(cfg.Error):
    """KURYR_CONFIG_FILE names a file that is not there (never a silent fallback)."""


def _explicit_config_file(args: Sequence[str]) -> bool:
    # The test oslo.config itself makes to ignore its default config files.
    return any(arg == "--config-file" or arg.startswith("--config-file=") for arg in args)


def default_config_files() -> list[str]:
    """The config files read when the command line names none.

    $KURYR_CONFIG_FILE when set (it must exist), else /etc/kuryr/kuryr.conf when it
    exists, else none.
    """
    named = os.environ.get(CONFIG_FILE_ENV)
    if named:
        if not Path(named).is_file():
            what = "is not a file" if Path(named).exists() else "does not exist"
            raise ConfigFileMissing(f"{CONFIG_FILE_ENV}={named}: {named} {what} (unset "
                                    f"{CONFIG_FILE_ENV} or name the file with --config-file)")
        return [named]
    return [DEFAULT_CONFIG_FILE] if Path(DEFAULT_CONFIG_FILE).exists() else []


def load(args: Sequence[str] = (), config_files: Sequence[str] | None = None) -> cfg.ConfigOpts:
    """Build a ConfigOpts from the command line and config files.

    ``--config-file`` in ``args`` wins; otherwise ``config_files``, where None means
    :func:`default_config_files` ($KURYR_CONFIG_FILE, else /etc/kuryr/kuryr.conf).
    Raises :class:`ConfigFileMissing` when $KURYR_CONFIG_FILE is used and names no file.
    """
    conf = cfg.ConfigOpts()
    register_opts(conf)
    if config_files is None:
        config_files = [] if _explicit_config_file(args) else default_config_files()
    conf(list(args), project="kuryr", default_config_files=list(config_files))
    return conf


def sources(conf: cfg.ConfigOpts) -> list[str]:
    """The config files ``conf`` was read from, in reading order, each saying where
    it came from (for `kuryr status`); [] when only built-in defaults apply."""
    files = [str(f) for f in conf.config_file]
    location = conf.get_location("config_file")
    if location is not None and location.location is cfg.Locations.command_line:
        origin = " (from --config-file)"
    elif files and files == [os.environ.get(CONFIG_FILE_ENV)]:
        origin = f" (from {CONFIG_FILE_ENV})"
    elif files == [DEFAULT_CONFIG_FILE]:
        origin = " (default)"
    else:
        origin = ""
    read = [f"{f}{origin}" for f in files]
    dirs = conf.config_dir
    for directory in [dirs] if isinstance(dirs, str) else dirs or []:
        # oslo.config reads every *.conf of a config dir, sorted, after the files.
        read += [f"{f} (from {directory})" for f in sorted(
            str(p) for p in Path(directory).expanduser().glob("*.conf"))]
    return read


def describe_sources(conf: cfg.ConfigOpts) -> str:
    """One line naming the config files read, e.g. for the top of `kuryr status`."""
    read = sources(conf)
    if read:
        return "config: " + ", ".join(read)
    return (f"config: none, built-in defaults only (no --config-file, {CONFIG_FILE_ENV} "
            f"unset, no {DEFAULT_CONFIG_FILE})")


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """Entry point for oslo-config-generator."""
    return [
        ("DEFAULT", list(core_opts)),
        (NEUTRON_GROUP, list(itertools.chain(neutron_opts, _neutron_auth_opts()))),
        ("binding", list(binding_opts)),
        ("publish", list(publish_opts)),
        ("pool", list(pool_opts)),
        ("gc", list(gc_opts)),
        ("kubernetes", list(kubernetes_opts)),
        (OCTAVIA_GROUP, list(octavia_opts)),
    ]
