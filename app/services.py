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
    """What the demo will do, in words, without building anything. No durations or sizes that
    would go stale when the demo's model changes: the model is named from the same place the
    demo takes it (demo_model_path, engine.commands.train.demo_defaults)."""
    demo = demo_model_path()
    if demo is not None and not demo.name.startswith("lathe-demo"):
        return (
            f"The demo fine-tunes {model_name(demo)}, a small model already on this Mac, on the "
            "sample dataset: you watch the loss fall for a few minutes, then chat with the "
            "result. A model this small will not give useful answers; it shows the whole flow."
        )
    return (
        "No model is downloaded yet, so the demo builds a tiny random-weight model on this Mac: "
        "it learns the sample's answers by heart but knows nothing else. Download a real model "
        "on the Models page for real work."
    )


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
    from engine.commands.train import demo_defaults

    cfg = RunConfig()
    notes: list[str] = []
    demo_defaults(cfg, notes)
    return cfg, notes


def demo_model_path() -> Path | None:
    """The demo model folder when it exists already (never builds)."""
    from engine.workspace import models_dir, shared_stories_model

    stories = shared_stories_model()
    if stories is not None:
        return stories
    tiny = models_dir() / "lathe-demo-tiny"
    return tiny if (tiny / "model.safetensors").exists() else None


def fit_estimate(model_ref: str, cfg: RunConfig, budget_bytes: int | None = None):
    """engine.models.estimate for a local folder, a library model or a recommended repo id."""
    from engine.errors import ModelError
    from engine.models import estimate, recommended_models

    ref = model_ref.strip()
    if not ref:
        raise ModelError("no model chosen yet.")
    path = Path(ref).expanduser()
    if path.is_dir():
        return estimate(path, cfg, budget_bytes=budget_bytes)
    for rec in recommended_models():
        if rec.repo_id == ref:
            return estimate(rec.info, cfg, budget_bytes=budget_bytes)
    from engine.models import resolve

    return estimate(resolve(ref), cfg, budget_bytes=budget_bytes)


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
            if e.available and key not in seen and (not e.repo_id or e.repo_id not in seen):
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
        started, finished = s.get("started"), s.get("finished")
        duration = None
        summary = s.get("summary") or {}
        if isinstance(summary, dict) and summary.get("wall_seconds"):
            duration = float(summary["wall_seconds"])
        elif started and finished:
            duration = float(finished) - float(started)
        elif started and info.state == "running":
            import time

            duration = time.time() - float(started)
        rows.append(
            RunRow(
                id=info.id,
                path=info.path,
                name=run_name(info.config.name, info.id, info.config.data.path),
                state=info.state,
                reason=str(s.get("reason") or ""),
                model=model_name(info.config.model.path),
                dataset=dataset_name(info.config.data.path),
                step=int(s.get("step") or 0),
                total_steps=int(s.get("total_steps") or 0),
                best_val_loss=info.best_val_loss,
                duration=duration,
                created=float(s.get("created") or s.get("updated") or 0),
                checkpoints=list(info.checkpoints),
                has_adapter=info.adapter_path is not None,
                model_path=info.config.model.path,
                dataset_path=info.config.data.path,
            )
        )
    return rows


def run_details(path: Path) -> tuple[str, list[dict]]:
    """(config YAML, events) of one run."""
    from engine.events import read_log

    path = Path(path)
    try:
        text = (path / "config.yaml").read_text(encoding="utf-8")
    except OSError as exc:
        text = f"# config.yaml cannot be read: {exc}"
    return text, read_log(path / "events.jsonl")


def delete_run(path: Path) -> None:
    from engine.runs import delete_run as _delete

    _delete(path)


def export_run(kind: str, run: str, progress=None, cancel: threading.Event | None = None):
    """Run one export (fuse / gguf / ollama) of a run's adapter; returns the engine's result."""
    from engine import export

    fn = {"fuse": export.fuse, "gguf": export.export_gguf, "ollama": export.export_ollama}[kind]
    return fn(str(run), progress=progress, cancel=cancel)


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
        if e.available:
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
    from engine.models import import_model as _import

    return _import(path)


def quantize_model(name_or_path: str, bits: int, progress=None):
    from engine.models import quantize

    return quantize(name_or_path, bits=bits, progress=progress)


def delete_model(name: str) -> dict:
    from engine.models import delete

    return delete(name)
