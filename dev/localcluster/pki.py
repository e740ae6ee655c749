"""Certificates and keys for the local control plane.

One CA signs every serving and client certificate, as kubeadm does, so TLS is
on everywhere (etcd included) and each component has its own identity:
RBAC sees ``system:kube-controller-manager`` and ``system:kube-scheduler``,
not an all-powerful shared credential. ECDSA P-256 keys keep generation
instant. Everything is generated once per cluster state directory.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# A local cluster lives for hours; a year keeps a long-lived dev cluster
# working without rotation logic in a test harness.
VALIDITY = dt.timedelta(days=365)

# The first address of the service CIDR: the in-cluster `kubernetes` Service.
KUBERNETES_SERVICE_IP = "10.96.0.1"
APISERVER_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


@dataclass(frozen=True)
class ClientIdentity:
    """A client certificate: CN is the user, O the groups (Kubernetes x509 authn)."""

    file_stem: str
    common_name: str
    organizations: tuple[str, ...] = ()


# Who talks to the API server, and as whom.
CLIENTS = (
    ClientIdentity("admin", "loraforge-admin", ("system:masters",)),
    ClientIdentity("kube-controller-manager", "system:kube-controller-manager"),
    ClientIdentity("kube-scheduler", "system:kube-scheduler"),
    # kwok plays the kubelet of every fake node: it writes node and pod status,
    # leases and events across all namespaces, so it gets cluster-admin rights
    # (it is test tooling, never part of an installation).
    ClientIdentity("kwok", "kwok-controller", ("system:masters",)),
    # metrics-server: one identity towards the API server (RBAC in
    # manifests/metrics-server.yaml) and towards the local node's kubelet API.
    ClientIdentity("metrics-server", "system:metrics-server"),
)
# The aggregator checks an extension API server's certificate against its
# Service's name, <name>.<namespace>.svc.
METRICS_SERVER_DNS_NAME = "metrics-server.kube-system.svc"


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o600)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _builder(subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + VALIDITY)
    )


class CertificateAuthority:
    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey):
        self.cert = cert
        self.key = key

    @classmethod
    def create(cls, common_name: str) -> CertificateAuthority:
        key = _key()
        name = _name(common_name)
        cert = (
            _builder(name, name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    def issue(
        self,
        common_name: str,
        *,
        organizations: tuple[str, ...] = (),
        server: bool = False,
        client: bool = False,
        dns_names: tuple[str, ...] = (),
        ip_addresses: tuple[str, ...] = (),
    ) -> tuple[bytes, bytes]:
        """Return (cert PEM, key PEM) for a leaf certificate."""
        key = _key()
        usages = []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (
            _builder(_name(common_name, organizations), self.cert.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_encipherment=True,
                    content_commitment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ip_addresses]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return _cert_pem(cert), _key_pem(key)

    def write(self, folder: Path, stem: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{stem}.crt").write_bytes(_cert_pem(self.cert))
        _write_private(folder / f"{stem}.key", _key_pem(self.key))


def _write_pair(folder: Path, stem: str, pair: tuple[bytes, bytes]) -> None:
    (folder / f"{stem}.crt").write_bytes(pair[0])
    _write_private(folder / f"{stem}.key", pair[1])


def generate(pki_dir: Path) -> None:
    """Write the whole PKI into ``pki_dir`` (idempotent: an existing PKI is kept)."""
    marker = pki_dir / ".complete"
    if marker.exists():
        return
    pki_dir.mkdir(parents=True, exist_ok=True)

    ca = CertificateAuthority.create("loraforge-local-ca")
    ca.write(pki_dir, "ca")

    _write_pair(
        pki_dir,
        "apiserver",
        ca.issue(
            "kube-apiserver",
            server=True,
            dns_names=APISERVER_DNS_NAMES,
            ip_addresses=("127.0.0.1", KUBERNETES_SERVICE_IP),
        ),
    )
    # etcd: TLS with client-certificate auth, like a production control plane.
    _write_pair(
        pki_dir,
        "etcd-server",
        ca.issue("etcd", server=True, client=True, dns_names=("localhost",), ip_addresses=("127.0.0.1",)),
    )
    _write_pair(pki_dir, "apiserver-etcd-client", ca.issue("kube-apiserver-etcd-client", client=True))
    # The local node's kubelet API (kubectl logs), and the API server's identity towards it.
    _write_pair(
        pki_dir,
        "localnode-kubelet",
        ca.issue("system:node:local", server=True, dns_names=("local",), ip_addresses=("127.0.0.1",)),
    )
    _write_pair(pki_dir, "apiserver-kubelet-client", ca.issue("kube-apiserver-kubelet-client", client=True))
    _write_pair(
        pki_dir,
        "metrics-server-serving",
        ca.issue(
            "metrics-server", server=True, dns_names=(METRICS_SERVER_DNS_NAME,), ip_addresses=("127.0.0.1",)
        ),
    )
    for ident in CLIENTS:
        _write_pair(
            pki_dir,
            ident.file_stem,
            ca.issue(ident.common_name, organizations=ident.organizations, client=True),
        )

    # Aggregation layer (front proxy): its own CA, as Kubernetes requires, so
    # an extension API server (e.g. a custom-metrics adapter for the HPA) can
    # trust requests the API server proxies to it.
    front_ca = CertificateAuthority.create("loraforge-local-front-proxy-ca")
    front_ca.write(pki_dir, "front-proxy-ca")
    _write_pair(pki_dir, "front-proxy-client", front_ca.issue("front-proxy-client", client=True))

    # ServiceAccount token signing key pair (ES256).
    sa_key = _key()
    _write_private(pki_dir / "sa.key", _key_pem(sa_key))
    (pki_dir / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    marker.write_text("ok\n")


def kubeconfig(server: str, pki_dir: Path, stem: str, cluster_name: str = "loraforge-local") -> str:
    """A self-contained kubeconfig (certificates embedded) for client ``stem``."""

    def b64(name: str) -> str:
        return base64.b64encode((pki_dir / name).read_bytes()).decode()

    user = f"{cluster_name}-{stem}"
    return "\n".join(
        [
            "apiVersion: v1",
            "kind: Config",
            "clusters:",
            f"- name: {cluster_name}",
            "  cluster:",
            f"    server: {server}",
            f"    certificate-authority-data: {b64('ca.crt')}",
            "users:",
            f"- name: {user}",
            "  user:",
            f"    client-certificate-data: {b64(stem + '.crt')}",
            f"    client-key-data: {b64(stem + '.key')}",
            "contexts:",
            f"- name: {cluster_name}",
            "  context:",
            f"    cluster: {cluster_name}",
            f"    user: {user}",
            f"current-context: {cluster_name}",
            "",
        ]
    )
