"""Pins are read from one file and turned into a buildable wrapper go.mod."""

from __future__ import annotations

import pytest

from localcluster.build import BuildError, kube_gomod, staging_replaces
from localcluster.versions import load_versions, parse_versions

GOOD = """
# comment
KUBERNETES_VERSION=v1.36.3
ETCD_VERSION=v3.6.8
KWOK_VERSION=v0.8.0
HELM_VERSION=v4.3.1
METRICS_SERVER_VERSION=v0.9.0
"""


def test_the_repository_pins_a_recent_kubernetes_and_a_supported_etcd() -> None:
    v = load_versions()
    major, minor, _ = (int(x) for x in v.kubernetes.lstrip("v").split("."))
    assert (major, minor) >= (1, 34)
    assert tuple(int(x) for x in v.etcd.lstrip("v").split(".")[:2]) >= (3, 5)  # Debian's 3.4 is too old


def test_parse_versions_reads_every_pin() -> None:
    v = parse_versions(GOOD)
    assert (v.kubernetes, v.etcd, v.kwok, v.helm, v.metrics_server) == (
        "v1.36.3",
        "v3.6.8",
        "v0.8.0",
        "v4.3.1",
        "v0.9.0",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("v3.6.8", "3.6.8"), "versions.env:4: ETCD_VERSION must be a release tag"),
        (GOOD + "GO_VERSION=v1.26.0\n", "versions.env:8: expected one of"),
        (GOOD.replace("HELM_VERSION=v4.3.1", ""), "missing HELM_VERSION"),
    ],
)
def test_parse_versions_names_the_bad_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_versions(text)


KUBERNETES_GOMOD = """module k8s.io/kubernetes

go 1.26.0

require (
	k8s.io/api v0.0.0
	k8s.io/client-go v0.0.0
)

replace (
	k8s.io/api => ./staging/src/k8s.io/api
	k8s.io/client-go => ./staging/src/k8s.io/client-go
	k8s.io/kube-scheduler => ./staging/src/k8s.io/kube-scheduler
	github.com/some/fork => github.com/other/fork v1.2.3
)
"""


def test_each_staging_module_is_pinned_to_the_matching_v0_tag() -> None:
    assert staging_replaces(KUBERNETES_GOMOD, "v1.36.3") == [
        ("k8s.io/api", "v0.36.3"),
        ("k8s.io/client-go", "v0.36.3"),
        ("k8s.io/kube-scheduler", "v0.36.3"),
    ]


def test_staging_replaces_rejects_a_non_release_kubernetes_version() -> None:
    with pytest.raises(BuildError, match=r"v1\.Y\.Z"):
        staging_replaces(KUBERNETES_GOMOD, "master")


def test_wrapper_gomod_requires_kubernetes_and_replaces_staging_with_tags() -> None:
    text = kube_gomod("v1.36.3", [("k8s.io/api", "v0.36.3")], "1.26.0")
    assert "require k8s.io/kubernetes v1.36.3" in text
    assert "\tk8s.io/api => k8s.io/api v0.36.3" in text
    assert "go 1.26.0" in text
    assert "./staging" not in text
