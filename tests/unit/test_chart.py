"""The Helm chart's files, without helm or a cluster: its CRDs are the
repository's, every value is documented and typed, the operator's settings
and metrics it refers to exist. (helm lint/template and the API server's
verdict are in tests/integration/test_chart.py; the install in
tests/e2e/test_chart_install.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from loraforge_operator import metrics
from loraforge_operator.settings import Settings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "loraforge"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def test_the_chart_carries_exactly_the_repository_crds_byte_for_byte() -> None:
    source = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    copies = {p.name: p.read_bytes() for p in (CHART / "files" / "crds").glob("*.yaml")}
    assert source, "no CRDs in crds/"
    assert copies.keys() == source.keys(), (
        "charts/loraforge/files/crds/ lists other CRDs than crds/: make crds"
    )
    stale = [name for name in source if copies[name] != source[name]]
    assert not stale, f"chart copies differ from crds/ (run `make crds`): {stale}"


def test_the_crd_template_injects_metadata_where_the_crd_files_have_it() -> None:
    # templates/crds.yaml adds annotations and labels by replacing these exact lines: each must occur
    # once per file, at the top level, or the CRDs would render without the keep annotation.
    for path in (CHART / "files" / "crds").glob("*.yaml"):
        text = path.read_text()
        assert text.count("\nmetadata:\n") == 1, path.name
        assert text.count("\n  labels:\n") == 1, path.name
        assert "{{" not in text, f"{path.name}: template delimiters would need escaping"


def _key_lines(text: str) -> list[tuple[int, str, bool]]:
    """(line number, key, documented) for every mapping key of values.yaml that is a value of the chart
    (keys inside list items are data, e.g. NetworkPolicy peers, and are skipped)."""
    lines = text.splitlines()
    out = []
    list_indent: int | None = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if list_indent is not None and indent > list_indent:
            continue
        list_indent = None
        if stripped.startswith("- "):
            list_indent = indent
            continue
        m = re.match(r"([A-Za-z0-9_.-]+):", stripped)
        if not m:
            continue
        above = lines[i - 1].strip() if i else ""
        documented = above.startswith("#") or " # " in line
        out.append((i + 1, m.group(1), documented))
    return out


def test_every_value_has_a_comment() -> None:
    keys = _key_lines((CHART / "values.yaml").read_text())
    assert len(keys) > 60
    undocumented = [f"line {n}: {key}" for n, key, documented in keys if not documented]
    assert not undocumented, "values.yaml keys without a comment above or beside them:\n" + "\n".join(
        undocumented
    )


def test_the_comment_check_finds_an_undocumented_key() -> None:
    keys = _key_lines("# a\nfoo: 1\nbar:\n  # c\n  baz: 2\nlist:\n  - name: x\n    value: y\n")
    assert [(k, d) for _, k, d in keys] == [("foo", True), ("bar", False), ("baz", True), ("list", False)]


def _schema_paths(schema: dict[str, Any], prefix: str = "") -> set[str]:
    if "$ref" in schema:
        schema = SCHEMA["definitions"][schema["$ref"].rsplit("/", 1)[1]]
    out = set()
    for key, sub in (schema.get("properties") or {}).items():
        path = f"{prefix}.{key}" if prefix else key
        out.add(path)
        out |= _schema_paths(sub, path)
    return out


def _value_paths(
    values: dict[str, Any], prefix: str = "", open_maps: frozenset[str] = frozenset()
) -> set[str]:
    out = set()
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else key
        out.add(path)
        if isinstance(value, dict) and path not in open_maps:
            out |= _value_paths(value, path, open_maps)
    return out


# Values whose keys are the user's (labels, resource names), not the chart's.
OPEN_MAPS = frozenset(
    {
        "operator.resources.requests",
        "operator.resources.limits",
        "tests.resources.requests",
        "tests.resources.limits",
        "metrics.dashboard.labels",
    }
)


def test_the_schema_describes_every_value_and_forbids_unknown_keys() -> None:
    missing = _value_paths(VALUES, open_maps=OPEN_MAPS) - _schema_paths(SCHEMA)
    assert not missing, f"values.yaml keys the schema does not describe: {sorted(missing)}"
    assert SCHEMA["additionalProperties"] is False

    def closed(schema: dict[str, Any], path: str) -> None:
        if "$ref" in schema:
            schema = SCHEMA["definitions"][schema["$ref"].rsplit("/", 1)[1]]
        if schema.get("properties"):
            assert schema.get("additionalProperties") is False, f"{path} accepts unknown keys"
            for key, sub in schema["properties"].items():
                closed(sub, f"{path}.{key}")

    closed(SCHEMA, "(root)")


def _configmap_vars() -> set[str]:
    return set(re.findall(r"^  (LORAFORGE_[A-Z_]+):", (CHART / "templates/configmap.yaml").read_text(), re.M))


def test_every_setting_the_chart_passes_is_one_the_operator_reads() -> None:
    passed = _configmap_vars()
    read = set(
        re.findall(
            r'"(LORAFORGE_[A-Z_]+)"', (REPO / "operator/src/loraforge_operator/settings.py").read_text()
        )
    )
    assert passed, "no LORAFORGE_* variables in templates/configmap.yaml"
    assert passed <= read, f"the chart sets variables the operator ignores: {sorted(passed - read)}"
    # Not passed: the field manager (an internal name) and the rendezvous port (pod to pod inside a
    # training job; its default is torchrun's).
    assert read - passed == {"LORAFORGE_FIELD_MANAGER", "LORAFORGE_RENDEZVOUS_PORT"}


def test_the_operator_reads_the_settings_the_chart_passes() -> None:
    s = Settings.from_env(
        {
            "LORAFORGE_TRAINER_IMAGE": "mirror.example/loraforge/trainer:0.1.0",
            "LORAFORGE_IMAGE_PULL_POLICY": "Always",
            "LORAFORGE_TGI_IMAGE": "mirror.example/huggingface/text-generation-inference:3.3.6",
            "LORAFORGE_TGI_IMAGE_PULL_POLICY": "Never",
            "LORAFORGE_VLLM_IMAGE": "mirror.example/vllm/vllm-openai:v0.32.0",
            "LORAFORGE_VLLM_IMAGE_PULL_POLICY": "IfNotPresent",
            "LORAFORGE_IMAGE_PULL_SECRETS": "mirror-creds,other",
            "LORAFORGE_TRAINER_UID": "1001",
            "LORAFORGE_SERVING_UID": "1002",
        }
    )
    assert s.image_pull_policy == "Always" and s.tgi_image_pull_policy == "Never"
    assert s.vllm_image == "mirror.example/vllm/vllm-openai:v0.32.0"
    assert s.vllm_image_pull_policy == "IfNotPresent"
    assert s.image_pull_secrets == ("mirror-creds", "other")
    assert (s.trainer_uid, s.serving_uid) == (1001, 1002)
    # Unset, TGI's and vLLM's pull policies follow the trainer's; no secrets means none.
    d = Settings.from_env({"LORAFORGE_IMAGE_PULL_POLICY": "Always", "LORAFORGE_IMAGE_PULL_SECRETS": ""})
    assert d.tgi_image_pull_policy == "Always" and d.image_pull_secrets == ()
    assert d.vllm_image_pull_policy == "Always"


def _docker_hub(ref: str) -> str:
    """``ref`` with Docker Hub's registry spelled out, as container runtimes read a reference without one."""
    host, slash, _ = ref.partition("/")
    qualified = slash and ("." in host or ":" in host or host == "localhost")
    return ref if qualified else f"docker.io/{ref}"


