"""Token counts per example with a model's tokenizer and chat template (no weights are loaded).

Encoding goes through `engine.encode.Encoder`, the same code training uses, so the report counts
exactly the tokens training will see. Big datasets are encoded by a few worker processes, with a
bounded number of batches in flight, so a large file neither takes minutes on one core nor piles
up in memory.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from engine.data.problems import DataError, Problem, ProblemLog

UNLIMITED = 1 << 30
USE_LATHE_TEMPLATE = (
    "Use Lathe's template, which renders tools (--chat-template lathe; in a run, "
    "model.chat_template: lathe), or a model whose template supports tools."
)
BATCH = 128
INLINE_EXAMPLES = (
    1500  # below this many examples, starting worker processes costs more than it saves
)


def resolve_model_dir(model: str | Path) -> Path:
    """A local model folder: a path, a library model's name, a folder in the workspace's models/,
    or a Hugging Face repo already in the local cache. Never downloads."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    from engine.errors import LatheError
    from engine.models.library import resolve

    try:
        return resolve(str(model))  # a library name (as `models fit/inspect` take)
    except LatheError:
        pass
    from engine import workspace

    local = workspace.models_dir() / workspace.safe_name(str(model))
    if local.is_dir():
        return local
    if "/" in str(model) and not path.is_absolute():
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(str(model), local_files_only=True))
        except Exception:  # noqa: BLE001 - any failure means "not available offline"
            pass
    raise DataError(
        f"Model {model} was not found on this computer.",
        "Give the path of a model folder, or download the model first.",
    )


def load_tokenizer(model: str | Path):
    """The tokenizer of a local model folder (mlx-lm's wrapper), without loading weights."""
    model_dir = resolve_model_dir(model)
    try:
        from mlx_lm.utils import load_tokenizer as _load

        return _load(model_dir)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds for a bad folder
        raise DataError(
            f"Cannot load a tokenizer from {model_dir} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}).",
            "Check that the folder has tokenizer.json or tokenizer.model.",
        ) from None


