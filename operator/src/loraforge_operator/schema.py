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
from typing import Any

from pydantic import BaseModel, ConfigDict
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
