"""Whatever is dropped, the importer returns a report or raises DataError with a message."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.data import DataError, Options, Report, inspect_dataset

SUFFIXES = st.sampled_from(
    [".jsonl", ".json", ".csv", ".tsv", ".txt", ".md", ".zip", ".parquet", ""]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
KEYS = st.sampled_from(
    [
        "messages",
        "role",
        "content",
        "prompt",
        "completion",
        "text",
        "instruction",
        "input",
        "output",
        "conversations",
        "from",
        "value",
        "system",
        "tools",
        "tool_calls",
        "weight",
        "history",
        "function",
        "name",
        "arguments",
        "train",
        "data",
    ]
)
# Records shaped like the real formats, with arbitrary values, reach deeper than random JSON.
shaped = st.recursive(
    st.none()
    | st.integers()
    | st.text(max_size=10)
    | st.sampled_from(["user", "assistant", "system", "tool", "human", "gpt", "function_call"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=25,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(content: bytes, suffix: str, **options) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"drop{suffix}"
        path.write_bytes(content)
        try:
            report = inspect_dataset(path, Options(**options))
        except DataError as exc:
            assert str(exc).strip()
        else:
            assert isinstance(report, Report) and report.kept > 0
            json.dumps(report.to_dict(), default=str)


@SETTINGS
@given(st.binary(max_size=400), SUFFIXES)
def test_arbitrary_bytes(content, suffix):
    check(content, suffix)


@SETTINGS
@given(
    st.lists(json_values | shaped, max_size=6), st.sampled_from([".jsonl", ".json"]), st.booleans()
)
def test_arbitrary_json(values, suffix, strict):
    if suffix == ".json":
        content = json.dumps(values)
    else:
        content = "".join(json.dumps(v) + "\n" for v in values)
    check(content.encode(), suffix, strict=strict)


@pytest.mark.slow
@SETTINGS
@given(
    st.lists(st.dictionaries(KEYS, shaped, max_size=5), min_size=1, max_size=6),
    st.sampled_from([None, "chat", "completion", "alpaca", "sharegpt", "text"]),
)
def test_format_shaped_records_with_any_override(values, fmt):
    check("".join(json.dumps(v) + "\n" for v in values).encode(), ".jsonl", format=fmt)


@SETTINGS
@given(
    st.lists(
        st.lists(
            st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=8),
            min_size=1,
            max_size=4,
        ),
        min_size=1,
        max_size=6,
    )
)
def test_arbitrary_csv(rows):
    import csv
    import io

    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    check(buf.getvalue().encode(), ".csv")
