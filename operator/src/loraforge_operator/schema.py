"""Shared pieces of loraforge's API models, and the CRD schema generator.

The pydantic models are the single source of truth for the custom resources:
``crds/*.yaml`` (and the chart's copy) are generated from them by
``python -m loraforge_operator.crds`` and a test fails when the committed files
drift. Descriptions become ``kubectl explain`` text; validation that involves
several fields is a ``Rule``: written once, it is both the CEL the API server
checks at admission (``x-kubernetes-validations``) and the check the model makes
when it parses, so the operator never acts on input the schema would reject.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import GenerateJsonSchema, NoDefault
from pydantic_core import PydanticCustomError

# --- validation rules ---------------------------------------------------------------------------------------
# Why a rule carries its condition twice, as CEL and as a Python predicate side by side, instead of the
# model evaluating the CEL itself: no CEL library on PyPI both evaluates every rule here as Kubernetes does
# and is light enough for the operator's image and the trainer's (which loads these models too). As
# measured on these rules (evaluating all of them on a typical FineTuneJob spec / on one with every list at
# its limit, 2 cores):
# - common-expression-language 0.10 (Rust): `indexOf` only from its pure-Python add-on, `size()` of a
#   string counts UTF-8 bytes where Kubernetes counts code points, and importing it imports a REPL's stack
#   (typer, rich, prompt-toolkit, pygments: about 18 MB installed, 0.3 s); 0.9 ms / 23 ms.
# - cel-python 0.5 (celpy): no `indexOf`, no comparison of an int with a double (Kubernetes compares
#   them), lark, pendulum, google-re2 and jmespath to install, 0.4 s to import; 9 ms / 310 ms.
# - cel-expr-python 0.1 (Google's cel-cpp): Kubernetes' semantics, its strings extension included; 0.3 ms /
#   56 ms, but 50 MB installed and no wheels for Linux on arm64.
# So the CEL is evaluated by the API server, and by cel-expr-python in tests/unit/test_rules.py, which holds
# each rule's CEL to its predicate on objects generated from the schema; here the predicates run (parsing a
# whole typical spec, rules included, takes about 0.04 ms).

UNCHECKED = "loraforge.rules.unchecked"
"""A validation-context key: ``model_validate(data, context={UNCHECKED: True})`` parses without checking
the rules (for the test that compares each rule's CEL with its predicate); never set in production."""

_FIELD_PATH = re.compile(r"(\.[A-Za-z][A-Za-z0-9]*)+")


@dataclass(frozen=True)
class Rule:
    """One validation rule, defined once: the CEL the API server evaluates at admission and the same
    condition in Python, with the message (and field path) both report.

    On a model, list the model's rules in ``rules`` (``self`` is the object); on a field, put the rule in the
    field's ``Annotated`` metadata (``self`` is the value). Either way the CRD schema gets the rule's
    ``x-kubernetes-validations`` entry, and parsing raises, for each rule that does not hold, an error at the
    rule's field path whose message is the rule's: the operator's SpecInvalid message then reads like the
    API server's refusal. Transition rules (``oldSelf``) have no Python side: there is no old object at
    parse time; write them with ``cel()``."""

    cel: str
    """The rule, in CEL, as Kubernetes evaluates it: on the object's wire form, defaults applied, an unset
    optional field absent (``has()`` is false)."""

    message: str
    """What both the API server and the model report when the rule does not hold."""

    holds: Callable[[Any], bool]
    """The same condition in Python: on the model (or, for a field's rule, the field's value)."""

    field_path: str | None = None
    """Where the error is reported, relative to the object (e.g. ``.maxSkippedRecords``); else the object."""

    reason: str | None = None
    """The API server's reason (e.g. ``FieldValueForbidden``); default FieldValueInvalid."""

    detail: Callable[[Any], str] | None = None
    """Python side only: what broke the rule (e.g. the bad key), appended to the message."""

    def __post_init__(self) -> None:
        if "oldSelf" in self.cel:
            raise ValueError(f"a transition rule has no Python side; write it with cel(): {self.cel}")
        if self.field_path is not None and not _FIELD_PATH.fullmatch(self.field_path):
            raise ValueError(f"fieldPath must be .name(.name)*, got {self.field_path!r}")

    def entry(self) -> dict[str, str]:
        """The ``x-kubernetes-validations`` entry."""
        return cel(self.cel, self.message, self.field_path, self.reason)

    def error(self, value: Any) -> PydanticCustomError:
        message = self.message + (f" ({self.detail(value)})" if self.detail else "")
        return _error(message, self.reason)

    # As a field's Annotated metadata: checked after the field's own validation, and its CEL entry added to
    # the field's schema.
    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> Any:
        def check(value: Any, info: ValidationInfo) -> Any:
            if not self.holds(value) and not _unchecked(info):
                raise self.error(value)
            return value

        return AfterValidator(check).__get_pydantic_core_schema__(source, handler)

    def __get_pydantic_json_schema__(self, schema: Any, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        json_schema = handler(schema)
        json_schema.setdefault("x-kubernetes-validations", []).append(self.entry())
        return json_schema


def _error(message: str, reason: str | None = None) -> PydanticCustomError:
    # The message as the error's context, not its template: a rule's text may hold braces.
    return PydanticCustomError(reason or "FieldValueInvalid", "{message}", {"message": message})


def _loc(field_path: str | None) -> tuple[str, ...]:
    return tuple(field_path.split(".")[1:]) if field_path else ()


def _unchecked(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get(UNCHECKED))


def field_error(model: BaseModel, field_path: str, message: str) -> ValidationError:
    """What a check that CEL cannot state raises from a model validator: an error at ``field_path``
    (``.name(.name)*``, relative to the model) with ``message``, reported as a rule's error is."""
    if not _FIELD_PATH.fullmatch(field_path):
        raise ValueError(f"fieldPath must be .name(.name)*, got {field_path!r}")
    error = {"type": _error(message), "loc": _loc(field_path), "input": model}
    return ValidationError.from_exception_data(type(model).__name__, [error])


def _rules_schema(schema: dict[str, Any], model: type[ApiModel]) -> None:
    if model.rules:
        schema["x-kubernetes-validations"] = [r.entry() for r in model.rules]


class ApiModel(BaseModel):
    """Base for API objects: camelCase on the wire, unknown fields rejected, and the model's ``rules``
    checked when it parses and stated as CEL in its CRD schema."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        json_schema_extra=_rules_schema,
    )

    rules: ClassVar[tuple[Rule, ...]] = ()
    """Rules on the whole object: on ``self`` in CEL, on the model in Python."""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        # A model_config of its own must keep the hook that writes the rules into the CRD schema, or the
        # models would check rules the API server never sees.
        if cls.rules and cls.model_config.get("json_schema_extra") is not _rules_schema:
            raise TypeError(f"{cls.__name__}: a model with rules must keep json_schema_extra=_rules_schema")

    @model_validator(mode="after")
    def _check_rules(self, info: ValidationInfo) -> ApiModel:
        rules = type(self).rules
        broken = [r for r in rules if not r.holds(self)] if rules and not _unchecked(info) else []
        if broken:
            errors = [{"type": r.error(self), "loc": _loc(r.field_path), "input": self} for r in broken]
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self


def cel(rule: str, message: str, field_path: str | None = None, reason: str | None = None) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry (for rules without a Python side: see ``Rule``)."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


# --- Kubernetes label and annotation maps ----------------------------------------------------------------
# What the API server demands of the labels and annotations of the children loraforge writes
# (apimachinery's IsQualifiedName and IsValidLabelValue). A map the CRD let through with a bad key would
# have the API server refuse the Job or Deployment, and the operator retry forever instead of failing.
# `[.]`, not an escaped dot: the same text is a Python regex, an RE2 pattern and a CEL string literal.
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
# Annotation keys are checked lower-cased, so their prefix may hold capitals.
_SUBDOMAIN_ANY_CASE = r"[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?([.][A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*"
LABEL_KEY = rf"^({_SUBDOMAIN}/)?{_NAME}$"
ANNOTATION_KEY = rf"^({_SUBDOMAIN_ANY_CASE}/)?{_NAME}$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
MAX_KEY_PREFIX = 253  # a DNS subdomain
MAX_KEY_LENGTH = MAX_KEY_PREFIX + 1 + 63
MAX_ANNOTATIONS_SIZE = 256 * 1024  # apimachinery's TotalAnnotationSizeLimitB

LABEL_KEY_RULE = (
    "an optional prefix (a lowercase DNS subdomain of at most 253 characters) and '/', "
    "then a name of 1 to 63 letters, digits, '-', '_' or '.' that starts and ends with a letter or digit"
)
ANNOTATION_KEY_RULE = LABEL_KEY_RULE.replace("a lowercase DNS subdomain", "a DNS subdomain")
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]


def key_prefix_fits(key: str) -> bool:
    """The part before '/' (if any) is at most 253 characters: the one limit a regex here cannot state."""
    return "/" not in key or key.index("/") <= MAX_KEY_PREFIX


def _key_map(field: str, value: Any, max_properties: int, pattern: str, what: str, rule: str) -> Any:
    """A map whose keys must be ``what`` keys."""
    compiled = re.compile(pattern)

    def good(key: str) -> bool:
        # RE2's `$` (CEL's matches) is the end of the text: fullmatch, not a search that takes "a\n".
        return compiled.fullmatch(key) is not None and key_prefix_fits(key)

    keys = Rule(
        f"self.all(k, k.matches('{pattern}') && (!k.contains('/') || k.indexOf('/') <= {MAX_KEY_PREFIX}))",
        f"{field} keys must be {what} keys: {rule}",
        lambda value: all(good(k) for k in value),
        detail=lambda value: f"got {next(k for k in value if not good(k))!r}",
    )
    return Annotated[dict[str, value], Field(max_length=max_properties), keys]


def label_map(field: str, max_properties: int) -> Any:
    """Kubernetes labels (or a nodeSelector): label keys, label values."""
    return _key_map(field, LabelValue, max_properties, LABEL_KEY, "label", LABEL_KEY_RULE)


def annotation_map(field: str, max_properties: int, max_value_length: int = 2048) -> Any:
    """Kubernetes annotations: annotation keys, any value. The bounds keep the map under the API server's
    256 KiB limit on an object's annotations (keys and values together), with room for the operator's own:
    a map the CRD admits must never make the child it goes on too big to write."""
    assert max_properties * (MAX_KEY_LENGTH + max_value_length) <= MAX_ANNOTATIONS_SIZE * 3 // 4
    value = Annotated[str, Field(max_length=max_value_length)]
    return _key_map(field, value, max_properties, ANNOTATION_KEY, "annotation", ANNOTATION_KEY_RULE)


# An extended resource name (what counts GPUs on nodes, e.g. nvidia.com/gpu), as the API server checks the
# resources of a container: a domain-prefixed label key outside kubernetes.io, whose quota name
# "requests.<name>" is a label key too (so the prefix has 9 characters fewer).
EXTENDED_RESOURCE = rf"^{_SUBDOMAIN}/{_NAME}$"
MAX_RESOURCE_PREFIX = MAX_KEY_PREFIX - len("requests.")
EXTENDED_RESOURCE_RULE = (
    "an extended resource name: a lowercase DNS-subdomain prefix of at most 244 characters outside "
    "kubernetes.io, '/', then a name of 1 to 63 letters, digits, '-', '_' or '.' that starts and ends with "
    "a letter or digit (e.g. nvidia.com/gpu)"
)


ExtendedResourceName = Annotated[
    str,
    Field(max_length=MAX_KEY_LENGTH, pattern=EXTENDED_RESOURCE),
    Rule(
        f"self.indexOf('/') <= {MAX_RESOURCE_PREFIX} && !self.contains('kubernetes.io/')",
        f"must be {EXTENDED_RESOURCE_RULE}",
        lambda value: value.find("/") <= MAX_RESOURCE_PREFIX and "kubernetes.io/" not in value,
    ),
]


_KEEP = {
    "type",
    "description",
    "default",
    "enum",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "items",
    "properties",
    "required",
    "additionalProperties",
    "nullable",
}


def _wire(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=True, exclude_none=True, mode="json")
    if isinstance(value, list):
        return [_wire(v) for v in value]
    return value


class _SchemaWithFactoryDefaults(GenerateJsonSchema):
    """Also document defaults that come from a ``default_factory`` (lists,
    nested objects), as they appear on the wire."""

    def get_default_value(self, schema):  # type: ignore[override]
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            return _wire(factory())
        default = schema.get("default", NoDefault)
        return default if default is NoDefault else _wire(default)


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """Turn a pydantic model's JSON schema into a Kubernetes structural schema.

    References are inlined, ``Optional[X]`` becomes ``X`` (absence is the
    "unset" of Kubernetes), titles are dropped and ``x-kubernetes-*`` keys are
    passed through.
    """
    raw = model.model_json_schema(
        by_alias=True, mode="validation", schema_generator=_SchemaWithFactoryDefaults
    )
    defs = raw.pop("$defs", {})

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        node = copy.deepcopy(node)
        if "$ref" in node:
            target = resolve(defs[node.pop("$ref").split("/")[-1]])
            # The referencing field's own keys (description, default) win.
            target.update({k: v for k, v in node.items() if k != "$ref"})
            node = target
        if "anyOf" in node:
            options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
            if len(options) != 1:
                raise ValueError(f"unions other than Optional[X] have no structural schema: {options}")
            merged = resolve(options[0])
            merged.update(node)
            node = merged
        if node.get("default", "absent") is None:
            del node["default"]
        # JSON Schema 2020-12 (pydantic) to OpenAPI 3.0 (Kubernetes): the
        # exclusive bounds are flags on minimum/maximum.
        for bound, flag in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
            if isinstance(node.get(flag), int | float) and not isinstance(node.get(flag), bool):
                node[bound] = node.pop(flag)
                node[flag] = True
        if "const" in node:
            node["enum"] = [node.pop("const")]
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key.startswith("x-kubernetes-"):
                out[key] = value
            elif key not in _KEEP:
                continue
            elif key == "properties":
                out[key] = {name: resolve(sub) for name, sub in value.items()}
            elif key in ("items", "additionalProperties") and isinstance(value, dict):
                out[key] = resolve(value)
            elif key == "additionalProperties" and value is False:
                continue  # structural schemas prune unknown fields instead
            else:
                out[key] = value
        if "enum" in out and "type" not in out:
            out["type"] = "string"
        if "description" in out:
            out["description"] = " ".join(out["description"].split())
        return out

    return resolve(raw)
