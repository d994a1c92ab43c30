"""Engine calls the GUI runs on worker threads (see tasks.Task). Plain functions, no Qt."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from app.names import dataset_name, id_name, model_name, run_name
from engine.config import RunConfig


def sample_dataset() -> Path:
    from engine.workspace import resources_dir

    return resources_dir() / "samples" / "bank-support"


def demo_model_note() -> str:
    """What the demo model will be, in words, without building anything."""
    from engine.demo import choose_demo_model

    return choose_demo_model().note


def recommended_note() -> str:
    """The first recommended model in words, with its numbers from resources/models.yaml."""
    try:
        from engine.models import recommended_models

        rec = recommended_models()[0]
    except Exception:  # noqa: BLE001 - the Welcome view shows a plain sentence instead
        return "The Models page lists small instruct models that train well on a Mac."
    return (
        f"{rec.name} (4-bit): a {rec.download_gb:g} GB download that trains in about "
        f"{rec.train_gb:g} GB of memory with the reference settings; the quickest real model to "
        "start with."
    )


def demo_config() -> tuple[RunConfig, list[str]]:
    """The engine's demo run settings (may build the tiny local model: run on a worker)."""
    from engine.demo import demo_defaults

    cfg = RunConfig()
    notes: list[str] = []
    demo_defaults(cfg, notes)
    return cfg, notes


def demo_model_path() -> Path | None:
    """The demo model folder when it exists already (never builds)."""
    from engine.demo import choose_demo_model

    return choose_demo_model().path


def fit_estimate(model_ref: str, cfg: RunConfig, budget_bytes: int | None = None):
    """engine.models.estimate for a local folder, a library model or a recommended repo id; for
    the largest batch the chosen dataset forms when both are on this Mac (else the longest
    possible batch, which the report says)."""
    from engine.errors import ModelError
    from engine.models import estimate, recommended_models

    ref = model_ref.strip()
    if not ref:
        raise ModelError("no model chosen yet.")
    path = Path(ref).expanduser()
    if not path.is_dir():
        for rec in recommended_models():
            if rec.repo_id == ref:
                return estimate(rec.info, cfg, budget_bytes=budget_bytes)
        from engine.models import resolve

        path = resolve(ref)
    return estimate(path, cfg, budget_bytes=budget_bytes, lengths=data_lengths(path, cfg))


_LENGTHS: dict = {}
LENGTHS_KEPT = 4  # a few settings of one dataset (max length tried back and forth) stay cheap
_LENGTHS_LOCK = threading.Lock()


def data_lengths(model_dir: Path, cfg: RunConfig) -> list[int] | None:
    """The training examples' token lengths for the estimate (None when the data can't be read);
    remembered per dataset, model and encoding settings, so settings changes stay cheap."""
    d = cfg.data
    if not d.path:
        return None
    source = Path(d.path).expanduser()
    try:
        stamp = (
            tuple((f.name, f.stat().st_mtime_ns) for f in sorted(source.rglob("*"))[:50])
            if source.is_dir()
            else source.stat().st_mtime_ns
        )
    except OSError:
        stamp = None
    key = (
        str(source),
        stamp,
        str(model_dir),
        cfg.model.chat_template,
        d.mask_prompt,
        d.max_seq_length,
        d.valid_fraction,
        cfg.training.seed,
    )
    with _LENGTHS_LOCK:  # one worker at a time: estimates for the same data wait and reuse it
        if key not in _LENGTHS:
            lengths = worker_lengths(cfg, model_dir)
            if lengths is None:
                return None
            while len(_LENGTHS) >= LENGTHS_KEPT:  # the oldest goes first (dicts keep order)
                del _LENGTHS[next(iter(_LENGTHS))]
            _LENGTHS[key] = lengths
        return _LENGTHS[key]


LENGTHS_TIMEOUT_S = 600


