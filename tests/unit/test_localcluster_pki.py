"""The local cluster's PKI: every certificate chains to the CA, each component
has its own identity, and kubeconfigs are self-contained."""

from __future__ import annotations

import base64
import ipaddress
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from localcluster import pki


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    pki.generate(d)
    return d


def _cert(d: Path, stem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((d / f"{stem}.crt").read_bytes())


def test_every_leaf_certificate_is_signed_by_its_ca(pki_dir: Path) -> None:
    ca = _cert(pki_dir, "ca")
    for stem in ["apiserver", "etcd-server", "apiserver-etcd-client", *(c.file_stem for c in pki.CLIENTS)]:
        leaf = _cert(pki_dir, stem)
        leaf.verify_directly_issued_by(ca)  # raises if not
    _cert(pki_dir, "front-proxy-client").verify_directly_issued_by(_cert(pki_dir, "front-proxy-ca"))


def test_apiserver_certificate_covers_loopback_and_in_cluster_names(pki_dir: Path) -> None:
    cert = _cert(pki_dir, "apiserver")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address(pki.KUBERNETES_SERVICE_IP) in san.get_values_for_type(x509.IPAddress)
    assert "kubernetes.default.svc" in san.get_values_for_type(x509.DNSName)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku


def test_components_have_their_own_identities(pki_dir: Path) -> None:
    def subject(stem: str) -> tuple[str, list[str]]:
        name = _cert(pki_dir, stem).subject
        cn = name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        orgs = [a.value for a in name.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
        return cn, orgs

    assert subject("kube-scheduler") == ("system:kube-scheduler", [])
    assert subject("kube-controller-manager") == ("system:kube-controller-manager", [])
    assert subject("admin")[1] == ["system:masters"]


def test_private_keys_are_readable_only_by_their_owner(pki_dir: Path) -> None:
    for key in pki_dir.glob("*.key"):
        assert key.stat().st_mode & 0o077 == 0, key.name


def test_generate_keeps_an_existing_pki(pki_dir: Path) -> None:
    before = (pki_dir / "ca.crt").read_bytes()
    pki.generate(pki_dir)
    assert (pki_dir / "ca.crt").read_bytes() == before


def test_kubeconfig_embeds_the_ca_and_the_clients_key_pair(pki_dir: Path) -> None:
    cfg = yaml.safe_load(pki.kubeconfig("https://127.0.0.1:6443", pki_dir, "admin"))
    cluster = cfg["clusters"][0]["cluster"]
    user = cfg["users"][0]["user"]
    assert cluster["server"] == "https://127.0.0.1:6443"
    assert base64.b64decode(cluster["certificate-authority-data"]) == (pki_dir / "ca.crt").read_bytes()
    assert base64.b64decode(user["client-certificate-data"]) == (pki_dir / "admin.crt").read_bytes()
    assert cfg["current-context"] == cfg["contexts"][0]["name"]
    # The sa key is what the API server signs ServiceAccount tokens with.
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    assert isinstance(
        load_pem_private_key((pki_dir / "sa.key").read_bytes(), None), ec.EllipticCurvePrivateKey
    )
