"""Where the all-in-one stack keeps its files, sockets and PIDs."""

from __future__ import annotations

import os
import re
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

NEUTRON_VERSION = "29.0.0"
NEUTRON_PORT = 9696
# Keystone numbers its releases one ahead of Neutron: 30.0.0 is the same
# OpenStack release (2026.2) as neutron 29.0.0, built the same day.
KEYSTONE_VERSION = "30.0.0"
KEYSTONE_PORT = 5000
# Built from Debian 12's source package `kubernetes` (1.20.5+really1.20.2-...):
# the upstream release its binaries report, and the cache directory's name.
KUBERNETES_VERSION = "1.20.2"
# Octavia (the load-balancer API) of the same OpenStack release as neutron
# 29.0.0, with OVN's provider (`up --k8s`: Kuryr gives Services load balancers).
OCTAVIA_VERSION = "19.0.0"
OVN_OCTAVIA_PROVIDER_VERSION = "11.0.0"
OCTAVIA_PORT = 9876
OUTSIDE_NETNS = "kuryr-aio-outside"
# The "outside world" of the stack is a namespace on br-ex with no uplink;
# a documentation prefix (RFC 5737) keeps it from ever colliding with a real network.
PUBLIC_CIDR = "198.51.100.0/24"
PUBLIC_GATEWAY = "198.51.100.1"
PUBLIC_NETWORK = "public"
PHYSNET = "public"
# Every pod's Neutron network (`up --k8s`, [kubernetes] pod_network_driver = shared).
POD_NETWORK = "kuryr-aio-pods"
POD_CIDR = "10.244.0.0/16"
# The network (and subnet) of Services' VIPs, their cluster IPs (kubernetes.py).
SERVICE_NETWORK = "kuryr-aio-services"
# How Neutron checks its callers: "noauth" (the default; anyone on loopback is
# admin) or "keystone" (tokens from the stack's Keystone, Kuryr as a non-admin
# user).  `kuryr-aio up --keystone` / `--noauth` switch; plain `up` keeps it.
AUTH_MODES = ("noauth", "keystone")
# The run directory holds dockerd's socket (group docker): others may pass
# through to it but not list the directory.  What only root may reach (the
# logs, MariaDB's socket) is in directories of mode 0700.
RUN_DIR_MODE = 0o711
PRIVATE_DIR_MODE = 0o700


