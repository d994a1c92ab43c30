"""Task metrics and the JSON Schema checker, on answers a model could give (no model needed)."""

from __future__ import annotations

import json

import pytest

from engine.evaluate import (
    EvalError,
    SchemaError,
    default_metrics,
    diff_spans,
    load_schema,
    parse_metric,
    validate,
)

SCHEMA = {
    "type": "object",
    "properties": {
        "intent": {"enum": ["refund", "balance", "other"]},
        "amount": {"type": "number", "minimum": 0, "maximum": 10000},
        "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "note": {"type": "string", "minLength": 1, "maxLength": 20},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["intent", "amount"],
    "additionalProperties": False,
}


@pytest.fixture
def schema_metric(tmp_path):
    path = tmp_path / "answer.schema.json"
    path.write_text(json.dumps(SCHEMA))
    return parse_metric(f"schema:{path}")


def test_schema_metric_passes_answers_that_match(schema_metric):
    good = [
        '{"intent": "refund", "amount": 12.5, "currency": "EUR"}',
        '```json\n{"intent": "other", "amount": 0, "tags": ["a", "b"]}\n```',
        ' {"intent": "balance", "amount": 10000, "note": "x"} ',
    ]
    for answer in good:
        score = schema_metric.score(answer, None)
        assert score.value == 1.0, (answer, score.detail)


@pytest.mark.parametrize(
    "answer, why",
    [
        ('{"intent": "refund"}', "missing the required key 'amount'"),
        ('{"intent": "chat", "amount": 1}', "must be one of"),
        ('{"intent": "refund", "amount": -3}', "less than the minimum"),
        ('{"intent": "refund", "amount": "12"}', "expected number, got string"),
        ('{"intent": "refund", "amount": 1, "currency": "euro"}', "does not match the pattern"),
        ('{"intent": "refund", "amount": 1, "note": ""}', "shorter than 1"),
        ('{"intent": "refund", "amount": 1, "tags": ["a", 2]}', "$.tags[1]: expected string"),
        ('{"intent": "refund", "amount": 1, "extra": true}', "'extra' is not allowed"),
        ('[{"intent": "refund", "amount": 1}]', "expected object, got array"),
        ('Sure! {"intent": "refund", "amount": 1}', "not JSON"),
        ("", "empty answer"),
    ],
)
def test_schema_metric_fails_answers_that_do_not_match_and_says_why(schema_metric, answer, why):
    score = schema_metric.score(answer, None)
    assert score.value == 0.0
    assert why in score.detail


def test_schema_checker_edge_cases():
    assert validate(True, {"type": "integer"}) != []  # true is not 1 in JSON Schema
    assert validate(3.0, {"type": "integer"}) == []
    assert validate(None, {"type": ["string", "null"]}) == []
    assert validate({"a": 1}, {"additionalProperties": {"type": "string"}}) != []
    assert validate(1, {"const": 1.0}) == [] and validate(True, {"enum": [1]}) != []
    assert validate([1, 2, 3], {"maxItems": 2}) != []
    assert validate(5, {"exclusiveMaximum": 5}) != []


def test_schemas_that_pydantic_and_tool_definitions_write_are_checked(tmp_path):
    """Issue 19: the hand-written checker refused $ref, anyOf and oneOf; jsonschema checks them."""
    path = tmp_path / "s.json"
    path.write_text(
        json.dumps(
            {
                "$defs": {"Money": {"type": "object", "required": ["amount"]}},
                "type": "object",
                "properties": {
                    "a": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                    "pay": {"$ref": "#/$defs/Money"},
                    "kind": {"oneOf": [{"const": "x"}, {"const": "y"}]},
                },
            }
        )
    )
    schema = load_schema(path)
    assert validate({"a": None, "pay": {"amount": 1}, "kind": "x"}, schema) == []
    problems = validate({"a": 3, "pay": {}, "kind": "z"}, schema)
    assert any(p.startswith("$.a:") for p in problems)
    assert "$.pay: missing the required key 'amount'" in problems
    assert any(p.startswith("$.kind:") for p in problems)


def test_schemas_that_cannot_be_checked_are_refused(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"type": "object", "properties": {"a": {"type": "strang"}}}))
    with pytest.raises(SchemaError, match="not a valid JSON Schema"):
        load_schema(path)
    path.write_text(json.dumps({"properties": {"a": {"$ref": "https://example.com/a.json"}}}))
    with pytest.raises(SchemaError, match="not inside the schema file"):
        load_schema(path)
    path.write_text("{not json")
    with pytest.raises(SchemaError, match="not valid JSON"):
        load_schema(path)


def test_exact_contains_regex_json_and_length():
    exact, contains = parse_metric("exact"), parse_metric("contains")
    assert exact.score("  The sky is  blue. ", "The sky is blue.").value == 1.0
    assert exact.score("The sky is blue. And green.", "The sky is blue.").value == 0.0
    assert contains.score("Well, the SKY is blue. Yes.", "The sky is blue.").value == 1.0
    assert exact.score("anything", None) is None  # no reference: not judged
    regex = parse_metric(r"regex:^\d{3}-\d{4}$")
    assert (
        regex.score("555-1234", None).value == 1.0
        and regex.score("call 555-1234", None).value == 0.0
    )
    js = parse_metric("json")
    assert js.score('{"a": [1, 2]}', None).value == 1.0
    assert js.score("{'a': 1}", None).value == 0.0
    assert parse_metric("length").score("  four  ", None).value == 4.0
    with pytest.raises(EvalError):
        parse_metric("regex:")


def test_default_metrics_add_json_for_json_references():
    assert "json" in default_metrics(['{"a": 1}', '{"b": 2}'])
    assert default_metrics(["The sky is blue.", None]) == ["exact", "contains", "length"]


def test_word_diff_marks_only_what_changed():
    left, right = diff_spans("The sky is green today", "The sky is blue today")
    assert [t.strip() for k, t in left if k == "delete"] == ["green"]
    assert [t.strip() for k, t in right if k == "insert"] == ["blue"]
    left, right = diff_spans("One day, a girl", "Cats say meow.")
    assert left == [("delete", "One day, a girl")] and right == [
        ("insert", "Cats say meow.")
    ]  # one piece
    left, right = diff_spans("The sky is green today", "The sky is blue today")
    assert "".join(t for _, t in left) == "The sky is green today"
    assert "".join(t for _, t in right) == "The sky is blue today"
