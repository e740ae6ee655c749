"""Least privilege, proved against the real API server: every ServiceAccount
loraforge creates may do exactly what docs/security.md ("Permissions") lists,
nothing more and nothing less.

The tables in docs/security.md are the one statement of the need; this test
reads them. It renders the chart with helm in both scope modes, with and
without HA, applies its ServiceAccounts and RBAC, and compares what `kubectl
auth can-i --list` shows for the operator's ServiceAccount (in a workload
namespace, in the release namespace and in a namespace the chart never
mentions) and for the `helm test` pod's with the tables; the trainer's
identity is built by the operator's own builders and applied as the operator
(which proves the operator may grant it). What Kubernetes grants every
ServiceAccount is a table of its own, checked on a ServiceAccount bound to
nothing. Any permission beyond the tables fails, and so does a documented one
that is missing; a last test shows that an added `secrets` rule or a `*` is
caught."""

from __future__ import annotations

import json
import re
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from loraforge_operator.finetunejob import builders, contract
from tests.conftest import restricted_namespaces
from tests.finetunejob_cases import VALID_SPEC
from tests.kube import Kube

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "loraforge"
SECURITY_DOC = REPO / "docs" / "security.md"
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


# --- the documented need ---------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Permission:
    """One verb on one resource (as `kubectl auth can-i` names it: `jobs.batch`, `pods/status`), optionally
    on one object by name, or on one non-resource URL."""

    resource: str
    url: str
    name: str
    verb: str

    def __str__(self) -> str:
        what = self.url or self.resource + (f"/{self.name}" if self.name else "")
        return f"{self.verb} {what}"


@dataclass(frozen=True)
class Grant:
    """One row of a table in docs/security.md."""

    permissions: frozenset[Permission]
    where: str
    when: tuple[tuple[str, str], ...]  # chart values that must hold for the row to apply

    def applies(self, values: dict[str, str]) -> bool:
        unknown = [k for k, _ in self.when if k not in values]
        assert not unknown, f"docs/security.md names values this test does not set: {unknown}"
        return all(values[k] == v for k, v in self.when)


def _items(cell: str) -> list[str]:
    return [i.strip().strip("`").strip() for i in cell.split(",") if i.strip().strip("`").strip()]


def _resource(group: str, resource: str) -> str:
    """`finetunejobs/status` of `loraforge.io` -> `finetunejobs.loraforge.io/status`, as can-i prints it."""
    plural, _, sub = resource.partition("/")
    name = plural if group == "core" else f"{plural}.{group}"
    return f"{name}/{sub}" if sub else name


def _when(cell: str) -> tuple[tuple[str, str], ...]:
    if cell.strip() == "always":
        return ()
    out = []
    for item in _items(cell):
        key, _, value = item.partition("=")
        out.append((key, value or "true"))
    return tuple(out)


def documented() -> dict[str, list[Grant]]:
    """The tables of docs/security.md marked `<!-- rbac-table: NAME -->`, as grants."""
    lines = SECURITY_DOC.read_text().splitlines()
    tables: dict[str, list[Grant]] = {}
    for i, line in enumerate(lines):
        marker = re.fullmatch(r"<!-- rbac-table: ([a-z-]+) -->", line.strip())
        if not marker:
            continue
        header = [c.strip() for c in lines[i + 1].strip().strip("|").split("|")]
        grants = []
        for row in lines[i + 3 :]:
            if not row.startswith("|"):
                break
            cells = dict(zip(header, (c.strip() for c in row.strip().strip("|").split("|")), strict=True))
            group = cells["API group"].strip("`")
            perms = frozenset(
                Permission(_resource(group, r) if r else "", u, n, v)
                for r in _items(cells["resources"]) or [""]
                for u in _items(cells.get("non-resource URLs", "")) or [""]
                for n in _items(cells.get("resource names", "")) or [""]
                for v in _items(cells["verbs"])
            )
            assert perms, f"an empty row in docs/security.md's {marker[1]} table: {row}"
            grants.append(Grant(perms, cells.get("where", ""), _when(cells.get("when", "always"))))
        tables[marker[1]] = grants
    assert set(tables) == {"operator", "trainer", "helm-test", "everyone"}, sorted(tables)
    return tables


def expected(
    grants: list[Grant], applies_here: Callable[[str], bool], values: dict[str, str] | None = None
) -> set[Permission]:
    out = set()
    for g in grants:
        if g.applies(values or {}) and applies_here(g.where):
            out |= g.permissions
    return out


# --- what the API server says --------------------------------------------------------------------------

# `kubectl auth can-i --list --no-headers`: resource (empty for a URL), [URLs], [names], [verbs].
_LINE = re.compile(r"^(\S*)\s+\[([^\]]*)\]\s+\[([^\]]*)\]\s+\[([^\]]*)\]\s*$")


