"""Issue 16, "Done means": random bytes, JSON and YAML as dataset and config files.

Every outcome is a success or one of Lathe's own errors (engine.errors.LatheError) with a message
of one line that names no Python exception; nothing is written outside LATHE_HOME (nothing left in
the temporary folder either), and the input file is never changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config import SECTIONS, RunConfig, read_yaml
from engine.errors import LatheError

SETTINGS = settings(
    max_examples=int(os.environ.get("LATHE_PROPERTY_EXAMPLES", "30")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
PYTHON_ERROR = re.compile(r"Traceback|\b[A-Z][A-Za-z]*(Error|Exception)\b")

# Text with lone surrogates now and then: JSON writes them as "\ud800" escapes.
texts = st.text(alphabet=st.characters(whitelist_categories=("Cs",)) | st.characters(), max_size=12)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | texts
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
        "output",
        "conversations",
        "from",
        "value",
        "train",
        "valid",
        "data",
        "tools",
        "weight",
    ]
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS | texts, inner, max_size=4),
    max_leaves=20,
)
# Config-shaped mappings: real section and field names with any values.
FIELDS = st.sampled_from(
    [f.name for cls in SECTIONS.values() for f in __import__("dataclasses").fields(cls)]
    + ["model", "data", "iters", "lora_parameters", "rank", "name", "schema_version", "x"]
)
config_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(FIELDS | texts, inner, max_size=4),
    max_leaves=15,
)
configs = st.dictionaries(
    st.sampled_from([*SECTIONS, "name", "schema_version"]) | FIELDS, config_values, max_size=6
)


def _yaml_text(value, share: bool) -> str:
    if share and isinstance(value, dict) and value:
        first = next(iter(value))
        value = {**value, "again": value[first]}  # the same object twice: an anchor and an alias
    try:
        return yaml.safe_dump(value, allow_unicode=True)
    except yaml.YAMLError:
        return "[unrepresentable]"


def _one_line_of_lathe(exc: LatheError) -> None:
    message = str(exc.args[0]) if exc.args else ""
    assert message.strip() and "\n" not in message.strip(), repr(message)
    assert not PYTHON_ERROR.search(message), repr(message)
    assert message.rstrip().endswith((".", "?", ")")), repr(message)


def _snapshot(folder: Path) -> dict:
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            out[os.fsencode(path)] = (
                path.stat().st_mtime_ns,
                hashlib.sha256(path.read_bytes()).hexdigest(),
            )
        else:
            out[os.fsencode(path)] = "dir"
    return out


def _guarded(content: bytes, name: str, action) -> None:
    """Run `action(path)` on `content` saved as `name`, in a sandbox, and check the promises."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        home, inputs, scratch = tmp / "home", tmp / "inputs", tmp / "tmp"
        for folder in (inputs, scratch):
            folder.mkdir()
        path = inputs / name
        path.write_bytes(content)
        before = _snapshot(inputs)
        saved = os.environ.get("LATHE_HOME"), tempfile.tempdir
        os.environ["LATHE_HOME"], tempfile.tempdir = str(home), str(scratch)
        try:
            action(path)
        except LatheError as exc:
            _one_line_of_lathe(exc)
        finally:
            tempfile.tempdir = saved[1]
            if saved[0] is None:
                del os.environ["LATHE_HOME"]
            else:
                os.environ["LATHE_HOME"] = saved[0]
        assert _snapshot(inputs) == before, "the input changed"
        assert list(scratch.iterdir()) == [], "left files in the temporary folder"
        assert sorted(p.name for p in tmp.iterdir()) == sorted(
            ["inputs", "tmp", *(["home"] if home.exists() else [])]
        ), "wrote outside LATHE_HOME"


def _inspect_and_import(path: Path) -> None:
    from engine.data import import_dataset, inspect_dataset

    report = inspect_dataset(path)
    json.dumps(report.to_dict(), default=str).encode("utf-8")
    report.to_text().encode("utf-8")
    imported = import_dataset(path)
    for split in ("train", "valid", "test"):
        (Path(imported.dataset_path) / f"{split}.jsonl").read_text(encoding="utf-8")


def _load_config(path: Path) -> None:
    from engine.training.distributed import read_hosts

    try:
        config = RunConfig.load(path)
        read_yaml(config.to_yaml())  # what Lathe writes, it can read back
        config.validate()
    finally:
        try:
            read_hosts(path)
        except LatheError as exc:
            _one_line_of_lathe(exc)


DATA_NAMES = st.sampled_from(
    ["drop.jsonl", "drop.json", "drop.txt", "drop.csv", "drop.yaml", "drop"]
)
CONFIG_NAMES = st.sampled_from(["config.yaml", "lora.yml"])


@SETTINGS
@given(st.binary(max_size=300), DATA_NAMES, CONFIG_NAMES)
def test_random_bytes_as_dataset_and_config(content, data_name, config_name):
    """issue 16 (property): random bytes never crash inspect, import or config loading."""
    _guarded(content, data_name, _inspect_and_import)
    _guarded(content, config_name, _load_config)


@SETTINGS
@given(st.lists(json_values, min_size=1, max_size=5), DATA_NAMES, st.booleans())
def test_random_json_as_dataset_and_config(values, data_name, lines):
    """issue 16 (property): random JSON (lone surrogates included) as data and as config."""
    if lines:
        content = "".join(json.dumps(v) + "\n" for v in values)
    else:
        content = json.dumps(values if len(values) > 1 else values[0])
    _guarded(content.encode(), data_name, _inspect_and_import)
    _guarded(content.encode(), "config.json.yaml", _load_config)


@SETTINGS
@given(configs | json_values, st.booleans(), DATA_NAMES)
def test_random_yaml_as_config_and_dataset(value, share, data_name):
    """issue 16 (property): random YAML, aliases included, as config and as data."""
    text = _yaml_text(value, share)
    _guarded(text.encode("utf-8", "surrogatepass"), "config.yaml", _load_config)
    _guarded(text.encode("utf-8", "surrogatepass"), data_name, _inspect_and_import)