class TokenCounter:
    """Measures examples for one model: length, trained tokens, truncation."""

    def __init__(
        self,
        model: str | Path,
        *,
        chat_template: str | None = None,
        mask_prompt: bool = True,
        max_seq_length: int = 2048,
        workers: int | None = None,
        tokenizer=None,
    ):
        from engine.encode import Encoder

        self.model = str(model)
        self.model_dir = resolve_model_dir(model) if tokenizer is None else Path(model)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(self.model_dir)
        _no_length_warning(self.tokenizer)
        self.chat_template = chat_template
        self.mask_prompt = mask_prompt
        self.max_seq_length = max_seq_length
        # Full length first: truncation is applied here so "over max_seq_length" can be counted.
        self.encoder = Encoder(
            self.tokenizer,
            chat_template=chat_template,
            mask_prompt=mask_prompt,
            max_seq_length=UNLIMITED,
        )
        self.template_source = self.encoder.template_source
        # What the chat template leaves out: part -> examples, and examples that would train
        # nothing but end-of-turn tokens because of it (see Encoder.template_drops).
        self.drops: Counter = Counter()
        self.hollow = 0
        self.drop_example: str | None = None
        self.workers = workers if workers is not None else min(os.cpu_count() or 1, 8)

    def encode(self, record: dict):
        """`Encoded` for one record, truncated to max_seq_length as training does."""
        from engine.encode import Encoder

        enc = Encoder(
            self.tokenizer,
            chat_template=self.chat_template,
            mask_prompt=self.mask_prompt,
            max_seq_length=self.max_seq_length,
        )
        return enc.encode(record)

    def measure(
        self, examples: Iterable, log: ProblemLog, *, big: bool = False
    ) -> Iterator[tuple[object, int, int]]:
        """(example, length, trained tokens after truncation) for each example that trains at least
        one token; the others are reported to `log` and left out. Order is preserved.

        Small datasets are encoded here; past `INLINE_EXAMPLES` (or from the start when `big`),
        worker processes take over."""
        it = iter(examples)
        inline = []
        if not big or self.workers <= 1:
            for ex in it:
                inline.append(ex)
                if len(inline) >= INLINE_EXAMPLES and self.workers > 1:
                    break
            yield from self._checked(inline, [self._measure(ex.record) for ex in inline], log)
            if len(inline) < INLINE_EXAMPLES or self.workers <= 1:
                yield from self._checked_inline(it, log)
                return
        yield from self._parallel(it, log)

    def _measure(self, record: dict):
        return _measure(self.encoder, self.max_seq_length, record)

    def _checked_inline(self, it: Iterator, log: ProblemLog) -> Iterator:
        for ex in it:
            yield from self._checked([ex], [self._measure(ex.record)], log)

    def _parallel(self, it: Iterator, log: ProblemLog) -> Iterator:
        # spawn, not fork: the parent may hold MLX and tokenizer threads that fork would copy.
        ctx = multiprocessing.get_context("spawn")
        window: deque = deque()
        try:
            pool = ProcessPoolExecutor(
                self.workers,
                mp_context=ctx,
                initializer=_init_worker,
                initargs=(
                    str(self.model_dir),
                    self.chat_template,
                    self.mask_prompt,
                    self.max_seq_length,
                ),
            )
        except (OSError, RuntimeError) as exc:
            log.note(f"Counted tokens in one process (worker processes could not start: {exc}).")
            yield from self._checked_inline(it, log)
            return
        broken = False
        with pool:
            while True:
                batch = [] if broken else [ex for _, ex in zip(range(BATCH), it, strict=False)]
                if batch:
                    try:
                        window.append(
                            (batch, pool.submit(_measure_batch, [ex.record for ex in batch]))
                        )
                    except RuntimeError:  # BrokenProcessPool is a RuntimeError
                        broken = True
                        window.append((batch, None))
                # Keep a few batches per worker queued; collect the oldest when the window is full.
                while window and (len(window) >= 3 * self.workers or not batch):
                    done, future = window.popleft()
                    try:
                        results = future.result() if future is not None else None
                    except RuntimeError:
                        broken, results = True, None
                    if results is None:
                        # A worker died (killed, or cannot start in this process): finish here.
                        results = [self._measure(ex.record) for ex in done]
                    yield from self._checked(done, results, log)
                if not batch and not window:
                    break
        if broken:
            log.note(
                "Worker processes stopped; the rest of the tokens were counted in one process."
            )
            yield from self._checked_inline(it, log)

    def _checked(self, batch: list, results: list, log: ProblemLog) -> Iterator:
        limit = self.max_seq_length
        for ex, (length, trained, trained_full, error, drops, hollow) in zip(
            batch, results, strict=True
        ):
            if error is not None:
                log.add(
                    Problem(
                        "template_error",
                        ex.where,
                        f"the chat template rejects this example ({error})",
                        "Fix the roles or content, or choose another chat template.",
                    )
                )
                continue
            if trained == 0:
                if trained_full > 0:
                    msg = (
                        f"trains 0 tokens: it is {length} tokens long and the answer starts after "
                        f"token {limit}, so truncation cuts it off"
                    )
                    hint = "Shorten the prompt or raise max_seq_length."
                else:
                    msg = "trains 0 tokens after masking (every token is prompt)"
                    hint = "Check that the answer is not empty, or turn off prompt masking."
                log.add(Problem("zero_trained", ex.where, msg, hint))
                continue
            if drops:  # kept, with a warning: the user decides (training refuses the worst case)
                self._drops(ex, drops, hollow, log)
            yield ex, length, trained

    def _drops(self, ex, drops: list[str], hollow: bool, log: ProblemLog) -> None:
        self.drops.update(drops)
        self.hollow += hollow
        what = ", ".join(drops)
        message = f"the chat template leaves out the {what}" + (
            "; only end-of-turn tokens would be trained" if hollow else ""
        )
        if self.drop_example is None:
            self.drop_example = f"{ex.where}: {message}"
        log.add(
            Problem(
                "template_drops",
                ex.where,
                message,
                USE_LATHE_TEMPLATE,
                severity="warning",
            )
        )

    def drop_note(self, examples: int) -> str | None:
        """One sentence with the counts, for the report's notes; None when nothing is dropped."""
        if not self.drops:
            return None

        def examples_(n: int) -> str:
            return f"{n} example{'s' if n != 1 else ''}"

        counts = ", ".join(f"{part} ({examples_(n)})" for part, n in self.drops.most_common())
        whose = {
            "model": "The model's chat template",
            "default": "Lathe's default chat template",
        }.get(self.template_source, "The chat template given")
        hollow = (
            f": {self.hollow} of {examples} examples would train nothing but the end-of-turn token"
            if self.hollow
            else ""
        )
        return (
            f"{whose} does not render {counts}{hollow}. {USE_LATHE_TEMPLATE} First: "
            f"{self.drop_example}."
        )


def _no_length_warning(tokenizer) -> None:
    # transformers warns when a text is longer than the model's context; the report counts and
    # explains those examples itself, so the warning is only noise on stderr.
    inner = getattr(tokenizer, "_tokenizer", tokenizer)
    try:
        inner.model_max_length = UNLIMITED
    except (AttributeError, TypeError):
        pass


def _measure(encoder, limit: int, record: dict) -> tuple[int, int, int, str | None, list, bool]:
    try:
        enc = encoder.encode(record)
    except Exception as exc:  # noqa: BLE001 - jinja's raise_exception and tokenizer errors
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return 0, 0, 0, text[:200], [], False
    drops = encoder.template_drops(record)
    # Token 0 is never a target (nothing predicts it); see Encoded.trained_tokens. Weights may be
    # fractions (loss weights): count the tokens that train at all.
    trained = sum(1 for w in enc.weights[1:limit] if w)
    full = sum(1 for w in enc.weights[1:] if w)
    return len(enc.tokens), trained, full, None, drops.parts, drops.hollow


_WORKER: dict = {}


def _init_worker(model_dir: str, chat_template: str | None, mask_prompt: bool, limit: int) -> None:
    from engine.encode import Encoder

    tokenizer = load_tokenizer(model_dir)
    _no_length_warning(tokenizer)
    _WORKER["encoder"] = Encoder(
        tokenizer, chat_template=chat_template, mask_prompt=mask_prompt, max_seq_length=UNLIMITED
    )
    _WORKER["limit"] = limit


def _measure_batch(records: list[dict]) -> list[tuple]:
    enc, limit = _WORKER["encoder"], _WORKER["limit"]
    return [_measure(enc, limit, r) for r in records]
