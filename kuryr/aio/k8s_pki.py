"""The all-in-one cluster's certificates and kubeconfigs.

One CA signs the API server's serving certificate and a client certificate
per identity (admin, kubelet, controller-manager, scheduler, Kuryr); the
API server trusts that CA for clients (`--client-ca-file`).  One more key
pair signs service-account tokens.  Everything lives in 0700 directories,
keys 0600, and is made once: a later `up` reuses it (`down --purge` wipes it).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

VALID_FOR = datetime.timedelta(days=3650)


@dataclass(frozen=True)
class Identity:
    """A client of the API server: its file name, user name (CN) and groups (O)."""

    name: str
    user: str
    groups: tuple[str, ...] = ()


def identities(node: str) -> tuple[Identity, ...]:
    return (
        Identity("admin", "kuryr-aio-admin", ("system:masters",)),
        Identity("kubelet", f"system:node:{node}", ("system:nodes",)),
        Identity("controller-manager", "system:kube-controller-manager"),
        Identity("scheduler", "system:kube-scheduler"),
        Identity("kuryr", "kuryr"),
        # What the API server presents to kubelets (logs, exec).
        Identity("apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                 ("system:masters",)),
    )


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    path.chmod(0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common: str, groups: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)


class Pki:
    def __init__(self, directory: Path, node: str, service_ip: str) -> None:
        self.dir = directory
        self.node = node
        self.service_ip = service_ip

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "service-account.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "service-account.pub"

    @property
    def serving_cert(self) -> Path:
        return self.dir / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.dir / "apiserver.key"

    @property
    def kubelet_serving_cert(self) -> Path:
        return self.dir / "kubelet-serving.crt"

    @property
    def kubelet_serving_key(self) -> Path:
        return self.dir / "kubelet-serving.key"

    def cert(self, who: str) -> Path:
        return self.dir / f"{who}.crt"

    def key(self, who: str) -> Path:
        return self.dir / f"{who}.key"

    def kubeconfig(self, who: str) -> Path:
        return self.dir / f"{who}.kubeconfig"

    def files(self) -> list[Path]:
        made = [self.ca_cert, self.ca_key, self.sa_key, self.sa_pub,
                self.serving_cert, self.serving_key,
                self.kubelet_serving_cert, self.kubelet_serving_key]
        for ident in identities(self.node):
            made += [self.cert(ident.name), self.key(ident.name), self.kubeconfig(ident.name)]
        return made

    def missing(self) -> list[Path]:
        return [p for p in self.files() if not p.exists()]

    def make(self, server: str) -> None:
        """Make whatever is missing (all of it, when the CA is)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        if not self.ca_cert.exists() or not self.ca_key.exists():
            self._make_ca()
        ca_key = serialization.load_pem_private_key(self.ca_key.read_bytes(), None)
        ca = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        if not self.sa_key.exists() or not self.sa_pub.exists():
            self._make_service_account_keys()
        if not self.serving_cert.exists() or not self.serving_key.exists():
            self._issue(ca, ca_key, self.serving_cert, self.serving_key,
                        _name("kube-apiserver"), server_names=self._server_names())
        if not self.kubelet_serving_cert.exists() or not self.kubelet_serving_key.exists():
            # The API server checks kubelet's certificate (exec, logs) against the CA.
            self._issue(ca, ca_key, self.kubelet_serving_cert, self.kubelet_serving_key,
                        _name(f"system:node:{self.node}", ("system:nodes",)),
                        server_names=self._kubelet_names())
        for ident in identities(self.node):
            if not self.cert(ident.name).exists() or not self.key(ident.name).exists():
                self._issue(ca, ca_key, self.cert(ident.name), self.key(ident.name),
                            _name(ident.user, ident.groups))
            self._write_kubeconfig(ident.name, server)

    def _server_names(self) -> list[x509.GeneralName]:
        names: list[x509.GeneralName] = [
            x509.DNSName(n) for n in ("localhost", "kubernetes", "kubernetes.default",
                                      "kubernetes.default.svc",
                                      "kubernetes.default.svc.cluster.local", self.node)]
        names += [x509.IPAddress(ipaddress.ip_address(a))
                  for a in ("127.0.0.1", self.service_ip)]
        return names

    def _kubelet_names(self) -> list[x509.GeneralName]:
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in (self.node, "localhost")]
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "127.0.1.1")]
        return names

    def _make_ca(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = _name("kuryr-aio-kubernetes-ca")
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(_now()).not_valid_after(_now() + VALID_FOR)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False),
                    critical=True)
                .sign(key, hashes.SHA256()))
        _write_private(self.ca_key, _key_pem(key))
        self.ca_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def _make_service_account_keys(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_private(self.sa_key, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()))
        self.sa_pub.write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    def _issue(self, ca: x509.Certificate, ca_key: object, cert_path: Path, key_path: Path,
               subject: x509.Name, server_names: list[x509.GeneralName] | None = None) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        usage = (x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server_names
                 else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(_now()).not_valid_after(_now() + VALID_FOR)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if server_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(server_names),
                                            critical=False)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)  # noqa: S101 - made above
        cert = builder.sign(ca_key, hashes.SHA256())
        _write_private(key_path, _key_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def _write_kubeconfig(self, who: str, server: str) -> None:
        # JSON is YAML: client-go, kubectl and lightkube all read it.
        doc = {
            "apiVersion": "v1", "kind": "Config", "current-context": "kuryr-aio",
            "clusters": [{"name": "kuryr-aio", "cluster": {
                "server": server, "certificate-authority": str(self.ca_cert)}}],
            "users": [{"name": who, "user": {
                "client-certificate": str(self.cert(who)),
                "client-key": str(self.key(who))}}],
            "contexts": [{"name": "kuryr-aio", "context": {
                "cluster": "kuryr-aio", "user": who}}],
        }
        _write_private(self.kubeconfig(who), json.dumps(doc, indent=1).encode())
