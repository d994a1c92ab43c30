"""A token-level view of one example: the text after the chat template, token by token, each
marked trained or masked, exactly as `engine.encode.Encoder` prepares it for training."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from engine.data.pipeline import SPLIT_CODES, Options, Scan
from engine.data.problems import DataError, ProblemLog


@dataclass
class TokenPiece:
    id: int
    text: str  # the characters this token adds ("" for a token that completes nothing yet)
    trained: bool


@dataclass
class TokenView:
    index: int
    split: str | None
    where: str  # file and line of the example
    record: dict  # the normalised record
    text: str  # the exact text after the chat template
    pieces: list[TokenPiece]
    length: int
    trained_tokens: int
    truncated: bool
    max_seq_length: int
    template_source: str

    def to_dict(self) -> dict:
        return asdict(self)


def token_view(
    path: str | Path,
    model: str | Path,
    index: int = 0,
    *,
    split: str | None = None,
    options: Options | None = None,
    max_seq_length: int = 2048,
    mask_prompt: bool = True,
    chat_template: str | None = None,
    counter=None,
) -> TokenView:
    """Example number `index` (from 0, counting kept examples in reading order, or within `split`
    after splitting) rendered and tokenized for `model`."""
    from engine.data.importer import _run, dataset_dir
    from engine.data.tokens import TokenCounter

    if index < 0:
        raise DataError(f"Example index {index} is negative.", "Count examples from 0.")
    options = options or Options()
    folder = dataset_dir(path) if not Path(path).expanduser().exists() else None
    path = folder or path
    if counter is None:
        counter = TokenCounter(
            model,
            chat_template=chat_template,
            mask_prompt=mask_prompt,
            max_seq_length=max_seq_length,
            workers=1,
        )
    if split is not None and split not in SPLIT_CODES:
        raise DataError(f"Unknown split '{split}'.", "Use train, valid or test.")
    example = None
    if split is None:
        total = 0
        with Scan(path, options, ProblemLog(strict=options.strict)) as scan:
            for ex in scan.examples():
                if total == index:
                    example = ex
                    break
                total += 1
    else:
        # The split is only known after a full pass (held-out examples are chosen by seed); a
        # second pass fetches the example, so nothing but the split codes is held in memory.
        _, final = _run(path, options, None, None)
        positions = [i for i, code in enumerate(final) if code == SPLIT_CODES[split]]
        total = len(positions)
        if index < total:
            with Scan(path, options, ProblemLog()) as scan:
                for i, ex in enumerate(scan.examples()):
                    if i == positions[index]:
                        example = ex
                        break
    if example is None:
        where = f" in {split}" if split else ""
        raise DataError(
            f"There is no example {index}{where}: the dataset has {total} usable "
            f"example(s){where}.",
            f"Use an index from 0 to {max(0, total - 1)}.",
        )
    enc = counter.encode(example.record)
    text = counter.encoder.render(example.record)
    pieces = _pieces(counter.tokenizer, enc.tokens, enc.weights)
    return TokenView(
        index=index,
        split=split,
        where=example.where,
        record=example.record,
        text=text,
        pieces=pieces,
        length=len(enc.tokens),
        trained_tokens=enc.trained_tokens,
        truncated=enc.truncated,
        max_seq_length=max_seq_length,
        template_source=counter.template_source,
    )


def _pieces(tokenizer, tokens: list[int], weights: list[int]) -> list[TokenPiece]:
    # mlx-lm's streaming detokenizer gives each token's text with spaces and multi-byte
    # characters right, which decoding tokens one by one does not.
    detok = getattr(tokenizer, "detokenizer", None)
    out = []
    if detok is None:
        for t, w in zip(tokens, weights, strict=True):
            out.append(TokenPiece(int(t), tokenizer.decode([t]), bool(w)))
        return out
    detok.reset()
    for i, (t, w) in enumerate(zip(tokens, weights, strict=True)):
        detok.add_token(t)
        if i == len(tokens) - 1:
            detok.finalize()
        out.append(TokenPiece(int(t), detok.last_segment, bool(w)))
    return out
