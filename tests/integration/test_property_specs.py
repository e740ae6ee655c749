"""Property-based tests of bad input: hypothesis generates FineTuneJob and
ModelDeployment specs from the CRDs' own schemas (values inside, at and past
each limit, strings that match each pattern and ones that do not, wrong types,
unknown fields) and sends each to the real API server (server-side dry run:
OpenAPI validation, CEL rules and defaults all run).

- Every rejected spec is rejected with a message that names a field of it.
- Every admitted spec (as stored, defaults filled in) is what the operator acts
  on: its model either parses it or gives the clear, permanent SpecInvalid
  failure with a message; when it parses, every child the operator would
  apply is itself accepted by the API server, pods under Pod Security
  "restricted" (a child the API server refused would make the operator retry
  forever instead of failing clearly), and the configuration it writes for the
  trainer loads in the trainer as is. The SpecInvalid message is the
  operator's own, naming fields the spec holds.
- Every label or annotation key and value (generated near and past each rule)
  is admitted in the specs' label and annotation maps exactly when the
  operator's model parses it and the API server takes it on a ConfigMap.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from loraforge_operator import api
from loraforge_operator.finetunejob import builders as ftj_builders
from loraforge_operator.finetunejob import contract as ftj_contract
from loraforge_operator.finetunejob import status as ftj_status
from loraforge_operator.finetunejob.model import FineTuneJobSpec
from loraforge_operator.finetunejob.reconcile import Reconciler as FineTuneJobReconciler
from loraforge_operator.kube import _path
from loraforge_operator.modeldeployment import builders as md_builders
from loraforge_operator.modeldeployment.model import ModelDeploymentSpec, ServingRevision
from loraforge_operator.modeldeployment.reconcile import _spec_error
from loraforge_operator.settings import Settings
from loraforge_trainer import config as trainer_config
from loraforge_trainer.errors import InvalidInput
from tests.finetunejob_cases import VALID_SPEC as FTJ_VALID
from tests.finetunejob_cases import merge
from tests.kube import Kube

REPO = Path(__file__).resolve().parents[2]
MD_VALID = {
    "baseModel": {"path": "base/smollm2-135m-instruct"},
    "adapters": [{"name": "facts", "from": {"adapter": "facts"}}],
}
EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same examples every run: a failure reproduces, CI does not flake
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _spec_schema(crd_file: str) -> dict[str, Any]:
    crd = yaml.safe_load((REPO / "crds" / crd_file).read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def _wrong_type() -> st.SearchStrategy[Any]:
    return st.one_of(st.integers(-3, 3), st.text(max_size=5), st.booleans(), st.just([]), st.just({}))


def _label_keys() -> st.SearchStrategy[str]:
    """Keys Kubernetes takes as label (and annotation) keys."""
    name = st.from_regex(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?", fullmatch=True)
    prefix = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,6}[a-z0-9])?([.][a-z0-9]{1,5}){0,2}", fullmatch=True)
    return st.one_of(name, st.builds(lambda p, n: f"{p}/{n}", prefix, name))


def _any_keys() -> st.SearchStrategy[str]:
    """Keys near and past every rule of label and annotation keys."""
    edges = [
        "",
        "/",
        "a/",
        "/a",
        "a/b/c",
        "-a",
        "a-",
        "a b",
        "Example.com/x",  # capitals in the prefix: an annotation key, not a label key
        "example.com/X_y.z",
        "a..b/c",
        "x" * 63,
        "x" * 64,
        "p/" + "x" * 63,
        "p/" + "x" * 64,
        "p" * 253 + "/x",
        "p" * 254 + "/x",
    ]
    return st.one_of(st.sampled_from(edges), st.text(alphabet="aZ09-_./ é", max_size=12))


def _from_schema(schema: dict[str, Any], valid: bool, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values for ``schema``: with ``valid``, inside its limits and patterns (cross-field rules are left
    to chance); without, also at and past each limit, off-pattern, and of other types."""
    t = schema.get("type")
    if "enum" in schema:
        main = st.sampled_from(schema["enum"] if valid else [*schema["enum"], "NotAnEnumValue"])
    elif t == "integer":
        lo, hi = schema.get("minimum", 0), schema.get("maximum", 2**31 - 1)
        edges = [lo, hi] if valid else [lo - 1, lo, hi, hi + 1]
        main = st.one_of(st.sampled_from(edges), st.integers(lo, min(hi, lo + 4096)))
    elif t == "number":
        lo, hi = schema.get("minimum", 0.0), schema.get("maximum", 10.0)
        edges = [lo, hi] if valid else [lo, hi, lo - 0.5, hi + 0.5]
        main = st.one_of(st.sampled_from(edges), st.floats(lo, hi, allow_nan=False))
    elif t == "boolean":
        main = st.booleans()
    elif t == "string":
        max_len = min(schema.get("maxLength", 40), 40)
        if "pattern" in schema:
            matching = st.from_regex(schema["pattern"], fullmatch=True).filter(lambda s: len(s) <= max_len)
            main = matching if valid else st.one_of(matching, st.text(max_size=12))
        else:
            main = st.text(min_size=1, max_size=max_len) if valid else st.text(max_size=12)
        if schema.get("x-kubernetes-int-or-string"):
            main = st.one_of(main, st.integers(0, 100))
    elif t == "array":
        item = _from_schema(schema.get("items") or {}, valid, depth + 1)
        main = st.lists(item, min_size=schema.get("minItems", 0), max_size=3)
    elif t == "object" and "properties" in schema and depth < 6:
        props = schema["properties"]
        required = set(schema.get("required") or [])
        optional = {k: _from_schema(v, valid, depth + 1) for k, v in props.items() if k not in required}
        fixed = {k: _from_schema(v, valid, depth + 1) for k, v in props.items() if k in required}
        main = st.fixed_dictionaries(fixed, optional=optional)
    elif t == "object":
        # Maps (nodeSelector, pod and ServiceMonitor labels, annotations): label keys, or anything; values
        # from the map's own value schema.
        keys = _label_keys() if valid else st.one_of(_label_keys(), _label_keys(), _any_keys())
        values = _from_schema(schema.get("additionalProperties") or {"type": "string"}, valid, depth + 1)
        main = st.dictionaries(keys, values, max_size=3)
    else:
        main = st.integers(0, 3)
    return main if valid else st.one_of(main, main, main, _wrong_type())


