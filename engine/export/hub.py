"""Upload an export to the Hugging Face Hub: explicit, with the user's own token.

The token is huggingface_hub's own (`hf auth login`, or HF_TOKEN): Lathe never stores or asks for
one itself. The repository is created private unless the user asks for public. A model card made
from the run folder (base model, data statistics, settings, final metrics) goes up as README.md.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from engine.export.job import ExportError, ProgressFn, Reporter
from engine.export.source import AdapterSource, resolve_adapter
from engine.models.info import is_model_folder
from engine.runspec import is_adapter_folder

_IGNORE = [".*", "*.partial*", "__pycache__/*"]


@dataclass
class UploadResult:
    repo_id: str
    url: str
    folder: Path
    private: bool
    what: str  # "mlx", "adapter" or "gguf"

    def to_dict(self) -> dict:
        return {
            "repo_id": self.repo_id,
            "url": self.url,
            "folder": str(self.folder),
            "private": self.private,
            "what": self.what,
        }


def hub_token() -> str | None:
    """The token huggingface_hub would use (HF_TOKEN or the one saved by `hf auth login`)."""
    from huggingface_hub import get_token

    return get_token()


def upload(
    spec: str | Path | AdapterSource,
    repo_id: str,
    *,
    what: str = "mlx",
    private: bool = True,
    dequantize: bool = False,
    base_model: str | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> UploadResult:
    """Upload a run's export (`what`: "mlx" fused folder, "adapter", or "gguf") or a ready folder.

    For a run, the fused folder (or GGUF) is made first in the run's exports/ unless it exists.
    """
    if what not in ("mlx", "adapter", "gguf"):
        raise ExportError(f"Cannot upload '{what}'.", hint="Choose mlx, adapter or gguf.")
    if not _valid_repo_id(repo_id):
        raise ExportError(
            f"'{repo_id}' is not a Hugging Face repository id.",
            hint="Use the form user/model-name.",
        )
    rep = Reporter(progress, cancel)
    token = hub_token()
    if not token:
        raise ExportError(
            "You are not logged in to Hugging Face.",
            hint="Run `hf auth login` (or set HF_TOKEN) and try again.",
        )
    from engine.export.card import write_card

    plain = None if isinstance(spec, AdapterSource) else Path(str(spec)).expanduser()
    if (
        plain is not None
        and plain.is_dir()
        and (is_model_folder(plain) or _is_gguf_folder(plain))
        and not (plain / "config.yaml").is_file()
    ):
        folder = plain  # a folder exported earlier: upload it as it is (it carries its own card)
        what = "gguf" if _is_gguf_folder(plain) and not is_model_folder(plain) else what
    else:
        source = spec if isinstance(spec, AdapterSource) else resolve_adapter(spec, base_model)
        folder = _prepare(source, what, dequantize, rep)
        write_card(
            folder,
            source,
            kind=what,
            repo_id=repo_id,
            dequantized=dequantize,
            quantization=_quantization(folder),
        )
        from engine.export.destination import add_to_manifest

        add_to_manifest(folder, ["README.md"])

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    rep("upload", f"Creating {repo_id} on the Hugging Face Hub", 0.8)
    try:
        repo = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        rep("upload", f"Uploading {folder.name}", 0.85)
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            commit_message="Upload model fine-tuned with Lathe",
            ignore_patterns=_IGNORE,
        )
    except Exception as exc:  # noqa: BLE001 - network and Hub errors become one sentence
        raise ExportError(
            f"The upload to {repo_id} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}.",
            hint="Check your connection and that your token may write to this repository.",
        ) from None
    url = str(getattr(repo, "url", "") or f"https://huggingface.co/{repo_id}")
    rep("done", f"Uploaded to {url}", 1.0)
    return UploadResult(repo_id, url, folder, private, what)


def _prepare(source: AdapterSource, what: str, dequantize: bool, rep: Reporter) -> Path:
    import shutil

    exports = (source.run_dir / "exports") if source.run_dir else source.adapter_path.parent
    if what == "adapter":
        from engine.export import destination

        folder = exports / f"{source.label}-adapter"
        destination.check_folder(folder, overwrite=True)  # only a folder Lathe made is replaced
        tmp = destination.temp_folder(folder)
        try:
            for name in ("adapters.safetensors", "adapter_config.json"):
                shutil.copy2(source.adapter_path / name, tmp / name)
            if source.chat_template:
                (tmp / "chat_template.jinja").write_text(source.chat_template, encoding="utf-8")
            destination.write_manifest(tmp, "adapter")
            destination.replace_folder(tmp, folder, overwrite=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        rep("prepare", "Adapter ready", 0.8)
        return folder
    if what == "gguf":
        from engine.export.ollama import export_ollama

        folder = exports / f"{source.label}-ollama"
        if not (folder / "model.gguf").is_file():
            export_ollama(
                source, folder, overwrite=True, progress=rep.scaled(0.0, 0.8), cancel=rep.cancel
            )
        return folder
    from engine.export.fuse import default_out_dir, fuse

    folder = default_out_dir(source, dequantize)
    if not is_model_folder(folder):
        fuse(
            source,
            folder,
            dequantize=dequantize,
            overwrite=True,
            progress=rep.scaled(0.0, 0.8),
            cancel=rep.cancel,
        )
    return folder


def _quantization(folder: Path) -> dict | None:
    import json

    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("quantization")
    except (OSError, ValueError):
        return None


def _is_gguf_folder(folder: Path) -> bool:
    return any(folder.glob("*.gguf"))


def _valid_repo_id(repo_id: str) -> bool:
    from engine.export.card import hub_repo_id

    return (
        bool(repo_id) and hub_repo_id(repo_id) is not None and not is_adapter_folder(Path(repo_id))
    )