def make_dir(path: Path, mode: int) -> Path:
    """``path`` as a directory with exactly ``mode`` (mkdir's own mode is cut by
    the umask, and a directory made by an older kuryr-aio keeps its old one)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)
    return path


@dataclass(frozen=True)
class Layout:
    base: Path
    run: Path
    host: str

    @classmethod
    def default(cls) -> Layout:
        base = Path(os.environ.get("KURYR_AIO_DIR", "/var/lib/kuryr-aio"))
        run = Path(os.environ.get("KURYR_AIO_RUN", "/run/kuryr-aio"))
        cache = Path(os.environ.get("KURYR_AIO_CACHE", "/var/cache/kuryr-aio"))
        return cls(base=base, run=run, host=socket.gethostname(), cache=cache)

    @property
    def logs(self) -> Path:
        return self.base / "logs"

    def make_dirs(self) -> None:
        """The state, log and run directories, with modes that keep other local
        users out of the logs (the daemons' output) and MariaDB's socket."""
        self.base.mkdir(parents=True, exist_ok=True)
        make_dir(self.logs, PRIVATE_DIR_MODE)
        make_dir(self.run, RUN_DIR_MODE)
        make_dir(self.mysql_run, PRIVATE_DIR_MODE)

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def pidfile(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    # Open vSwitch / OVN keep their standard sockets so ovs-vsctl, ovn-nbctl
    # and Kuryr's own binding code work without extra flags.
    ovs_run: Path = Path("/run/openvswitch")
    ovn_run: Path = Path("/run/ovn")
    # Built software (Kubernetes): outside ``base``, so `down --purge` keeps it.
    cache: Path = Path("/var/cache/kuryr-aio")

    @property
    def ovs_db_sock(self) -> Path:
        return self.ovs_run / "db.sock"

    @property
    def nb_sock(self) -> Path:
        return self.ovn_run / "ovnnb_db.sock"

    @property
    def sb_sock(self) -> Path:
        return self.ovn_run / "ovnsb_db.sock"

    @property
    def mysql_run(self) -> Path:
        # MariaDB makes its socket world-writable; a 0700 directory around it
        # is what keeps other local users from even trying a password.
        return self.run / "mysql"

    @property
    def mysql_sock(self) -> Path:
        return self.mysql_run / "mysqld.sock"

    @property
    def secrets_dir(self) -> Path:
        """Per-install passwords (0700, files 0600): kept by `down`, wiped by `down --purge`."""
        return self.base / "secrets"

    def db_password_file(self, user: str) -> Path:
        return self.secrets_dir / f"mariadb-{user}.password"

    @property
    def links_file(self) -> Path:
        """Names of the network interfaces the stack made (`down` deletes only those)."""
        return self.base / "links-created"

    @property
    def neutron_dir(self) -> Path:
        return self.base / "neutron"

    @property
    def neutron_venv(self) -> Path:
        # Software, not state: kept by `down --purge` so the next `up` is quick.
        return self.base / "venvs" / f"neutron-{NEUTRON_VERSION}"

    @property
    def neutron_url(self) -> str:
        return f"http://127.0.0.1:{NEUTRON_PORT}"

    @property
    def keystone_dir(self) -> Path:
        return self.base / "keystone"

    @property
    def keystone_venv(self) -> Path:
        return self.base / "venvs" / f"keystone-{KEYSTONE_VERSION}"

    @property
    def keystone_url(self) -> str:
        return f"http://127.0.0.1:{KEYSTONE_PORT}"

    @property
    def octavia_dir(self) -> Path:
        return self.base / "octavia"

    @property
    def octavia_venv(self) -> Path:
        # Software, not state: in the cache, which `down --purge` leaves alone.
        return self.cache / "venvs" / f"octavia-{OCTAVIA_VERSION}"

    @property
    def octavia_url(self) -> str:
        return f"http://127.0.0.1:{OCTAVIA_PORT}"

    @property
    def auth_mode_file(self) -> Path:
        return self.base / "auth-mode"

    @property
    def auth_mode(self) -> str:
        """The persisted auth mode; "noauth" until `up --keystone` asked for another."""
        try:
            mode = self.auth_mode_file.read_text().strip()
        except FileNotFoundError:
            return "noauth"
        if mode not in AUTH_MODES:
            raise ValueError(f"{self.auth_mode_file}: unknown auth mode {mode!r} "
                             f"(expected one of {', '.join(AUTH_MODES)})")
        return mode

    @property
    def keystone_mode(self) -> bool:
        return self.auth_mode == "keystone"

    def set_auth_mode(self, mode: str) -> None:
        if mode not in AUTH_MODES:
            raise ValueError(f"unknown auth mode {mode!r}")
        self.base.mkdir(parents=True, exist_ok=True)
        self.auth_mode_file.write_text(f"{mode}\n")

    @property
    def docker_sock(self) -> Path:
        return self.run / "docker.sock"

    @property
    def docker_host(self) -> str:
        return f"unix://{self.docker_sock}"

    @property
    def kuryr_conf(self) -> Path:
        return self.base / "kuryr.conf"

    @property
    def kubernetes_dir(self) -> Path:
        """Kubernetes' source, build cache and log (`kuryr-aio build-k8s`)."""
        return self.cache / f"kubernetes-{KUBERNETES_VERSION}"

    @property
    def kubernetes_bin(self) -> Path:
        """kube-apiserver, kube-controller-manager, kube-scheduler, kubelet."""
        return self.kubernetes_dir / "bin"

    @property
    def k8s_dir(self) -> Path:
        """The cluster's state: certificates, etcd, containerd, kubelet (0700)."""
        return self.base / "k8s"

    @property
    def kubectl_dir(self) -> Path:
        """Debian's kubernetes-client unpacked (software: kept by --purge)."""
        return self.cache / "kubernetes-client"

    @property
    def cni_socket(self) -> Path:
        """Kuryr's CNI daemon (root only)."""
        return self.run / "kuryr-cni.sock"

    @property
    def k8s_rbac_stamp(self) -> Path:
        """Written once Kuryr's RBAC is applied (etcd is wiped with it by --purge)."""
        return self.k8s_dir / "rbac-applied"

    @property
    def k8s_mode_file(self) -> Path:
        return self.base / "k8s-enabled"

    @property
    def k8s_enabled(self) -> bool:
        """`up --k8s` was asked once: later `up`s keep the cluster running."""
        return self.k8s_mode_file.exists()

    @property
    def vms_state(self) -> Path:
        """The simulated VMs' own state (`kuryr-aio vm up`), one directory each."""
        return self.base / "vms"

    @property
    def vms_run(self) -> Path:
        return self.run / "vms"

    def vm(self, name: str) -> VmLayout:
        return VmLayout(self, name)

    @property
    def hosts_state(self) -> Path:
        """The simulated hosts' own state (`kuryr-aio host up`), one directory each."""
        return self.base / "hosts"

    @property
    def hosts_run(self) -> Path:
        return self.run / "hosts"

    def sim_host(self, name: str) -> HostLayout:
        return HostLayout(self, name)


# A machine's (VM's or host's) name becomes part of interface names (kvm-NAME,
# kul-NAME: 15 bytes at most) and paths: lower case letters, digits and dashes,
# 10 at most.
VM_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,9}")
VM_MODES = ("vlan", "macvlan")
NAMED_NETNS = Path("/run/netns")  # where `ip netns` (and pyroute2) keep named ones
# Paths a second dockerd or Open vSwitch uses whatever its own flags say: the
# Docker plugin directories (a VM's dockerd would find the host's Kuryr there),
# Open vSwitch's run directory (db.sock, unixctl sockets) and containerd's
# (its shims' sockets).  A VM's init process binds its own directory over each.
VM_PRIVATE_PATHS = ("/run/docker/plugins", "/etc/docker/plugins", "/usr/lib/docker/plugins",
                    "/run/openvswitch", "/run/containerd")