def _specs(crd_file: str, valid: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A valid spec with some fields replaced by generated ones: half the time all within the schema's
    limits, otherwise anything, sometimes with a field the schema does not know."""
    schema = _spec_schema(crd_file)

    def partial(ok: bool) -> st.SearchStrategy[dict[str, Any]]:
        fields = {k: _from_schema(v, ok, 1) for k, v in schema["properties"].items()}
        extra = {} if ok else {"unknownField": st.integers()}
        return st.fixed_dictionaries({}, optional={**fields, **extra})

    return st.one_of(partial(True), partial(False)).map(lambda p: merge(copy.deepcopy(valid), p))


def _dry_run_create(
    client, manifest: dict[str, Any], namespace: str, dry: bool = True
) -> tuple[int, str, list[str]]:
    """POST ``manifest`` with dryRun=All and strict field validation: (HTTP status, message, warnings)."""
    params = client.param_serialize(
        "POST",
        _path(manifest["apiVersion"], manifest["kind"], namespace),
        query_params=[("fieldValidation", "Strict"), *([("dryRun", "All")] if dry else [])],
        header_params={"Content-Type": "application/json", "Accept": "application/json"},
        body=manifest,
        auth_settings=["BearerToken"],
    )
    resp = client.call_api(*params)
    data = resp.read().decode()
    if resp.status >= 300:
        return resp.status, json.loads(data).get("message", data), []
    warnings = [v for k, v in resp.getheaders().items() if k.lower() == "warning"]
    return resp.status, data, warnings


# How the API server names a field: `spec.training.epochs: Invalid value`, `spec.adapters[0].from: ...`,
# `spec: Invalid value` (a rule on the whole spec), `unknown field "spec.x"`.
FIELD = re.compile(r'(^|[\s"[])\.?spec(\.[A-Za-z0-9_.\[\]]+)?(:|")')


def _names_a_field(message: str) -> bool:
    return FIELD.search(message) is not None


def _leads_to_a_field(spec: dict[str, Any], loc: tuple[Any, ...]) -> bool:
    """Does ``loc`` (a pydantic error location) lead to something the spec holds?"""
    node: Any = spec
    for part in loc:
        if part == "[key]":  # the error is about a map's key, the part before
            return True
        held = part in node if isinstance(node, dict) else isinstance(part, int) and 0 <= part < len(node)
        if not isinstance(node, (dict, list)) or not held:
            return False
        node = node[part]
    return True


def _assert_names_the_fields(spec: dict[str, Any], e: ValidationError, message: str) -> None:
    """The operator's SpecInvalid message for a spec the CRD admitted and the model refuses: each error the
    model raised is at a field the spec holds (a missing one: in an object it holds), and the message names
    the first of them and says what is wrong with it (it is cut at 2000 characters)."""
    errors = e.errors()
    assert errors and message, message
    for err in errors:
        loc = err["loc"][:-1] if err["type"] == "missing" else err["loc"]
        assert _leads_to_a_field(spec, loc), f"the model blames {err['loc']}, not a field of the spec: {spec}"
    first = errors[0]
    field = ".".join(map(str, ("spec", *first["loc"])))
    assert first["msg"] in message, (first["msg"], message)
    if first["loc"]:  # else a rule on the whole spec
        assert f"{field}: " in message and _names_a_field(message), (field, message)


def _check_children(client, children: list[dict[str, Any]], namespace: str) -> None:
    for child in children:
        if child["kind"] == "ServiceMonitor":
            continue  # another project's API, absent here (the operator reports ServiceMonitorUnavailable)
        meta = {k: v for k, v in child["metadata"].items() if k != "ownerReferences"}
        child = {**child, "metadata": {**meta, "namespace": namespace}}
        # The ServiceAccount is created for real: the pod below must find it.
        real = child["kind"] == "ServiceAccount"
        status, message, warnings = _dry_run_create(client, child, namespace, dry=not real)
        if real and status == 409:
            continue  # created by an earlier example
        assert status in (200, 201), (
            f"the API server refuses the {child['kind']} the operator builds: {message}"
        )
        assert not [w for w in warnings if "PodSecurity" in w], f"{child['kind']}: {warnings}"
        if child["kind"] in ("Job", "Deployment"):
            template = child["spec"]["template"]
            # A PriorityClass is the cluster's to define; one that is missing is a pod-time error.
            spec = {k: v for k, v in template["spec"].items() if k != "priorityClassName"}
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe"}, "spec": spec}
            status, message, _ = _dry_run_create(client, pod, namespace)
            assert status == 201, f"the {child['kind']}'s pod is refused: {message}"


def _served_v1(parsed: ModelDeploymentSpec, namespace: str) -> dict[str, ServingRevision]:
    """Each adapter as if its revision v1 were served."""
    return {
        a.name: ServingRevision(name=a.name, revision="v1", path=f"adapters/{namespace}/{a.name}/v1")
        for a in parsed.adapters
    }


def _resource(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": api.API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}


def _rejected_naming_a_field(status: int, message: str) -> bool:
    """Was the spec rejected? If so, with a message that names a field (the assertion)."""
    event("rejected" if status not in (200, 201) else "admitted")
    if status in (200, 201):
        return False
    assert status in (400, 422), message
    assert _names_a_field(message), f"rejected without naming a field: {message}"
    return True


@pytest.fixture(scope="module")
def client(kube: Kube, crds: None):
    api_client = kube.api_client()
    yield api_client
    api_client.close()


@EXAMPLES
@given(spec=_specs("finetunejobs.loraforge.io.yaml", FTJ_VALID))
def test_finetunejob_specs_are_rejected_naming_a_field_or_handled_cleanly(
    client, namespace: str, spec: dict[str, Any]
) -> None:
    obj = _resource("FineTuneJob", "prop", spec)
    status, message, _ = _dry_run_create(client, obj, namespace)
    if _rejected_naming_a_field(status, message):
        return
    stored = json.loads(message)["spec"]
    owner = ftj_builders.Owner(name="prop", namespace=namespace, uid="00000000-0000-0000-0000-000000000000")
    try:
        parsed = FineTuneJobSpec.model_validate(stored)
    except ValidationError as e:
        # The permanent failure the operator reports for a spec the CRD let through: the reconciler's own
        # message, in the Failed condition, naming each field the model blamed.
        reconciler = FineTuneJobReconciler(kube=None, settings=Settings(), post_event=lambda *_: None)
        error = reconciler._desired(owner, {"spec": stored}, 1)
        assert isinstance(error, str), "the model refuses the spec, yet the operator would build children"
        new_status, _ = ftj_status.compute({}, ftj_status.Observed(generation=1, spec_error=error))
        failed = [c for c in new_status.get("conditions", []) if c["type"] == "Failed"]
        assert new_status["phase"] == "Failed", new_status
        assert [(c["status"], c["message"]) for c in failed] == [("True", error)], new_status
        _assert_names_the_fields(stored, e, error)
        return
    _check_children(client, ftj_builders.children(owner, parsed, Settings()), namespace)
    # The trainer takes the configuration the operator writes for it as is: every admitted spec loads.
    written = ftj_builders.config_map(owner, parsed)["data"][ftj_contract.CONFIG_KEY]
    try:
        loaded = trainer_config.from_document(json.loads(written))
    except InvalidInput as e:
        pytest.fail(f"the trainer refuses the configuration of an admitted spec: {e}\n{written}")
    assert loaded.model_dump(by_alias=True, exclude_none=True, mode="json") == json.loads(written)


@EXAMPLES
@given(spec=_specs("modeldeployments.loraforge.io.yaml", MD_VALID))
def test_modeldeployment_specs_are_rejected_naming_a_field_or_handled_cleanly(
    client, namespace: str, spec: dict[str, Any]
) -> None:
    obj = _resource("ModelDeployment", "prop", spec)
    status, message, _ = _dry_run_create(client, obj, namespace)
    if _rejected_naming_a_field(status, message):
        return
    stored = json.loads(message)["spec"]
    owner = md_builders.Owner("prop", namespace, "00000000-0000-0000-0000-000000000000")
    try:
        parsed = ModelDeploymentSpec.model_validate(stored)
    except ValidationError as e:
        _assert_names_the_fields(stored, e, _spec_error(e))  # the SpecInvalid message the operator reports
        return
    revisions = _served_v1(parsed, namespace)
    _check_children(client, md_builders.children(owner, parsed, Settings(), revisions), namespace)


def test_a_bad_pod_label_key_is_rejected_at_admission_naming_the_field_and_the_rule(
    client, namespace: str
) -> None:
    """Once a known gap: the CRD took any label key, the API server refused the Job, the operator retried."""
    spec = merge(copy.deepcopy(FTJ_VALID), {"podMetadata": {"labels": {"": "x"}}})
    obj = _resource("FineTuneJob", "gap", spec)
    status, message, _ = _dry_run_create(client, obj, namespace)
    assert status == 422 and _names_a_field(message), message
    assert "spec.podMetadata.labels" in message and "podMetadata.labels keys must be label keys" in message


def _largest_annotations(max_properties: int, max_value: int) -> dict[str, str]:
    """As many annotations as the CRD allows, each with the longest key (a 253-character prefix and a
    63-character name, made unique) and the longest value."""
    prefix = ".".join(["p" * 63] * 3) + "." + "q" * 61  # 253 characters
    return {f"{prefix}/{i:03d}" + "n" * 60: "v" * max_value for i in range(max_properties)}


def test_the_largest_annotation_maps_the_crds_admit_fit_on_the_children(client, namespace: str) -> None:
    """Once a gap: 64 annotations of 4096 characters passed the CRD, but the API server limits an object's
    annotations to 256 KiB in all, so the operator would have retried a Job it could never write."""
    ftj_max = _spec_schema("finetunejobs.loraforge.io.yaml")["properties"]["podMetadata"]["properties"]
    annotations = ftj_max["annotations"]
    largest = _largest_annotations(
        annotations["maxProperties"], annotations["additionalProperties"]["maxLength"]
    )
    assert {len(k) for k in largest} == {317}
    spec = merge(copy.deepcopy(FTJ_VALID), {"podMetadata": {"annotations": largest}})
    obj = _resource("FineTuneJob", "big", spec)
    status, message, _ = _dry_run_create(client, obj, namespace)
    assert status == 201, message
    owner = ftj_builders.Owner(name="big", namespace=namespace, uid="00000000-0000-0000-0000-000000000000")
    _check_children(
        client, ftj_builders.children(owner, FineTuneJobSpec.model_validate(spec), Settings()), namespace
    )

    service = _spec_schema("modeldeployments.loraforge.io.yaml")["properties"]["service"]["properties"]
    annotations = service["annotations"]
    largest = _largest_annotations(
        annotations["maxProperties"], annotations["additionalProperties"]["maxLength"]
    )
    spec = merge(copy.deepcopy(MD_VALID), {"service": {"annotations": largest}})
    obj = _resource("ModelDeployment", "big", spec)
    status, message, _ = _dry_run_create(client, obj, namespace)
    assert status == 201, message
    parsed = ModelDeploymentSpec.model_validate(spec)
    revisions = _served_v1(parsed, namespace)
    owner = md_builders.Owner("big", namespace, "00000000-0000-0000-0000-000000000000")
    _check_children(client, md_builders.children(owner, parsed, Settings(), revisions), namespace)


def _admitted(client, manifest: dict[str, Any], namespace: str) -> bool:
    status, message, _ = _dry_run_create(client, manifest, namespace)
    assert status in (200, 201, 400, 422), message
    return status in (200, 201)


def _parses(model: type, spec: dict[str, Any]) -> bool:
    try:
        model.model_validate(spec)
    except ValidationError:
        return False
    return True


@settings(EXAMPLES, max_examples=80)
@given(
    key=st.one_of(_label_keys(), _any_keys()),
    value=st.one_of(
        st.from_regex(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?)?", fullmatch=True),
        st.sampled_from(["x" * 63, "x" * 64, "-a", "a-", "a b", "a/b", "ok.ay_1"]),
        st.text(alphabet="aZ09-_./ é", max_size=8),
    ),
)
def test_label_and_annotation_keys_and_values_are_judged_as_kubernetes_judges_them(
    client, namespace: str, key: str, value: str
) -> None:
    """For every key and value: the CRD admits a FineTuneJob (pod labels, pod annotations, nodeSelector)
    and a ModelDeployment (Service annotations, ServiceMonitor labels) with it exactly when the operator's
    model parses it and the API server takes it as a label or annotation of a ConfigMap, so no spec that is
    admitted has the API server refuse the child it becomes."""

    def configmap(meta: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "probe", **meta}}

    kubernetes = {
        "labels": _admitted(client, configmap({"labels": {key: value}}), namespace),
        "annotations": _admitted(client, configmap({"annotations": {key: value}}), namespace),
    }
    event(f"Kubernetes takes it as a label: {kubernetes['labels']}, annotation: {kubernetes['annotations']}")
    cases = [
        ("FineTuneJob", FineTuneJobSpec, FTJ_VALID, {"podMetadata": {"labels": {key: value}}}, "labels"),
        ("FineTuneJob", FineTuneJobSpec, FTJ_VALID, {"resources": {"nodeSelector": {key: value}}}, "labels"),
        (
            "FineTuneJob",
            FineTuneJobSpec,
            FTJ_VALID,
            {"podMetadata": {"annotations": {key: value}}},
            "annotations",
        ),
        (
            "ModelDeployment",
            ModelDeploymentSpec,
            MD_VALID,
            {"monitoring": {"labels": {key: value}}},
            "labels",
        ),
        (
            "ModelDeployment",
            ModelDeploymentSpec,
            MD_VALID,
            {"service": {"annotations": {key: value}}},
            "annotations",
        ),
    ]
    if key.startswith(("loraforge.io/", "batch.kubernetes.io/")):
        cases = cases[1:]  # reserved for pod labels
    for kind, model, valid, patch, judged_as in cases:
        spec = merge(copy.deepcopy(valid), patch)
        obj = {"apiVersion": api.API_VERSION, "kind": kind, "metadata": {"name": "probe"}, "spec": spec}
        crd, parsed, expected = _admitted(client, obj, namespace), _parses(model, spec), kubernetes[judged_as]
        assert crd == parsed == expected, (
            f"{kind} {patch}: CRD admits: {crd}, model parses: {parsed}, Kubernetes takes it as {judged_as}: "
            f"{expected}"
        )
