"""Shared pieces of loraforge's API models, and the CRD schema generator.

The pydantic models are the single source of truth for the custom resources:
``crds/*.yaml`` (and the chart's copy) are generated from them by
``python -m loraforge_operator.crds`` and a test fails when the committed files
drift. Descriptions become ``kubectl explain`` text; validation that involves
several fields is written as CEL (``x-kubernetes-validations``) and is checked
by the API server at admission, and mirrored here so the operator never acts on
input the schema would reject.
"""

from __future__ import annotations

import copy
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic.json_schema import GenerateJsonSchema, NoDefault


class ApiModel(BaseModel):
    """Base for API objects: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
    )


def cel_rules(*rules: dict[str, str]) -> ConfigDict:
    """Model config that attaches CEL rules to the model's CRD schema."""
    return ConfigDict(json_schema_extra={"x-kubernetes-validations": list(rules)})


def cel(rule: str, message: str, field_path: str | None = None, reason: str | None = None) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry."""
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


def _key_rule_cel(pattern: str, var: str) -> str:
    return f"{var}.matches('{pattern}') && (!{var}.contains('/') || {var}.indexOf('/') <= {MAX_KEY_PREFIX})"


def _key_map(field: str, value: Any, max_properties: int, pattern: str, what: str, rule: str) -> Any:
    """A map whose keys must be ``what`` keys, checked by CEL at admission and by the model alike."""
    message = f"{field} keys must be {what} keys: {rule}"
    compiled = re.compile(pattern)

    def check(value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if not (compiled.fullmatch(k) and key_prefix_fits(k))]
        if bad:
            raise ValueError(f"{message} (got {bad[0]!r})")
        return value

    return Annotated[
        dict[str, value],
        Field(
            max_length=max_properties,
            json_schema_extra={
                "x-kubernetes-validations": [cel(f"self.all(k, {_key_rule_cel(pattern, 'k')})", message)]
            },
        ),
        AfterValidator(check),
    ]


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


def _extended_resource(value: str) -> str:
    if not (
        re.fullmatch(EXTENDED_RESOURCE, value)
        and value.index("/") <= MAX_RESOURCE_PREFIX
        and "kubernetes.io/" not in value
    ):
        raise ValueError(f"must be {EXTENDED_RESOURCE_RULE}")
    return value


ExtendedResourceName = Annotated[
    str,
    Field(
        max_length=MAX_KEY_LENGTH,
        pattern=EXTENDED_RESOURCE,
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    f"self.indexOf('/') <= {MAX_RESOURCE_PREFIX} && !self.contains('kubernetes.io/')",
                    f"must be {EXTENDED_RESOURCE_RULE}",
                )
            ]
        },
    ),
    AfterValidator(_extended_resource),
]


def label_key_cel(var: str) -> str:
    """CEL that holds when ``var`` (a string) is a label key."""
    return _key_rule_cel(LABEL_KEY, var)


def is_label_key(key: str) -> bool:
    """What label_key_cel says, in Python."""
    return re.fullmatch(LABEL_KEY, key) is not None and key_prefix_fits(key)


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
