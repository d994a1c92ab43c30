"""A JSON Schema checker for the subset that "always answer in this JSON format" needs.

Supported keywords: type (one or a list: object, array, string, number, integer, boolean, null),
properties, required, additionalProperties (true, false or a schema), items (one schema), enum,
const, minimum, maximum, exclusiveMinimum, exclusiveMaximum (numbers), minLength, maxLength,
pattern (re.search, as JSON Schema specifies), minItems, maxItems. Other keywords ($ref, anyOf,
oneOf, allOf, not, format, ...) are reported by `unsupported_keywords` and otherwise ignored, so a
schema that relies on them checks less than it says; `load_schema` refuses such a schema rather
than pass answers it cannot judge.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from engine.errors import LatheError

SUPPORTED = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "enum",
        "const",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "pattern",
        "minItems",
        "maxItems",
    }
)
# Keywords that only describe and never constrain.
ANNOTATIONS = frozenset(
    {"$schema", "$id", "$comment", "title", "description", "default", "examples"}
)
TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")


class SchemaError(LatheError):
    kind = "eval"


def load_schema(path: str | Path) -> dict:
    """Read a JSON Schema file; refuse one that uses keywords this checker cannot enforce."""
    p = Path(path).expanduser()
    try:
        schema = json.loads(p.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise SchemaError(
            f"Schema file {p} does not exist.", "Check the path after schema:."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SchemaError(f"Schema file {p} cannot be read: {exc}.") from None
    except json.JSONDecodeError as exc:
        raise SchemaError(
            f"Schema file {p} is not valid JSON (line {exc.lineno}: {exc.msg})."
        ) from None
    if not isinstance(schema, (dict, bool)):
        raise SchemaError(f"Schema file {p} must hold a JSON object.")
    unknown = unsupported_keywords(schema)
    if unknown:
        raise SchemaError(
            f"Schema {p.name} uses keywords Lathe cannot check: {', '.join(sorted(unknown))}.",
            "Use only " + ", ".join(sorted(SUPPORTED)) + ".",
        )
    return schema


def unsupported_keywords(schema) -> set[str]:
    """Keywords anywhere in `schema` that `validate` does not enforce."""
    found: set[str] = set()
    if not isinstance(schema, dict):
        return found
    found |= {key for key in schema if key not in SUPPORTED and key not in ANNOTATIONS}
    for sub in (schema.get("properties") or {}).values():
        found |= unsupported_keywords(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            found |= unsupported_keywords(schema[key])
    return found


def validate(instance, schema, path: str = "$") -> list[str]:
    """Every way `instance` breaks `schema`, as short sentences naming the place ($.a.b[0])."""
    if schema is True or schema == {}:
        return []
    if schema is False:
        return [f"{path}: no value is allowed here"]
    errors: list[str] = []
    if "type" in schema:
        wanted = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is_type(instance, t) for t in wanted):
            return [f"{path}: expected {' or '.join(wanted)}, got {_type_name(instance)}"]
    if "const" in schema and not _equal(instance, schema["const"]):
        errors.append(f"{path}: must be {json.dumps(schema['const'])}")
    if "enum" in schema and not any(_equal(instance, v) for v in schema["enum"]):
        errors.append(f"{path}: must be one of {json.dumps(schema['enum'])}")
    if _is_number(instance):
        if "minimum" in schema and instance < schema["minimum"]:
            errors.append(f"{path}: {instance} is less than the minimum {schema['minimum']}")
        if "maximum" in schema and instance > schema["maximum"]:
            errors.append(f"{path}: {instance} is more than the maximum {schema['maximum']}")
        if "exclusiveMinimum" in schema and instance <= schema["exclusiveMinimum"]:
            errors.append(f"{path}: {instance} must be more than {schema['exclusiveMinimum']}")
        if "exclusiveMaximum" in schema and instance >= schema["exclusiveMaximum"]:
            errors.append(f"{path}: {instance} must be less than {schema['exclusiveMaximum']}")
    if isinstance(instance, str):
        if "minLength" in schema and len(instance) < schema["minLength"]:
            errors.append(f"{path}: shorter than {schema['minLength']} characters")
        if "maxLength" in schema and len(instance) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']} characters")
        if "pattern" in schema and not re.search(schema["pattern"], instance):
            errors.append(f"{path}: does not match the pattern {schema['pattern']}")
    if isinstance(instance, list):
        if "minItems" in schema and len(instance) < schema["minItems"]:
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(instance) > schema["maxItems"]:
            errors.append(f"{path}: more than {schema['maxItems']} items")
        if "items" in schema:
            for i, item in enumerate(instance):
                errors += validate(item, schema["items"], f"{path}[{i}]")
    if isinstance(instance, dict):
        props = schema.get("properties") or {}
        for name in schema.get("required") or []:
            if name not in instance:
                errors.append(f"{path}: missing the required key '{name}'")
        extra = schema.get("additionalProperties", True)
        for key, value in instance.items():
            where = f"{path}.{key}"
            if key in props:
                errors += validate(value, props[key], where)
            elif extra is False:
                errors.append(f"{path}: the key '{key}' is not allowed")
            elif isinstance(extra, dict):
                errors += validate(value, extra, where)
    return errors


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_type(value, name: str) -> bool:
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "string":
        return isinstance(value, str)
    if name == "number":
        return _is_number(value) and math.isfinite(value)
    if name == "integer":
        return _is_number(value) and float(value).is_integer()
    if name == "boolean":
        return isinstance(value, bool)
    if name == "null":
        return value is None
    raise SchemaError(f"Unknown JSON Schema type '{name}'.", "Use one of " + ", ".join(TYPES) + ".")


def _type_name(value) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _is_type(value, name):
            return name
    return type(value).__name__


def _equal(a, b) -> bool:
    # JSON equality: 1 == 1.0, but true is not 1.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b
