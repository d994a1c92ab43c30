"""Download models from the Hugging Face Hub into the normal Hugging Face cache.

Built on huggingface_hub: `HfApi.model_info` lists the repo's files with their sizes (one request,
so progress has a true total from the start), `http_get` streams each file with Range-based retries,
and `hf_hub_download` links the finished blob into `snapshots/<commit>/` exactly as every other tool
expects. Tokens come from huggingface_hub's own storage (`hf auth login`, `HF_TOKEN`).

Why Lathe streams the bytes itself instead of calling `hf_hub_download` for them: since
huggingface_hub 1.x a failed or interrupted download deletes its partial file, so a cancelled
4 GB download would start again from zero. Lathe keeps the partial bytes next to the blob as
`blobs/<etag>.lathe-partial` and continues it with an HTTP Range request next time, then checks the
finished file against the Hub's hash (SHA-256 for LFS files, the git blob SHA-1 otherwise) before
it is moved into place.

Only the files a model needs are fetched: safetensors weights and their index, config files,
tokenizer files and chat templates. Never pickle weights (.bin, .pt), never Python code.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.errors import Cancelled, ModelError

NEEDED_PATTERNS = (
    "model*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "*.tiktoken",
    "tiktoken.model",
    "chat_template.jinja",
    "chat_template.json",
)
PARTIAL_SUFFIX = ".lathe-partial"
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_TRUE = {"1", "ON", "YES", "TRUE"}
# A branch or tag name as git allows it (no `..`, no component starting with `.`, no `.lock`
# ending, none of ~^:?*[\\ or spaces), or a commit hash. The Hub's own refs/pr/N fit too.
_REF_PART = re.compile(r"^[A-Za-z0-9_+=,@-][A-Za-z0-9._+=,@-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class DownloadCancelled(Cancelled, ModelError):
    """The user cancelled a download; the bytes so far are kept for the next attempt."""

    kind = "cancelled"


@dataclass
class DownloadProgress:
    """One progress report. Bytes count the whole model, including files already cached."""

    repo_id: str
    filename: str
    done_bytes: int
    total_bytes: int
    files_done: int
    files_total: int

    @property
    def fraction(self) -> float:
        return self.done_bytes / self.total_bytes if self.total_bytes else 1.0


@dataclass
class DownloadResult:
    """Where a downloaded model is and what the download did."""

    repo_id: str
    revision: str
    commit: str
    path: str
    files: list[str]
    total_bytes: int
    downloaded_bytes: int  # fetched by this call (0 when everything was cached)
    resumed_bytes: int  # taken from partial files of an earlier, interrupted attempt
    already_cached: bool
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Environment


def is_offline() -> bool:
    """Whether network access to the Hub is switched off (`HF_HUB_OFFLINE=1`)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return env.upper() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def hub_endpoint() -> str:
    """The Hub's base URL, read now (huggingface_hub reads `HF_ENDPOINT` only at import)."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_cache_dir() -> Path:
    """The Hugging Face cache folder, read now from `HF_HUB_CACHE` / `HF_HOME`."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def repo_storage_folder(repo_id: str, cache_dir: Path | None = None) -> Path:
    """`models--org--name` inside the cache."""
    return (cache_dir or hub_cache_dir()) / ("models--" + repo_id.replace("/", "--"))


def is_needed(filename: str) -> bool:
    """Whether a repo file is one a model needs (top-level weights, config, tokenizer, template)."""
    if "/" in filename:
        return False
    return any(fnmatch.fnmatch(filename, pattern) for pattern in NEEDED_PATTERNS)


def check_repo_id(repo_id: str) -> str:
    repo_id = repo_id.strip()
    if not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise ModelError(
            f"'{repo_id}' is not a Hugging Face model id.",
            "Use the form organisation/name, e.g. mlx-community/Qwen2.5-0.5B-Instruct-4bit.",
        )
    return repo_id


def check_revision(revision: str) -> str:
    """A branch, tag or commit hash; ModelError for anything else (paths, `..`, odd characters).

    The revision names a file under the cache's refs/ folder, so this is what keeps a crafted
    revision from writing outside the Hugging Face cache."""
    rev = str(revision).strip()
    parts = rev.split("/")
    if (
        not rev
        or len(rev) > 200
        or not all(_REF_PART.match(part) for part in parts)
        or any(part.endswith((".lock", ".")) for part in parts)
        or "@{" in rev
    ):
        raise ModelError(
            f"'{revision}' is not a branch, tag or commit.",
            "Use a branch or tag name such as main or v1.0, or a 40-character commit hash.",
        )
    return rev


def _offline_error(action: str) -> ModelError:
    return ModelError(
        f"Cannot {action}: Lathe is offline (HF_HUB_OFFLINE is set).",
        "Unset HF_HUB_OFFLINE and connect to the internet; models already on this Mac keep working.",
    )


