"""JSON Schema checks for "always answer in this JSON format", through the `jsonschema` package.

Every keyword of the schema's draft is enforced (Draft 2020-12 unless `$schema` names another):
`$ref` into the same document, `anyOf`, `oneOf`, `allOf`, `not`, `patternProperties`, ... as
pydantic models and tool definitions write them. Remote `$ref`s are never fetched (nothing leaves
the machine); a schema that needs one fails to load with a clear message. Errors are worded as short
sentences naming the place in the answer (`$.a.b[0]`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
from jsonschema import validators
from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from engine.errors import LatheError

_NO_FETCH = (
    "Lathe never fetches schemas from the network: put the referenced definition under $defs "
    "in the same file."
)


class SchemaError(LatheError):
    kind = "eval"


def load_schema(path: str | Path) -> dict | bool:
    """Read a JSON Schema file; refuse one that is not a valid schema of its draft."""
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
    try:
        _validator_class(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = _place("$", exc.absolute_path)
        raise SchemaError(
            f"Schema {p.name} is not a valid JSON Schema at {where}: {exc.message}.",
            "Fix the schema file; https://json-schema.org describes the keywords.",
        ) from None
    if isinstance(schema, dict):
        resolver = Registry().resolver_with_root(DRAFT202012.create_resource(schema))
        for ref in _refs(schema):
            try:
                resolver.lookup(ref)
            except Unresolvable:
                raise SchemaError(
                    f"Schema {p.name} refers to {ref!r}, which is not inside the schema file.",
                    _NO_FETCH,
                ) from None
    return schema


def _refs(node):
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def validate(instance, schema, path: str = "$") -> list[str]:
    """Every way `instance` breaks `schema`, as short sentences naming the place ($.a.b[0])."""
    validator = _validator_class(schema)(schema)
    try:
        errors = sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.path)))
    except Unresolvable as exc:
        raise SchemaError(
            f"the schema refers to {exc.ref!r}, which is not inside the schema file.", _NO_FETCH
        ) from None
    return [_sentence(error, path) for error in errors]


def _validator_class(schema):
    return validators.validator_for(schema, default=validators.Draft202012Validator)


def _place(root: str, parts) -> str:
    return root + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def _sentence(error: jsonschema.ValidationError, root: str) -> str:
    where = _place(root, error.absolute_path)
    kind, value, instance = error.validator, error.validator_value, error.instance
    if kind == "type":
        wanted = value if isinstance(value, list) else [value]
        return f"{where}: expected {' or '.join(wanted)}, got {_type_name(instance)}"
    if kind == "required":
        missing = [k for k in value if isinstance(instance, dict) and k not in instance]
        name = next((k for k in missing if repr(k) in error.message), missing[0] if missing else "")
        return f"{where}: missing the required key '{name}'"
    if kind == "additionalProperties" and value is False and isinstance(instance, dict):
        schema = error.schema if isinstance(error.schema, dict) else {}
        known = schema.get("properties") or {}
        patterns = schema.get("patternProperties") or {}
        extra = [
            k for k in instance if k not in known and not any(re.search(p, k) for p in patterns)
        ]
        return "; ".join(f"{where}: the key '{k}' is not allowed" for k in extra)
    messages = {
        "const": lambda: f"must be {json.dumps(value)}",
        "enum": lambda: f"must be one of {json.dumps(value)}",
        "minimum": lambda: f"{instance} is less than the minimum {value}",
        "maximum": lambda: f"{instance} is more than the maximum {value}",
        "exclusiveMinimum": lambda: f"{instance} must be more than {value}",
        "exclusiveMaximum": lambda: f"{instance} must be less than {value}",
        "minLength": lambda: f"shorter than {value} characters",
        "maxLength": lambda: f"longer than {value} characters",
        "pattern": lambda: f"does not match the pattern {value}",
        "minItems": lambda: f"fewer than {value} items",
        "maxItems": lambda: f"more than {value} items",
    }
    text = messages[kind]() if kind in messages else error.message
    return f"{where}: {text}"


def _type_name(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
