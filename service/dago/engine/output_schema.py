"""JSON Schema helpers: checking schemas, validating outputs, and building a valid instance."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError, ValidationError


def schema_problem(schema: Any) -> str | None:
    """Why ``schema`` is not a usable output schema, or None."""
    if not isinstance(schema, dict):
        return "must be a JSON Schema object"
    if schema.get("type", "object") != "object":
        return 'must describe an object ("type": "object"): structured output is an object'
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path)
        return f"is not a valid JSON Schema{f' at {where}' if where else ''}: {e.message}"
    return None


def validation_error(schema: dict[str, Any] | bool, value: Any) -> str | None:
    """The first way ``value`` breaks ``schema`` (with its location), or None when it is valid."""
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(value), key=lambda e: (len(e.absolute_path), e.message))
    if not errors:
        return None
    error = errors[0]
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"at {where}: {json_message(error)}"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def json_message(error: ValidationError) -> str:
    """``error``'s message with the values it quotes written as JSON (``null``,
    ``{"text": ""}``, ``"object"``), not as Python reprs (``None``, ``{'text': ''}``): people
    and clients read these messages next to the JSON they sent."""
    msg = error.message
    values: list[object] = [error.instance, error.validator_value]
    for v in (error.instance, error.validator_value):
        if isinstance(v, list | dict):
            values.extend(v)
    # Longest first: a value's repr may hold a smaller one's.
    reprs: dict[str, str] = {}
    for v in values:
        try:
            reprs.setdefault(repr(v), _json(v))
        except (TypeError, ValueError):
            continue
    for r in sorted(reprs, key=len, reverse=True):
        if r != reprs[r]:
            msg = msg.replace(r, reprs[r])
    return msg


def instance(schema: Any, label: str = "[offline]", name: str = "value", depth: int = 0) -> Any:
    """A value valid for simple schemas, built by a fixed rule (used by the offline provider).

    Rule: ``const`` and ``enum`` give their (first) value; objects get every required
    property (and every property when none is listed as required); strings are
    ``"<label> <property name>"`` (padded to ``minLength``); numbers and integers their
    ``minimum`` (else 0, or 1 with an exclusive minimum of 0); booleans ``true``; arrays
    ``minItems`` (at least one) items; ``anyOf``/``oneOf`` their first choice; ``allOf``
    the merge of its parts; null ``None``.
    """
    if not isinstance(schema, dict) or depth > 16:
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return instance(schema[key][0], label, name, depth + 1)
    if schema.get("allOf"):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            if isinstance(part, dict):
                merged.update(part)
        merged.update({k: v for k, v in schema.items() if k != "allOf"})
        return instance(merged, label, name, depth + 1)
    typ = schema.get("type")
    if isinstance(typ, list):
        typ = next((t for t in typ if t != "null"), typ[0] if typ else None)
    if typ is None:
        typ = "object" if "properties" in schema else "string"
    if typ == "object":
        props: dict[str, Any] = schema.get("properties", {})
        required = schema.get("required") or list(props)
        return {key: instance(props.get(key, {}), label, key, depth + 1) for key in required}
    if typ == "array":
        n = max(1, int(schema.get("minItems", 1)))
        items = schema.get("items", {})
        return [instance(items, label, name, depth + 1) for _ in range(n)]
    if typ == "string":
        text = f"{label} {name}"
        need = int(schema.get("minLength", 0))
        if len(text) < need:
            text += "." * (need - len(text))
        if "maxLength" in schema:
            text = text[: int(schema["maxLength"])]
        return text
    if typ in ("number", "integer"):
        if "minimum" in schema:
            low = schema["minimum"]
        elif "exclusiveMinimum" in schema:
            low = schema["exclusiveMinimum"] + 1
        else:
            low = 0
        return int(low) if typ == "integer" else float(low)
    if typ == "boolean":
        return True
    return None