def test_chart_defaults_match_the_operator_defaults() -> None:
    d = Settings()
    assert VALUES["trainer"]["uid"] == d.trainer_uid
    assert VALUES["serving"]["uid"] == d.serving_uid
    s = VALUES["serving"]["image"]
    assert f"{s['registry']}/{s['repository']}:{s['tag']}" == d.tgi_image
    v = VALUES["serving"]["vllm"]["image"]
    assert (v["repository"], v["tag"]) == ("vllm/vllm-openai", "v0.32.0")
    assert f"{v['registry']}/{v['repository']}:{v['tag']}" == _docker_hub(d.vllm_image)
    assert v["pullPolicy"] == s["pullPolicy"] == d.vllm_image_pull_policy == d.tgi_image_pull_policy
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert f"{VALUES['trainer']['image']['repository']}:{app_version}" == d.trainer_image
    assert VALUES["operator"]["metricsPort"] == d.metrics_port


_PROMQL_WORDS = {
    "sum",
    "by",
    "rate",
    "histogram_quantile",
    "le",
    "kind",
    "result",
    "verb",
    "phase",
    "namespace",
    "pod",
    "finished_reason",
}


def test_the_dashboard_plots_only_metrics_that_exist() -> None:
    dash = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert exprs
    # Metric names may hold digits and colons (vLLM's "vllm:e2e_...").
    used = {w for e in exprs for w in re.findall(r"[a-z_:][a-z0-9_:]*(?=[\[{(\s)]|$)", e)} - _PROMQL_WORDS
    operator_metrics = set()
    for collector in (
        metrics.RECONCILES,
        metrics.RECONCILE_SECONDS,
        metrics.API_WRITES,
        metrics.FINETUNEJOBS,
    ):
        for family in collector.collect():
            operator_metrics |= {family.name, f"{family.name}_total", f"{family.name}_bucket"}
    # TGI's names (the router's Prometheus exporter, no _total suffix on counters), as runtime.py and the
    # TGI stand-in use them.
    tgi = {
        "tgi_queue_size",
        "tgi_batch_current_size",
        "tgi_request_success",
        "tgi_request_failure",
        "tgi_request_count",
        "tgi_request_duration_bucket",
    }
    # vLLM's names (its OpenAI server's /metrics): the queue the autoscaler targets (runtime.py), the batch,
    # finished requests, end-to-end latency and time to first token.
    vllm = {
        "vllm:num_requests_waiting",
        "vllm:num_requests_running",
        "vllm:request_success_total",
        "vllm:e2e_request_latency_seconds_bucket",
        "vllm:time_to_first_token_seconds_bucket",
    }
    unknown = used - operator_metrics - tgi - vllm
    assert not unknown, f"the dashboard queries metrics nobody exports: {sorted(unknown)}"
    assert {"loraforge_reconciles_total", "tgi_queue_size"} | vllm <= used


