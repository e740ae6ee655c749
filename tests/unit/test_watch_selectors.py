"""The operator's watches of children ask the API server only for objects that may be loraforge's
(handlers.watch_selectors): every child the builders write, and every pod they template, must match
its kind's selector, or the operator would never see it and would write it again on every pass."""

from __future__ import annotations

from pathlib import Path

import kopf
import pytest
import yaml

from loraforge_operator import handlers
from loraforge_operator.finetunejob import builders as ftj_builders
from loraforge_operator.finetunejob.model import FineTuneJobSpec
from loraforge_operator.modeldeployment import builders as md_builders
from loraforge_operator.modeldeployment.model import ModelDeploymentSpec, ServingRevision
from loraforge_operator.settings import Settings, child_watch_selector

REPO = Path(__file__).resolve().parents[2]
UID = "6f1c2d3e-0000-4000-8000-00000000abcd"


def matches(selector: str, labels: dict[str, str]) -> bool:
    """The two forms child_watch_selector writes, as the API server reads them: ``key=value`` and
    ``key in (a,b)``, joined by commas outside parentheses (all must hold)."""
    terms, depth, start = [], 0, 0
    for i, ch in enumerate(selector + ","):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            terms.append(selector[start:i].strip())
            start = i + 1
    for term in terms:
        if " in (" in term:
            key, values = term.split(" in (", 1)
            if labels.get(key) not in values.rstrip(")").split(","):
                return False
        else:
            key, value = term.split("=", 1)
            if labels.get(key) != value:
                return False
    return True


def test_the_matcher_can_refuse() -> None:
    assert matches("a=b", {"a": "b"}) and not matches("a=b", {"a": "c"}) and not matches("a=b", {})
    assert matches("c in (x,y)", {"c": "y"}) and not matches("c in (x,y)", {"c": "z"})
    assert not matches("a=b,c in (x,y)", {"a": "b"})


def _documents(pattern: str, kind: str) -> list[dict]:
    return [
        d
        for path in sorted((REPO / "examples").glob(pattern))
        for d in yaml.safe_load_all(path.read_text())
        if d and d["kind"] == kind
    ]


def _with_pods(children: list[dict]) -> list[tuple[str, dict]]:
    """(kind, labels) of each child and of the pods its template makes."""
    out = []
    for child in children:
        out.append((child["kind"], child["metadata"].get("labels") or {}))
        template = (child.get("spec") or {}).get("template")
        if child["kind"] in ("Job", "Deployment") and template:
            out.append(("Pod", template["metadata"]["labels"]))
    return out


def _finetunejob_children() -> list[tuple[str, dict]]:
    out = []
    for ftj in _documents("finetunejob-*.yaml", "FineTuneJob"):
        owner = ftj_builders.Owner(ftj["metadata"]["name"], "team-a", UID)
        spec = FineTuneJobSpec.model_validate(ftj["spec"])
        out += _with_pods(ftj_builders.children(owner, spec, Settings()))
    return out


def _modeldeployment_children() -> list[tuple[str, dict]]:
    out = []
    for md in _documents("modeldeployment*.yaml", "ModelDeployment"):
        owner = md_builders.Owner(md["metadata"]["name"], "team-a", UID)
        spec = ModelDeploymentSpec.model_validate(md["spec"])
        revisions = {
            a.name: ServingRevision(name=a.name, path=f"adapters/team-a/{a.name}/r1", revision="r1")
            for a in spec.adapters
        }
        out += _with_pods(md_builders.children(owner, spec, Settings(), revisions))
    return out


@pytest.mark.parametrize("side", [_finetunejob_children, _modeldeployment_children], ids=["ftj", "md"])
def test_every_child_and_pod_the_builders_write_matches_its_watch(side) -> None:
    children = side()
    kinds = {kind for kind, _ in children}
    assert "Pod" in kinds and len(kinds) >= 3  # the examples reach the templates and several kinds
    for kind, labels in children:
        assert matches(child_watch_selector(kind), labels), (kind, labels)


def test_start_up_puts_each_child_kinds_selector_on_its_watch() -> None:
    settings = kopf.OperatorSettings()
    handlers.watch_selectors(settings)

    def resource(group: str, version: str, plural: str, kind: str) -> kopf.Resource:
        return kopf.Resource(group, version, plural, kind=kind, namespaced=True)

    kinds = {*handlers.finetunejob_handlers.CHILD_KINDS, *handlers.modeldeployment_handlers.CHILD_KINDS}
    for r in [*kinds, handlers.finetunejob_handlers.POD]:
        got = settings.watching.label_selectors.collect(resource(*r.gvp, r.kind))
        assert got == [child_watch_selector(r.kind)], r
    # What loraforge defines is watched whole: a FineTuneJob carries no labels of ours.
    ftj = resource("loraforge.io", "v1alpha1", "finetunejobs", "FineTuneJob")
    assert settings.watching.label_selectors.collect(ftj) == []
    # A pod is never selected by PART_OF: a serving pod does not carry it.
    serving = dict(_modeldeployment_children())["Pod"]
    assert not matches(child_watch_selector("ConfigMap"), serving)