# The kinds of simulated machines: each has a network namespace kuryr-KIND-NAME.
MACHINE_KINDS = ("vm", "host")
MACHINE_NETNS = re.compile(
    rf"kuryr-(?P<kind>{'|'.join(MACHINE_KINDS)})-(?P<name>{VM_NAME.pattern})")
# A simulated host's hostname (its OVN chassis, Kuryr's [DEFAULT] host, ports'
# binding:host_id): may be long, as real FQDNs are; Neutron keeps 255.
HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
# The simulated hosts' underlay (Geneve between chassis), on a Linux bridge with
# no uplink: a prefix of RFC 2544's benchmarking range.  Not the documentation
# prefixes of RFC 5737: this very machine has TEST-NET-1 on its NIC and reaches
# its package registries at a TEST-NET-3 address (an underlay there took the
# route to them).  kuryr.aio.underlay refuses a prefix the machine uses.
UNDERLAY_CIDR = "198.18.0.0/24"
UNDERLAY_MTU = 1600  # a 1500-byte inner frame plus Geneve's headers
UNDERLAY_BRIDGE = "kuryr-ul"  # the Linux bridge in the root namespace
UNDERLAY_OVS_BRIDGE = "br-phy"  # each machine's netdev bridge holding its underlay IP
MAIN_UNDERLAY_INDEX = 1  # the main host's address in UNDERLAY_CIDR; hosts get the next


def check_machine_name(name: str, kind: str = "vm") -> str:
    if not VM_NAME.fullmatch(name):
        what = "VM" if kind == "vm" else kind
        raise ValueError(f"bad {what} name {name!r}: 1 to 10 of a-z, 0-9 and '-', "
                         "not starting with '-'")
    return name


def check_vm_name(name: str) -> str:
    return check_machine_name(name, "vm")


def check_host_name(name: str) -> str:
    return check_machine_name(name, "host")


def check_hostname(hostname: str) -> str:
    """A simulated host's hostname: letters, digits, '-' and '.'."""
    if not HOSTNAME.fullmatch(hostname):
        raise ValueError(f"bad hostname {hostname!r}: 1 to 253 of letters, digits, '-' "
                         "and '.', starting and ending with a letter or digit")
    return hostname


def machine_netns(kind: str, name: str) -> str:
    return f"kuryr-{kind}-{name}"


def vm_netns(name: str) -> str:
    return machine_netns("vm", name)


def check_machine_netns(netns: str) -> str:
    """The name of a simulated machine's network namespace (kuryr-vm-NAME,
    kuryr-host-NAME), which identifies the machine to its init and relay."""
    if not MACHINE_NETNS.fullmatch(netns):
        raise ValueError(f"bad machine namespace {netns!r}: kuryr-KIND-NAME, KIND one of "
                         f"{', '.join(MACHINE_KINDS)}")
    return netns


def machine_label(netns: str) -> str:
    """"vm t1" for kuryr-vm-t1: what messages call the machine."""
    match = MACHINE_NETNS.fullmatch(netns)
    return f"{match['kind']} {match['name']}" if match else netns