def worker_lengths(cfg: RunConfig, model_dir: Path) -> list[int] | None:
    """engine.training.memory.train_lengths in a worker process (`lathe-engine data lengths --json`): it
    loads the tokenizer and renders every example, native and Python work that would hold the
    window process's GIL (issue 17). None when the data cannot be read."""
    import json
    import os
    import subprocess
    import tempfile

    from app.controller import engine_command, worker_cwd, worker_env

    with tempfile.TemporaryDirectory(prefix="lathe-lengths-") as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(cfg.to_yaml(), encoding="utf-8")
        program, args = engine_command(
            "data", "lengths", "--config", str(config), "--model", str(model_dir), "--json"
        )
        try:
            out = subprocess.run(
                [program, *args],
                capture_output=True,
                text=True,
                env=worker_env(dict(os.environ)),
                cwd=worker_cwd(),
                timeout=LENGTHS_TIMEOUT_S,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
    if out.returncode != 0:
        return None
    try:
        lengths = json.loads(out.stdout).get("lengths")
    except (json.JSONDecodeError, AttributeError):
        return None
    return [int(n) for n in lengths] if isinstance(lengths, list) else None


def _same_folder_key(path: str) -> str:
    """One key per folder on disk, however it is spelled (symlinks, `..`, trailing slashes)."""
    try:
        return str(Path(path).expanduser().resolve())
    except (OSError, RuntimeError):
        return path


def model_choices() -> list[tuple[str, str]]:
    """(label, value) for the model drop-down: library, demo model, recommended downloads.
    A folder is listed once, however many ways it is known (imported and demo model alike)."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    try:
        from engine.models import list_models

        for e in list_models():
            key = _same_folder_key(e.path)
            if (
                e.available
                and e.format != "gguf"  # a GGUF trains once imported
                and key not in seen
                and (not e.repo_id or e.repo_id not in seen)
            ):
                out.append((f"{model_name(e.name)}  ({e.kind})", e.path))
                seen.add(key)
                if e.repo_id:
                    seen.add(e.repo_id)
    except Exception:  # noqa: BLE001 - a broken library must not empty the list
        pass
    demo = demo_model_path()
    if demo is not None and _same_folder_key(str(demo)) not in seen:
        out.append((f"{demo.name}  (demo model)", str(demo)))
    try:
        from engine.models import recommended_models

        for rec in recommended_models():
            if rec.repo_id not in seen:
                out.append((f"{rec.name}  (download, {rec.download_gb:g} GB)", rec.repo_id))
    except Exception:  # noqa: BLE001
        pass
    return out


def imported_datasets() -> list:
    """The workspace's datasets, newest first, one per content (a re-import of the same file is
    the same dataset)."""
    from engine.data import list_datasets

    out, seen = [], set()
    for d in list_datasets():
        key = d.sha256 or str(d.path)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def dataset_choices() -> list[tuple[str, str]]:
    out = []
    try:
        for d in imported_datasets():
            n = d.splits.get("train", 0)
            out.append((f"{d.name or id_name(d.id)}  ({n} train examples)", str(d.path)))
    except Exception:  # noqa: BLE001
        pass
    out.append(("bank-support  (bundled sample, 288 train examples)", str(sample_dataset())))
    return out


# ---------------------------------------------------------------------------------------------
# Runs


@dataclass
class RunRow:
    id: str
    path: Path
    name: str
    state: str
    reason: str
    model: str
    dataset: str
    step: int
    total_steps: int
    best_val_loss: float | None
    duration: float | None
    created: float
    checkpoints: list[int]
    has_adapter: bool
    model_path: str = ""
    dataset_path: str = ""


def run_rows() -> list[RunRow]:
    """Every run for the Runs page (load_run reports dead `running` workers as interrupted)."""
    from engine.runs import list_runs

    rows = []
    for info in list_runs():
        s = info.status
        numbers = info.numbers()  # engine.runs.run_numbers: the same numbers the Train page shows
        rows.append(
            RunRow(
                id=info.id,
                path=info.path,
                name=run_name(info.config.name, info.id, info.config.data.path),
                state=info.state,
                reason=str(s.get("reason") or ""),
                model=model_name(info.config.model.path),
                dataset=dataset_name(info.config.data.path),
                step=numbers.step,
                total_steps=numbers.total_steps,
                best_val_loss=numbers.best_val_loss,
                duration=numbers.active_seconds,
                created=float(s.get("created") or s.get("updated") or 0),
                checkpoints=list(info.checkpoints),
                has_adapter=info.adapter_path is not None,
                model_path=info.config.model.path,
                dataset_path=info.config.data.path,
            )
        )
    return rows


def run_details(path: Path, smoothing: float = 0.0):
    """(config YAML, loss curves) of one run: app.chart.curves_of of its events.jsonl, built here
    on a worker thread (a long run's log is large) so the window only swaps them in."""
    path = Path(path)
    try:
        text = (path / "config.yaml").read_text(encoding="utf-8")
    except OSError as exc:
        text = f"# config.yaml cannot be read: {exc}"
    return text, run_curves(path, smoothing)


def run_curves(path: Path, smoothing: float):
    """A run's loss curves so far (app.chart.curves_of of its events.jsonl)."""
    from app.chart import curves_of
    from engine.events import read_log

    return curves_of(read_log(Path(path) / "events.jsonl"), smoothing)


def delete_run(path: Path) -> None:
    from engine.runs import delete_run as _delete

    _delete(path)


def export_target(kind: str, run: str, folder: str | None = None):
    """Where an export would go and whether an earlier one is there (the Export dialog asks)."""
    from engine.export.destination import default_folder, export_target

    return export_target(kind, run, folder or default_folder(run))


# ---------------------------------------------------------------------------------------------
# Models


@dataclass
class LibraryRow:
    name: str
    kind: str
    path: str
    size_bytes: int
    quantization: str
    chat_template: str
    parameters: int
    available: bool
    deletable: bool
    problem: str = ""


def library_rows() -> list[LibraryRow]:
    """The model library with what inspect_model says about each (no weights are loaded)."""
    from engine.models import inspect_model, list_models

    rows = []
    for e in list_models():
        quant, template, params, problem = "", "", 0, ""
        if e.format == "gguf":
            problem = "GGUF file: import it to train it"
        elif e.available:
            try:
                info = inspect_model(e.path)
                quant = info.quantization_label
                template = "yes" if info.chat_template else "no (Lathe's default)"
                params = info.parameters
            except Exception as exc:  # noqa: BLE001 - shown in the row, never a crash
                problem = str(exc.args[0] if exc.args else exc)
        else:
            problem = "folder missing"
        rows.append(
            LibraryRow(
                e.name,
                e.kind,
                e.path,
                e.size_bytes,
                quant,
                template,
                params,
                e.available,
                e.deletable,
                problem,
            )
        )
    return rows


def recommended_rows():
    from engine.models import recommended_models

    return recommended_models()


def download_model(repo_id: str, progress=None, cancel: threading.Event | None = None):
    from engine.models import download

    return download(repo_id, progress=progress, cancel=cancel)


def import_model(path: str):
    """A model folder (used in place) or a GGUF file (converted into the library)."""
    from engine.models import import_any

    return import_any(path)


def delete_model(name: str) -> dict:
    from engine.models import delete

    return delete(name)