def _translate(exc: Exception, repo_id: str, action: str) -> ModelError:
    """Turn huggingface_hub/httpx errors into one sentence for the user."""
    import httpx2
    from huggingface_hub import errors

    if isinstance(exc, ModelError):
        return exc
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return _offline_error(action)
    if isinstance(exc, errors.GatedRepoError):
        return ModelError(
            f"{repo_id} is a gated model: you need to accept its licence and be logged in.",
            f"Accept the terms on https://huggingface.co/{repo_id}, then run `hf auth login` "
            "(or set HF_TOKEN) and try again.",
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return ModelError(f"{repo_id} has no such revision.", "Check the branch, tag or commit.")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return ModelError(
            f"{repo_id} was not found on the Hugging Face Hub (or it is private).",
            "Check the spelling; for a private model log in with `hf auth login`.",
        )
    if isinstance(exc, errors.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            return ModelError(
                f"The Hub refused access to {repo_id} (HTTP {status}).",
                "Log in with `hf auth login` (or set HF_TOKEN) with an account that may read it.",
            )
        return ModelError(
            f"The Hub answered with an error for {repo_id}: HTTP {status}.", "Try again later."
        )
    if isinstance(exc, (httpx2.ConnectError, httpx2.TimeoutException, httpx2.NetworkError)):
        return ModelError(
            f"Cannot {action}: the Hugging Face Hub cannot be reached (no network?).",
            "Check the internet connection and try again; a partial download continues where it stopped.",
        )
    if isinstance(exc, httpx2.HTTPError):
        return ModelError(
            f"Cannot {action}: {exc}.", "Try again; a partial download continues where it stopped."
        )
    raise exc


# ---------------------------------------------------------------------------------------------
# Download


class _Bar:
    """A stand-in for tqdm that http_get drives; reports bytes and raises when cancelled."""

    def __init__(self, on_bytes: Callable[[int], None], **_ignored):
        self._on_bytes = on_bytes

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int | float | None = 1) -> None:
        self._on_bytes(int(n or 0))

    def close(self) -> None:
        pass


def _file_digest(path: Path, algo: str) -> str:
    size = path.stat().st_size
    h = hashlib.new(algo)
    if algo == "sha1":  # git blob id: sha1 of "blob <size>\0" + content
        h.update(f"blob {size}\0".encode())
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(4 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(path: Path, etag: str, expected_size: int | None) -> None:
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise ModelError(
            f"{path.name}: got {size} bytes, expected {expected_size}.", "Try the download again."
        )
    algo = {64: "sha256", 40: "sha1"}.get(len(etag))
    if algo and all(c in "0123456789abcdef" for c in etag.lower()):
        if _file_digest(path, algo) != etag.lower():
            raise ModelError(
                f"{path.name} does not match the Hub's checksum; the damaged copy was removed.",
                "Try the download again.",
            )


def download_model(
    repo_id: str,
    *,
    revision: str | None = None,
    progress: Callable[[DownloadProgress], None] | None = None,
    cancel: threading.Event | None = None,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
) -> DownloadResult:
    """Download the files `repo_id` needs into the Hugging Face cache and return where it is.

    `progress` is called with a DownloadProgress as bytes arrive (from this thread); setting
    `cancel` stops the download at the next chunk with DownloadCancelled, keeping the bytes so far.
    A later call continues each unfinished file where it stopped. Raises ModelError with a clear
    message when offline, unreachable, gated (401/403) or not found.
    """
    from huggingface_hub import HfApi, hf_hub_download, hf_hub_url
    from huggingface_hub.file_download import get_hf_file_metadata, http_get
    from huggingface_hub.utils import build_hf_headers

    from engine.workspace import within

    repo_id = check_repo_id(repo_id)
    revision = check_revision(revision or "main")
    if is_offline():
        raise _offline_error(f"download {repo_id}")
    endpoint = hub_endpoint()
    cache = Path(cache_dir).expanduser() if cache_dir else hub_cache_dir()
    storage = repo_storage_folder(repo_id, cache)
    action = f"download {repo_id}"

    try:
        info = HfApi(endpoint=endpoint, token=token).model_info(
            repo_id, revision=revision, files_metadata=True
        )
    except Exception as exc:  # noqa: BLE001 - translated into a sentence
        raise _translate(exc, repo_id, action) from exc
    commit = info.sha or ""
    if not _COMMIT.match(commit):
        raise ModelError(f"The Hub sent no usable commit for {repo_id}.", "Try again later.")
    siblings = {s.rfilename: s for s in (info.siblings or [])}
    wanted = sorted(name for name in siblings if is_needed(name))
    if not any(name.endswith(".safetensors") for name in wanted):
        pickles = [n for n in siblings if n.endswith((".bin", ".pt", ".pth"))]
        reason = (
            "it has only PyTorch pickle weights (.bin), which Lathe does not load because pickle "
            "files can run code"
            if pickles
            else "it has no .safetensors weights"
        )
        raise ModelError(
            f"{repo_id} cannot be used: {reason}.",
            "Look for an MLX or safetensors version of the model (e.g. from mlx-community).",
        )
    if "config.json" not in wanted:
        raise ModelError(f"{repo_id} has no config.json, so it is not a model Lathe can load.")

    def size_of(name: str) -> int:
        s = siblings[name]
        return int((s.lfs.size if s.lfs else None) or s.size or 0)

    total = sum(size_of(n) for n in wanted)
    snapshot = storage / "snapshots" / commit
    state = {"done": 0, "downloaded": 0, "resumed": 0, "files_done": 0}
    lock = threading.Lock()

    def report(filename: str) -> None:
        if progress is not None:
            progress(
                DownloadProgress(
                    repo_id, filename, state["done"], total, state["files_done"], len(wanted)
                )
            )

    cached_before = [n for n in wanted if (snapshot / n).exists()]
    for name in cached_before:
        state["done"] += size_of(name)
        state["files_done"] += 1
    report("")

    headers = build_hf_headers(token=token)
    try:
        for name in wanted:
            if (snapshot / name).exists():
                continue
            if cancel is not None and cancel.is_set():
                raise DownloadCancelled(
                    f"Download of {repo_id} cancelled.", "Download again to continue."
                )
            url = hf_hub_url(repo_id, name, revision=commit, endpoint=endpoint)
            meta = get_hf_file_metadata(url, token=token, endpoint=endpoint)
            etag = meta.etag or ""
            if not etag or "/" in etag or etag.startswith("."):
                raise ModelError(f"The Hub sent no usable ETag for {name}.", "Try again later.")
            blob = within(storage / "blobs", storage / "blobs" / etag)
            partial = blob.with_name(etag + PARTIAL_SUFFIX)
            blob.parent.mkdir(parents=True, exist_ok=True)
            if not blob.exists():
                have = partial.stat().st_size if partial.exists() else 0
                expected = meta.size if meta.size is not None else size_of(name) or None
                if expected is not None and have > expected:
                    partial.unlink()
                    have = 0
                state["done"] += have
                state["resumed"] += have
                report(name)

                def on_bytes(n: int, name=name) -> None:
                    with lock:
                        state["done"] += n
                        state["downloaded"] += n
                    report(name)
                    if cancel is not None and cancel.is_set():
                        raise DownloadCancelled(
                            f"Download of {repo_id} cancelled.",
                            "Download again to continue where it stopped.",
                        )

                req_headers = dict(headers)
                download_url = meta.location or url
                if not download_url.startswith(endpoint):
                    req_headers.pop("authorization", None)  # signed CDN URLs must not get the token
                with open(partial, "r+b" if have else "wb") as fh:
                    fh.seek(have)
                    http_get(
                        download_url,
                        fh,
                        resume_size=have,
                        headers=req_headers,
                        expected_size=expected,
                        displayed_filename=name,
                        tqdm_class=lambda **kw: _Bar(on_bytes, **kw),
                    )
                try:
                    _verify(partial, etag, expected)
                except ModelError:
                    partial.unlink(missing_ok=True)
                    raise
                os.replace(partial, blob)
            else:
                state["done"] += size_of(name)
            # huggingface_hub finds the blob and creates the snapshot link its own way.
            hf_hub_download(
                repo_id, name, revision=commit, cache_dir=str(cache), endpoint=endpoint, token=token
            )
            state["files_done"] += 1
            report(name)
    except DownloadCancelled:
        raise
    except Exception as exc:  # noqa: BLE001 - translated into a sentence
        raise _translate(exc, repo_id, action) from exc

    _write_ref(storage, revision, commit)
    return DownloadResult(
        repo_id=repo_id,
        revision=revision,
        commit=commit,
        path=str(snapshot),
        files=wanted,
        total_bytes=total,
        downloaded_bytes=state["downloaded"],
        resumed_bytes=state["resumed"],
        already_cached=len(cached_before) == len(wanted),
    )


def _write_ref(storage: Path, revision: str, commit: str) -> None:
    # refs/<branch> lets offline tools (mlx_lm.load("org/name")) find the snapshot.
    if revision == commit:
        return
    from engine.workspace import within, write_text_atomic

    ref = within(storage / "refs", storage / "refs" / check_revision(revision))
    if not ref.exists() or ref.read_text().strip() != commit:
        write_text_atomic(ref, commit)


def cached_snapshot(
    repo_id: str, revision: str = "main", cache_dir: Path | None = None
) -> Path | None:
    """The cached snapshot folder of `repo_id` at `revision` when it has a config, else None."""
    storage = repo_storage_folder(repo_id, cache_dir)
    ref = storage / "refs" / check_revision(revision)
    commit = ref.read_text().strip() if ref.is_file() else revision
    snap = storage / "snapshots" / commit
    return snap if (snap / "config.json").exists() else None


def partial_bytes(repo_id: str, cache_dir: Path | None = None) -> int:
    """Bytes kept from unfinished downloads of `repo_id` (what a resume will not fetch again)."""
    blobs = repo_storage_folder(repo_id, cache_dir) / "blobs"
    return sum(p.stat().st_size for p in blobs.glob("*" + PARTIAL_SUFFIX)) if blobs.is_dir() else 0