def vm_private_mounts(run_dir: Path) -> dict[Path, Path]:
    """Path seen inside the machine -> the machine's own directory bound over it."""
    return {Path(path): run_dir / "mounts" / path.strip("/").replace("/", "-")
            for path in VM_PRIVATE_PATHS}


def vm_init_ready(run_dir: Path) -> Path:
    """Written by the machine's init (its PID) once its mount namespace is complete."""
    return run_dir / "init.ready"


@dataclass(frozen=True)
class MachineLayout:
    """Where one simulated machine (VM or host) keeps its files, and the names
    it has on the host: its own namespaces, Open vSwitch, Kuryr and dockerd."""

    stack: Layout
    name: str
    kind = "vm"  # a class constant of each kind

    def __post_init__(self) -> None:
        check_machine_name(self.name, self.kind)

    @property
    def label(self) -> str:
        """What messages and status lines call it: "vm t1", "host h1"."""
        return f"{self.kind} {self.name}"

    @property
    def state(self) -> Path:
        """Kept by `KIND down`, wiped by `KIND down --purge`: Docker's data, kuryr.conf."""
        return self.stack.base / f"{self.kind}s" / self.name

    @property
    def run(self) -> Path:
        """PID files, sockets and the directories bound over VM_PRIVATE_PATHS."""
        return self.stack.run / f"{self.kind}s" / self.name

    @property
    def netns(self) -> str:
        return machine_netns(self.kind, self.name)

    @property
    def netns_path(self) -> Path:
        return NAMED_NETNS / self.netns

    def pidfile(self, process: str) -> Path:
        return self.run / f"{process}.pid"

    def log(self, process: str) -> Path:
        return self.stack.log(f"{self.kind}-{self.name}-{process}")

    @property
    def init_ready(self) -> Path:
        return vm_init_ready(self.run)

    def private_mounts(self) -> dict[Path, Path]:
        return vm_private_mounts(self.run)

    @property
    def ovs_run(self) -> Path:
        """The machine's /run/openvswitch."""
        return self.private_mounts()[Path("/run/openvswitch")]

    @property
    def plugin_socket(self) -> Path:
        """The machine's Kuryr: /run/docker/plugins/kuryr.sock inside it."""
        return self.private_mounts()[Path("/run/docker/plugins")] / "kuryr.sock"

    @property
    def docker_exec_root(self) -> Path:
        return self.run / "docker"

    @property
    def docker_netns_dir(self) -> Path:
        """Where the machine's dockerd keeps its containers' network namespaces."""
        return self.docker_exec_root / "netns"

    @property
    def docker_sock(self) -> Path:
        return self.run / "docker.sock"

    @property
    def docker_host(self) -> str:
        return f"unix://{self.docker_sock}"

    @property
    def kuryr_conf(self) -> Path:
        return self.state / "kuryr.conf"


@dataclass(frozen=True)
class VmLayout(MachineLayout):
    """A simulated VM: its NIC and Neutron port besides the machine's own."""

    kind = "vm"

    @property
    def host_ifname(self) -> str:
        """The host end of the VM's NIC (its other end is eth0 in the VM)."""
        return f"kvm-{self.name}"

    @property
    def neutron_name(self) -> str:
        """The name of the VM's Neutron port and trunk."""
        return f"kuryr-aio-vm-{self.name}"

    @property
    def device_id(self) -> str:
        """What Nova would put in the port's device_id: the instance's UUID."""
        return str(uuid.uuid5(uuid.NAMESPACE_DNS, self.neutron_name))

    @property
    def mode_file(self) -> Path:
        """Written by `vm up`: the VM exists (and in which mode) until `vm down`."""
        return self.state / "mode"


@dataclass(frozen=True)
class HostLayout(MachineLayout):
    """A simulated compute host: a chassis of the stack's OVN, not a Neutron port."""

    kind = "host"

    @property
    def underlay_ifname(self) -> str:
        """The root namespace's end of its underlay veth (on UNDERLAY_BRIDGE)."""
        return f"kul-{self.name}"

    @property
    def up_file(self) -> Path:
        """Written by `host up`, removed by `host down`: the host exists (status
        lists it, `kuryr-aio down` powers it off)."""
        return self.state / "up"

    @property
    def hostname_file(self) -> Path:
        """Its hostname, chosen at creation, kept until `host down --purge`."""
        return self.state / "hostname"

    @property
    def underlay_file(self) -> Path:
        """Its underlay address, allocated at creation, kept until --purge."""
        return self.state / "underlay-ip"