def can_i_list(kube: Kube, sa_namespace: str, sa: str, namespace: str) -> set[Permission]:
    """Everything `kubectl auth can-i --list` says the ServiceAccount may do in ``namespace``."""
    proc = kube.kubectl(
        "auth",
        "can-i",
        "--list",
        "--no-headers",
        f"--as=system:serviceaccount:{sa_namespace}:{sa}",
        "-n",
        namespace,
    )
    out = set()
    for line in proc.stdout.splitlines():
        if not line.strip():
            continue
        m = _LINE.match(line)
        assert m, f"a line of `kubectl auth can-i --list` this test cannot read: {line!r}"
        resource, urls, names, verbs = m.groups()
        for verb in verbs.split():
            for url in urls.split() or [""]:
                for name in names.split() or [""]:
                    out.add(Permission(resource, url, name, verb))
    return out


def assert_exactly(actual: set[Permission], want: set[Permission], who: str) -> None:
    extra = sorted(actual - want)
    missing = sorted(want - actual)
    assert not extra and not missing, (
        f"{who}:\n  granted beyond docs/security.md: {[str(p) for p in extra]}"
        f"\n  documented but not granted: {[str(p) for p in missing]}"
    )


# --- the chart, installed RBAC only ------------------------------------------------------------------------


@dataclass
class Install:
    release: str
    namespace: str
    operator_sa: str
    test_sa: str
    docs: list[dict[str, Any]]


@pytest.fixture(scope="module")
def spaces(kube: Kube) -> Iterator[dict[str, str]]:
    """The release namespace, two workload namespaces and one the chart never names."""
    prefixes = {"release": "lf-rbac-rel", "wl1": "lf-rbac-wl", "wl2": "lf-rbac-wl", "outside": "lf-rbac-out"}
    with restricted_namespaces(kube, prefixes) as names:
        yield names


