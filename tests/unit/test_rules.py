"""Each validation rule of the API is defined once, as a ``schema.Rule``: the CEL the API server evaluates at
admission and the Python predicate the models check when they parse. Here the two are held to each other:
on objects generated from the CRD schema (values at and near each limit, optional fields present or not),
the rule's CEL, evaluated as Kubernetes does on the object's wire form (defaults applied, unset fields
absent) by cel-expr-python (Google's CEL, with the strings extension Kubernetes enables), holds exactly when
its predicate holds on the parsed model. And both outcomes occur for every rule, so none is compared on
one side only."""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import pytest
from cel_expr_python import cel
from cel_expr_python.ext import ext_strings
from hypothesis import HealthCheck, assume, given, seed, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from loraforge_operator.finetunejob import model as ftj
from loraforge_operator.finetunejob.model import FineTuneJobSpec
from loraforge_operator.modeldeployment import model as md
from loraforge_operator.schema import UNCHECKED, ApiModel, Rule, structural_schema

ENV = cel.NewEnv(variables={"self": cel.Type.DYN}, extensions=[ext_strings.ExtStrings()])
EXAMPLES = settings(
    max_examples=80,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
# Runs of EXAMPLES per rule, each with its own seed (the same objects every run: a failure reproduces, CI
# does not flake), until the rule was seen both holding and broken.
SEEDS = range(20)
# Strings that sit on the rules' edges (each is used where the field's pattern and length admit it).
STRINGS = [
    "",
    "a",
    "b",
    "0",
    "1",
    "+1",
    "0.0",
    "0.5",
    "nvidia.com/gpu",
    "kubernetes.io/gpu",
    "example.kubernetes.io/gpu",
    "a" * 244 + "/gpu",
    "a" * 245 + "/gpu",
    "a" * 253 + "/gpu",
    "a" * 254 + "/gpu",
]
KEYS = [
    "app",
    "example.com/app",
    "Example.com/app",
    "loraforge.io/x",
    "batch.kubernetes.io/job-name",
    "a b",
    "a/b/c",
    "a\n",
    "",
    "a" * 63,
    "a" * 64,
    "a" * 253 + "/x",
    "a" * 254 + "/x",
]


@dataclass(frozen=True)
class Case:
    """A rule and what it is checked on: a model (``self`` is the object) or a field's type (the value)."""

    rule: Rule
    owner: type[ApiModel]
    field: str | None  # None: a rule of the model

    def __str__(self) -> str:
        where = self.owner.__name__ + (f".{self.field}" if self.field else "")
        return f"{where}: {self.rule.message[:48]}"


def _cases() -> Iterator[Case]:
    seen: set[int] = set()
    for module in (ftj, md):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if not issubclass(cls, ApiModel) or cls.__module__ != module.__name__:
                continue
            for rule in cls.__dict__.get("rules", ()):
                yield Case(rule, cls, None)
            for name, field in cls.model_fields.items():
                for rule in field.metadata:
                    if isinstance(rule, Rule) and id(rule) not in seen:
                        seen.add(id(rule))
                        yield Case(rule, cls, name)


CASES = list(_cases())


def _fits(node: dict[str, Any], s: str) -> bool:
    pattern = node.get("pattern")
    return node.get("minLength", 0) <= len(s) <= node.get("maxLength", 1 << 20) and (
        pattern is None or re.fullmatch(pattern, s) is not None
    )


def _strings(node: dict[str, Any]) -> st.SearchStrategy[str]:
    samples = [s for s in STRINGS if _fits(node, s)]
    pattern = node.get("pattern")
    if pattern:
        generated = st.from_regex(pattern.removeprefix("^").removesuffix("$"), fullmatch=True)
    else:
        generated = st.text(max_size=8)
    generated = generated.filter(lambda s: _fits(node, s))
    return st.one_of(st.sampled_from(samples), generated) if samples else generated


def _numbers(node: dict[str, Any], integer: bool) -> st.SearchStrategy[Any]:
    lo, hi = node.get("minimum", -2 if integer else -2.0), node.get("maximum", 1 << 20)
    lo_excl, hi_excl = node.get("exclusiveMinimum", False), node.get("exclusiveMaximum", False)

    def inside(v: float) -> bool:
        return (lo < v if lo_excl else lo <= v) and (v < hi if hi_excl else v <= hi)

    if integer:
        edges = [v for v in (lo, lo + 1, lo + 2, 0, 1, 2, hi - 1, hi) if inside(v)]
        return st.one_of(st.sampled_from(edges), st.integers(lo + lo_excl, hi - hi_excl))
    edges = [float(v) for v in (lo, 0.0, 0.1, 0.5, 1.0, hi) if inside(v)]
    floats = st.floats(lo, hi, exclude_min=lo_excl, exclude_max=hi_excl, allow_nan=False)
    return st.one_of(st.sampled_from(edges), floats)


def _values(node: dict[str, Any], names: set[str]) -> st.SearchStrategy[Any]:
    """Wire values of a structural schema node, mostly valid but for the rules (the models say which). Of an
    object's optional fields, those ``names`` name (the rule's identifiers) are there half the time, the
    others never (their defaults apply): the rule's fields vary, and an object stays small."""
    if "enum" in node:
        return st.sampled_from(node["enum"])
    kind = node.get("type")
    if kind == "boolean":
        return st.booleans()
    if kind in ("integer", "number"):
        return _numbers(node, kind == "integer")
    if kind == "string":
        return _strings(node)
    if kind == "array":
        size = min(node.get("maxItems", 3), 3)
        return st.lists(_values(node["items"], names), min_size=node.get("minItems", 0), max_size=size)
    if node.get("properties"):
        required = set(node.get("required", []))
        fields = {k: _values(v, names) for k, v in node["properties"].items() if k in required or k in names}
        present = st.fixed_dictionaries(
            {k: st.just(True) if k in required else st.booleans() for k in fields}
        )
        return present.flatmap(
            lambda there: st.fixed_dictionaries({k: v for k, v in fields.items() if there[k]})
        )
    if isinstance(node.get("additionalProperties"), dict):
        keys = st.one_of(st.sampled_from(KEYS), st.from_regex(r"[a-z]([.a-z/]{0,8}[a-z])?", fullmatch=True))
        return st.dictionaries(keys, _values(node["additionalProperties"], names), max_size=3)
    return st.just({})


@functools.cache
def _compiled(rule: str) -> Any:
    return ENV.compile(rule)


def _cel(rule: Rule, wire: Any) -> bool:
    result = _compiled(rule.cel).eval(data={"self": wire})
    # An evaluation error at admission refuses the object with that error instead of the rule's message.
    assert result.type() == cel.Type.BOOL, f"{rule.cel} on {wire!r}: {result.value()}"
    return result.value()


def _subject(case: Case) -> tuple[st.SearchStrategy[Any], Callable[[Any], tuple[Any, Any]]]:
    """What to generate for the case, and how to parse it with the rules unchecked: (parsed, wire form)."""
    schema = structural_schema(case.owner)
    names = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", case.rule.cel))
    context = {UNCHECKED: True}
    if case.field is None:

        def parse_model(value: Any) -> tuple[Any, Any]:
            parsed = case.owner.model_validate(value, context=context)
            return parsed, parsed.model_dump(by_alias=True, exclude_none=True, mode="json")

        return _values(schema, names), parse_model
    field = case.owner.model_fields[case.field]
    adapter = TypeAdapter(Annotated[field.annotation, *field.metadata])

    def parse_field(value: Any) -> tuple[Any, Any]:
        parsed = adapter.validate_python(value, context=context)
        return parsed, adapter.dump_python(parsed, mode="json")

    return _values(schema["properties"][field.alias or case.field], names), parse_field


@pytest.mark.parametrize("case", CASES, ids=str)
def test_the_rules_cel_and_its_predicate_agree(case: Case) -> None:
    values, parse = _subject(case)
    outcomes: set[bool] = set()

    def agree(value: Any) -> None:
        try:
            parsed, wire = parse(value)
        except ValidationError:  # broken elsewhere than in the rules
            assume(False)
        held = case.rule.holds(parsed)
        assert _cel(case.rule, wire) is held, f"CEL and predicate disagree on {wire!r}"
        outcomes.add(held)

    for n in SEEDS:
        seed(n)(EXAMPLES(given(values)(agree)))()
        if outcomes == {True, False}:
            break
    assert outcomes == {True, False}, f"only {outcomes} seen: the generated objects miss a side of the rule"


def test_every_rule_is_compared() -> None:
    assert len(CASES) >= 35
    assert {c.owner for c in CASES} >= {FineTuneJobSpec, md.ModelDeploymentSpec, ftj.Toleration}


def test_a_broken_rule_is_reported_at_its_field_path_with_its_message() -> None:
    spec = {
        "baseModel": {"path": "base/m"},
        "dataset": {"path": "d.jsonl", "validationSplit": 0, "maxSkippedRecords": 3},
        "evaluation": {"maxEvalLoss": 2.0},
    }
    with pytest.raises(ValidationError) as err:
        FineTuneJobSpec.model_validate(spec)
    assert [(e["loc"], e["msg"], e["type"]) for e in err.value.errors()] == [
        (
            ("dataset", "maxSkippedRecords"),
            "dataset.maxSkippedRecords applies only with onInvalidRecord: Skip",
            "FieldValueInvalid",
        )
    ]
    spec["dataset"].pop("maxSkippedRecords")
    with pytest.raises(ValidationError) as err:
        FineTuneJobSpec.model_validate(spec)
    (error,) = err.value.errors()
    assert error["loc"] == ("dataset", "validationSplit")
    assert error["msg"] == next(
        r.message for r in FineTuneJobSpec.rules if r.field_path == ".dataset.validationSplit"
    )


def test_only_checks_cel_cannot_state_remain_model_validators() -> None:
    # A model_validator that restates a rule would be its second definition.
    python_only = {("Scorer", "_pattern_compiles")}
    found = set()
    for module in (ftj, md):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, ApiModel) and cls.__module__ == module.__name__:
                found |= {
                    (cls.__name__, n) for n in cls.__pydantic_decorators__.model_validators if n in vars(cls)
                }
    assert found == python_only