@pytest.mark.parametrize("template", sorted(p.name for p in (CHART / "templates").rglob("*.yaml")))
def test_templates_name_only_values_that_exist(template: str) -> None:
    text = next((CHART / "templates").rglob(template)).read_text()
    paths = _value_paths(VALUES)
    for ref in set(re.findall(r"\.Values\.([A-Za-z0-9_.]+)", text)):
        assert ref in paths, f"{template} uses .Values.{ref}, which values.yaml does not define"


def _units(values: dict[str, Any], whole: frozenset[str], prefix: str = "") -> set[str]:
    """Paths documented as one row each: scalars, lists, empty maps, and the maps in ``whole``."""
    out = set()
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value and path not in whole:
            out |= _units(value, whole, path)
        else:
            out.add(path)
    return out


def _readme_rows() -> dict[str, str]:
    """key -> default column of the README's values table."""
    readme = (CHART / "README.md").read_text()
    table = readme[readme.index("## Values") :]
    return dict(re.findall(r"^\| `([A-Za-z0-9_.]+)` \| ([^|]*) \|", table, re.M))


def test_the_readme_values_table_lists_every_value() -> None:
    listed = set(_readme_rows())
    # Kubernetes-typed maps and label maps are one row each.
    whole = frozenset({"operator.resources", "tests.resources", "podSecurityContext", "securityContext"})
    wanted = _units(VALUES, whole | OPEN_MAPS)
    assert wanted - listed == set(), "values missing from the README's table"
    assert listed - wanted == set(), "the README's table lists values that do not exist"


def test_the_readme_values_table_shows_each_default_of_values_yaml() -> None:
    def value(path: str) -> Any:
        v: Any = VALUES
        for key in path.split("."):
            v = v[key]
        return v

    rows = _readme_rows()
    assert "serving.vllm.image.repository" in rows
    wrong = {
        key: (shown, f"`{json.dumps(value(key))}`")
        for key, shown in rows.items()
        if shown.strip() != f"`{json.dumps(value(key))}`"
    }
    assert not wrong, f"README defaults differ from values.yaml (shown, values.yaml): {wrong}"