@pytest.fixture
def install(kube: Kube, spaces: dict[str, str]) -> Iterator[Callable[..., Install]]:
    """Render the chart with values and apply its ServiceAccounts and RBAC (nothing else); the cluster-wide
    objects are deleted afterwards."""
    made: list[Install] = []

    def _install(values: dict[str, Any], edit: Callable[[list[dict]], None] | None = None) -> Install:
        release = f"lfrbac-{uuid.uuid4().hex[:6]}"
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            yaml.safe_dump(values, f)
            f.flush()
            out = kube.helm("template", release, str(CHART), "-n", spaces["release"], "-f", f.name).stdout
        docs = [d for d in yaml.safe_load_all(out) if d and d["kind"] in RBAC_KINDS]
        if edit:
            edit(docs)
        sas = [d for d in docs if d["kind"] == "ServiceAccount"]
        operator_sa = next(
            d for d in sas if d["metadata"]["labels"].get("app.kubernetes.io/component") == "operator"
        )
        test_sa = next(d for d in sas if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test")
        done = Install(
            release, spaces["release"], operator_sa["metadata"]["name"], test_sa["metadata"]["name"], docs
        )
        made.append(done)
        kube.apply(docs)
        return done

    yield _install
    for done in made:
        for d in done.docs:
            if d["kind"] in ("ClusterRole", "ClusterRoleBinding"):
                kube.kubectl("delete", d["kind"].lower(), d["metadata"]["name"], "--wait=false", check=False)


def _values(mode: str, ha: bool, spaces: dict[str, str]) -> dict[str, Any]:
    # In cluster mode workloadNamespaces only places NetworkPolicies: the operator may act anywhere.
    wl = [spaces["wl1"], spaces["wl2"]] if mode == "namespaces" else [spaces["wl1"]]
    return {"scope": {"mode": mode}, "workloadNamespaces": wl, "operator": {"ha": {"enabled": ha}}}


def _flat(mode: str, ha: bool) -> dict[str, str]:
    """The chart values the tables' `when` column names."""
    return {"scope.mode": mode, "operator.ha.enabled": str(ha).lower()}


# --- the tests ---------------------------------------------------------------------------------------------


def test_a_service_account_bound_to_nothing_holds_exactly_what_kubernetes_grants_everyone(
    kube: Kube, spaces: dict[str, str]
) -> None:
    ns = spaces["outside"]
    kube.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nobody"}}, namespace=ns)
    everyone = expected(documented()["everyone"], lambda where: True)
    assert_exactly(can_i_list(kube, ns, "nobody", ns), everyone, "a ServiceAccount bound to nothing")


@pytest.mark.parametrize("ha", [False, True], ids=["standalone", "ha"])
@pytest.mark.parametrize("mode", ["cluster", "namespaces"])
def test_the_operator_may_do_exactly_what_docs_security_lists(
    kube: Kube, spaces: dict[str, str], install: Callable[..., Install], mode: str, ha: bool
) -> None:
    tables = documented()
    chart = install(_values(mode, ha, spaces))
    values = _flat(mode, ha)
    everyone = expected(tables["everyone"], lambda where: True)
    workload = {spaces["wl1"], spaces["wl2"]} if mode == "namespaces" else set(spaces.values())

    for role, ns in spaces.items():

        def here(where: str, ns: str = ns) -> bool:
            assert where in ("cluster", "workload namespaces"), (
                f"unknown 'where' in the operator table: {where}"
            )
            return where == "cluster" or ns in workload

        want = everyone | expected(tables["operator"], here, values)
        got = can_i_list(kube, chart.namespace, chart.operator_sa, ns)
        assert_exactly(got, want, f"the operator ({mode}, ha={ha}) in the {role} namespace")
        if ns not in workload:
            # Outside its namespaces the operator may do nothing there: only the cluster-scoped rows remain.
            cluster_scoped = expected(tables["operator"], lambda where: where == "cluster", values)
            assert got - everyone == cluster_scoped, f"the operator may act in {role} ({ns})"

    def release_ns(where: str) -> bool:
        assert where == "release namespace", f"unknown 'where' in the helm-test table: {where}"
        return True

    want = everyone | expected(tables["helm-test"], release_ns)
    got = can_i_list(kube, chart.namespace, chart.test_sa, chart.namespace)
    assert_exactly(got, want, "the helm test pod")
    assert can_i_list(kube, chart.namespace, chart.test_sa, spaces["wl1"]) == everyone


def test_the_trainer_identity_the_operator_grants_may_do_exactly_what_docs_security_lists(
    kube: Kube, crds: None, spaces: dict[str, str], install: Callable[..., Install]
) -> None:
    chart = install(_values("cluster", False, spaces))
    ns = spaces["wl1"]
    ftj = {"apiVersion": "loraforge.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "tuned"}}
    kube.kubectl("create", "-n", ns, "-f", "-", input=json.dumps({**ftj, "spec": VALID_SPEC}))
    uid = kube.get("ftj", "tuned", "-n", ns)["metadata"]["uid"]
    owner = builders.Owner(name="tuned", namespace=ns, uid=uid)
    # Applied as the operator: Kubernetes lets it grant the Role only as it holds get/patch on ConfigMaps.
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": builders.trainer_rbac(owner)})
    kube.kubectl(
        "apply",
        "--server-side",
        "--field-manager=loraforge-operator",
        f"--as=system:serviceaccount:{chart.namespace}:{chart.operator_sa}",
        "-n",
        ns,
        "-f",
        "-",
        input=body,
    )
    tables = documented()
    everyone = expected(tables["everyone"], lambda where: True)

    def own_namespace(where: str) -> bool:
        assert where == "the FineTuneJob's namespace", f"unknown 'where' in the trainer table: {where}"
        return True

    trainer = {
        Permission(p.resource, p.url, p.name.replace("<name>", "tuned"), p.verb)
        for p in expected(tables["trainer"], own_namespace)
    }
    assert {p.name for p in trainer} == {contract.progress_map_name("tuned")}
    sa = contract.trainer_identity("tuned")
    assert_exactly(can_i_list(kube, ns, sa, ns), everyone | trainer, "the trainer")
    assert_exactly(can_i_list(kube, ns, sa, spaces["outside"]), everyone, "the trainer outside its namespace")


def test_a_permission_more_or_less_fails_the_comparison(
    kube: Kube, spaces: dict[str, str], install: Callable[..., Install]
) -> None:
    """What the tests above would say if someone gave the operator Secrets, or everything, and took its
    Events away."""

    def edit(docs: list[dict[str, Any]]) -> None:
        role = next(
            d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith("-operator")
        )
        role["rules"] = [r for r in role["rules"] if r["resources"] != ["events"]]
        role["rules"] += [
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
            {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
        ]

    chart = install(_values("cluster", False, spaces), edit)
    tables = documented()
    want = expected(tables["everyone"], lambda where: True) | expected(
        tables["operator"], lambda where: True, _flat("cluster", False)
    )
    got = can_i_list(kube, chart.namespace, chart.operator_sa, spaces["wl1"])
    assert got - want == {Permission("secrets", "", "", "get"), Permission("*.*", "", "", "*")}
    assert want - got == {Permission("events", "", "", "create")}
    with pytest.raises(
        AssertionError, match=r"granted beyond docs/security.md: \['\* \*\.\*', 'get secrets'\]"
    ):
        assert_exactly(got, want, "the operator")
