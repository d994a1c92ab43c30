"""Loading a model to train, chat with or evaluate: one resolver for a model reference (a folder, a
library name, a Hugging Face repo already on this Mac), validated before anything is read, and
mlx-lm's loader with errors a user can act on. Never downloads."""

from __future__ import annotations

from pathlib import Path

from engine.errors import ModelError


def resolve_model(path: str) -> Path:
    """The local folder of the model to train: a folder, a library name or an already downloaded repo.

    Training never downloads (only the Models page does, when the user asks), and the folder is
    validated first: safetensors weights only (pickle files can run code when loaded), a supported
    architecture, a tokenizer. Nothing from the folder is executed.
    """
    from engine.models import resolve, validate_model_dir

    local = Path(path).expanduser()
    if local.is_file():
        from engine.models.library import file_not_folder

        raise file_not_folder(local)
    looks_local = local.exists() or path.startswith((".", "/", "~")) or path.count("/") != 1
    if looks_local and not local.exists():
        raise ModelError(
            f"Model folder {path} does not exist.",
            "Check the path, or pick a model in the library.",
        )
    if not local.is_dir():
        try:
            local = resolve(path)
        except ModelError:
            raise ModelError(
                f"Model {path} is not on this Mac, and training never downloads.",
                f"Download it first on the Models page (or `python -m engine models download {path}`).",
            ) from None
    validate_model_dir(local)
    return local


def load_model(path: str, fine_tune_type: str | None = None, lazy: bool = False):
    """(model, tokenizer) through mlx-lm; a clear error for a missing or unusable model.

    With `fine_tune_type` the model is also made ready for this backend (the run's one place for
    it: engine.models.precision, e.g. a 4-bit model computes in float32 on a CPU) and the result is
    (model, tokenizer, plan). `lazy` leaves the weights unread until they are first used (or
    `mx.eval`ed).
    """
    from mlx_lm.utils import load

    local = resolve_model(path)
    try:
        model, tokenizer = load(str(local), lazy=lazy, trust_remote_code=False)
    except FileNotFoundError as exc:
        raise ModelError(
            f"Model {path} is missing a file: {exc}.", "Re-download or re-import the model."
        ) from None
    except ValueError as exc:
        raise ModelError(
            f"Model {path} cannot be loaded: {exc}", "Check that it is a model mlx-lm supports."
        ) from None
    except Exception as exc:  # noqa: BLE001 - hub/network errors come in many types
        if (
            "offline" in str(exc).lower()
            or "connect" in str(exc).lower()
            or "resolve" in str(exc).lower()
        ):
            raise ModelError(
                f"Model {path} is not on this Mac and cannot be downloaded now ({type(exc).__name__}).",
                "Download it from the Models page while online, or pick a local model.",
            ) from None
        raise
    if fine_tune_type is None:
        return model, tokenizer
    from engine.models.precision import prepare_for_backend

    model, plan = prepare_for_backend(model, fine_tune_type)
    return model, tokenizer, plan
