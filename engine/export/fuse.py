"""Fuse an adapter into its base model and save an MLX model folder, then check the round trip.

Built on mlx-lm: `load_model`, `tuner.utils.load_adapters`, each LoRA/DoRA layer's own `fuse()`,
`dequantize_model`, `save_model` and `save_config` (the same steps as `mlx_lm fuse`). What Lathe
adds: the folder is written under a temporary name and renamed (complete or absent), tokenizer
files are copied as the base ships them, the run's chat template is written into
`tokenizer_config.json` when the base has none (or a different one), a model card is written, the
job reports progress and can be cancelled, and a round-trip check compares the fused model with
base + adapter, greedily, token for token.

A quantized base (QLoRA) can be fused two ways: re-quantized to the base's bits (small, but the
adapter's change is rounded into 4-bit groups) or dequantized (exact, larger). By default
(`dequantize=None`) Lathe fuses re-quantized in memory first and asks both models a few probe
prompts greedily: when the answers agree it writes the quantized fuse, otherwise the dequantized
one, so the folder answers like the base + adapter the user tested; `FuseResult.choice` says
which and why. `dequantize=True/False` decides without probing.
"""

from __future__ import annotations

import json
import shutil
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.export import destination
from engine.export.job import ExportError, ProgressFn, Reporter, private_output
from engine.export.source import AdapterSource, resolve_adapter, resolve_base_model

# Tokenizer and generation files a model folder carries besides its weights and config.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
    "tiktoken.model",
)

DEFAULT_PROMPTS = (
    "Hello! What can you help me with?",
    "Once upon a time",
    "Write one sentence about the sea.",
)


@dataclass
class RoundTrip:
    """Greedy generations of the fused model against base + adapter, prompt by prompt."""

    required: bool  # agreement is required (dequantized/float fuse) or only reported (re-quantized)
    prompts: list[str]
    agree: list[bool]
    prompt_tokens_agree: bool
    tokens_per_prompt: int
    max_logit_diff: float
    mismatches: list[dict] = field(default_factory=list)

    @property
    def all_agree(self) -> bool:
        return all(self.agree) and self.prompt_tokens_agree

    @property
    def passed(self) -> bool:
        return self.all_agree or not self.required

    def summary(self) -> str:
        n, total = sum(self.agree), len(self.agree)
        if self.all_agree:
            verdict = f"agree token for token on all {total} prompts"
        else:
            verdict = f"agree on {n} of {total} prompts"
            if not self.prompt_tokens_agree:
                verdict += " and format the prompts differently"
        tail = ""
        if not self.all_agree:
            tail = (
                " (expected: the fused weights were re-quantized)"
                if not self.required
                else " (they must agree: this fuse is wrong)"
            )
        return (
            f"Round trip: the fused model and base + adapter {verdict} ({self.tokens_per_prompt} "
            f"greedy tokens each; largest first-token logit difference {self.max_logit_diff:.2g}){tail}."
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(all_agree=self.all_agree, passed=self.passed)
        return d


@dataclass
class FuseResult:
    path: Path
    base_model: str
    adapter_path: Path
    dequantized: bool
    quantization: dict | None
    chat_template: str  # "base" (the base's own), "run" (written from the run) or "none"
    size_bytes: int
    round_trip: RoundTrip | None = None
    # Why this variant was written (automatic choice for a quantized base), and the probe of the
    # re-quantized fuse against base + adapter it was based on.
    choice: str = ""
    probe: RoundTrip | None = None

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "base_model": self.base_model,
            "adapter_path": str(self.adapter_path),
            "dequantized": self.dequantized,
            "quantization": self.quantization,
            "chat_template": self.chat_template,
            "size_bytes": self.size_bytes,
            "round_trip": self.round_trip.to_dict() if self.round_trip else None,
            "choice": self.choice,
            "probe": self.probe.to_dict() if self.probe else None,
        }


def default_out_dir(source: AdapterSource, dequantize: bool) -> Path:
    name = f"{source.label}-fused{'-dequantized' if dequantize else ''}"
    if source.run_dir is not None:
        return source.run_dir / "exports" / name
    return source.adapter_path.parent / name


def fuse_in_memory(
    source: AdapterSource,
    *,
    dequantize: bool | None,
    rep: Reporter,
    probe_prompts: list[str] | None = None,
    max_tokens: int = 16,
):
    """Load base + adapter and fuse; returns (model, config, base_path, probe). Nothing is written.

    `dequantize=None` (a quantized base): probe the re-quantized fuse against base + adapter on
    `probe_prompts` and fall back to the dequantized fuse when they disagree (module docstring);
    `probe` is that comparison (None when no probe ran). The result's config says which it is.
    """
    import mlx.core as mx
    from mlx_lm.tuner.utils import load_adapters
    from mlx_lm.utils import dequantize_model, load_model

    base_path = resolve_base_model(source.base_model)
    rep("load", f"Loading base model {source.base_model}", 0.0)
    try:
        model, config = load_model(base_path, lazy=True)
    except ValueError as exc:
        raise ExportError(f"The base model {source.base_model} cannot be loaded: {exc}") from None
    rep("load", "Applying the adapter", 0.3)
    try:
        model = load_adapters(model, str(source.adapter_path))
    except (ValueError, KeyError) as exc:
        first = str(exc).splitlines()[0]
        raise ExportError(
            f"The adapter in {source.adapter_path} does not fit the base model {source.base_model} ({first}).",
            hint="Fuse it with the base model it was trained on.",
        ) from None
    quantized = bool(config.get("quantization"))
    probe = None
    layers = [(n, m) for n, m in model.named_modules() if hasattr(m, "fuse")]
    if dequantize is None and quantized:
        from mlx_lm.utils import load_tokenizer

        rep("probe", "Asking base + adapter the probe prompts", 0.3)
        tok = load_tokenizer(base_path)
        prompts = list(probe_prompts or DEFAULT_PROMPTS)
        ids = [_encode(tok, p, source.chat_template) for p in prompts]
        mx.eval(model.parameters())
        ref = [_greedy(model, i, max_tokens) for i in ids]
        _fuse_layers(model, layers, False, rep, 0.4, 0.5)
        rep("probe", "Asking the re-quantized fuse the same prompts", 0.5)
        got = [_greedy(model, i, max_tokens) for i in ids]
        probe = compare(prompts, ref, got, True, max_tokens, required=False)
        dequantize = not probe.all_agree
        if dequantize:
            _fuse_layers(model, layers, True, rep, 0.6, 0.9)
    else:
        _fuse_layers(model, layers, bool(dequantize), rep, 0.3, 0.9)
    if dequantize:
        model = dequantize_model(model)
        config.pop("quantization", None)
        config.pop("quantization_config", None)
    mx.eval(model.parameters())
    rep("fuse", f"Fused {len(layers)} adapter layers", 1.0)
    return model, config, base_path, probe


def _fuse_layers(model, layers, dequantize: bool, rep: Reporter, start: float, end: float) -> None:
    """Replace each adapter layer (kept in `layers`, so this can run again) by its fuse."""
    import mlx.core as mx
    from mlx.utils import tree_unflatten

    fused = []
    for i, (name, module) in enumerate(layers):
        rep("fuse", f"Fusing {name}", start + (end - start) * i / max(len(layers), 1))
        fused.append((name, module.fuse(dequantize=dequantize)))
        mx.eval(fused[-1][1].parameters())
    if fused:
        model.update_modules(tree_unflatten(fused))


def base_chat_template(model_dir: Path) -> str | None:
    """The chat template a model folder ships (chat_template.jinja, or tokenizer_config.json's)."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    cfg = _read_json(model_dir / "tokenizer_config.json")
    template = cfg.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template or None


def copy_tokenizer(base_path: Path, out: Path, run_template: str | None) -> str:
    """Copy the base's tokenizer files into `out`; write the run's chat template where needed.

    Returns where the folder's chat template comes from: "base", "run" or "none".
    """
    for name in TOKENIZER_FILES:
        if (base_path / name).is_file():
            shutil.copy2(base_path / name, out / name)
    own = base_chat_template(base_path)
    if run_template and (own or "").strip() != run_template.strip():
        cfg_path = out / "tokenizer_config.json"
        cfg = _read_json(cfg_path)
        cfg["chat_template"] = run_template
        cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if (out / "chat_template.jinja").is_file():  # transformers prefers this file over the key
            (out / "chat_template.jinja").write_text(run_template, encoding="utf-8")
        return "run"
    return "base" if own else "none"


@private_output
def fuse(
    spec: str | Path | AdapterSource,
    out: str | Path | None = None,
    *,
    dequantize: bool | None = None,
    check: bool = True,
    prompts: list[str] | None = None,
    max_tokens: int = 16,
    base_model: str | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> FuseResult:
    """Fuse a run's adapter (`RUN[:STEP]` or an adapter folder) into its base; save an MLX folder.

    `dequantize=True` writes float weights (exact); `False` keeps a quantized base quantized with
    its own bits and group size; `None` (default) keeps it quantized only when that fuse answers
    the probe prompts like base + adapter (module docstring; `result.choice` says which).
    `check` runs the round trip afterwards (`result.round_trip`).
    """
    import mlx.core as mx
    from mlx_lm.utils import save_config, save_model

    rep = Reporter(progress, cancel)
    source = spec if isinstance(spec, AdapterSource) else resolve_adapter(spec, base_model)
    chosen_out = Path(out).expanduser() if out else None
    keep = tuple(
        p for p in (source.adapter_path, source.run_dir, Path(source.base_model).expanduser()) if p
    )
    if chosen_out is not None:
        _check_destination(chosen_out, overwrite, keep)

    model, config, base_path, probe = fuse_in_memory(
        source,
        dequantize=dequantize,
        rep=rep.sub(0.0, 0.5),
        probe_prompts=prompts,
        max_tokens=max_tokens,
    )
    quantization = config.get("quantization")
    if probe is not None:
        dequantize = not probe.all_agree
    out = chosen_out or default_out_dir(source, bool(dequantize))
    if chosen_out is None:
        _check_destination(out, overwrite, keep)
    choice = _choice_text(probe)
    tmp = destination.temp_folder(out)
    try:
        rep("save", f"Writing {out.name}", 0.5)
        save_model(tmp, model, donate_model=True)
        del model
        mx.clear_cache()
        save_config(dict(config), config_path=tmp / "config.json")
        rep("save", "Copying the tokenizer", 0.6)
        template_from = copy_tokenizer(base_path, tmp, source.chat_template)
        from engine.export.card import write_card

        write_card(tmp, source, kind="mlx", dequantized=bool(dequantize), quantization=quantization)
        destination.write_manifest(tmp, "mlx")
        rep.check()
        destination.replace_folder(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result = FuseResult(
        path=out,
        base_model=source.base_model,
        adapter_path=source.adapter_path,
        dequantized=bool(dequantize) or not quantization,
        quantization=quantization,
        chat_template=template_from,
        size_bytes=_folder_size(out),
        choice=choice,
        probe=probe,
    )
    if choice:
        rep("save", choice, 0.64)
    rep("save", f"Saved the fused model to {out}", 0.65)
    if check:
        # A cancelled check leaves the complete fused folder in place; only the check is lost.
        result.round_trip = round_trip(
            out,
            source,
            required=result.dequantized,
            prompts=prompts,
            max_tokens=max_tokens,
            rep=rep.sub(0.65, 1.0),
        )
    rep("done", f"Fused model ready: {out}", 1.0)
    return result


def round_trip(
    fused_dir: str | Path,
    source: AdapterSource,
    *,
    required: bool,
    prompts: list[str] | None = None,
    max_tokens: int = 16,
    rep: Reporter | None = None,
) -> RoundTrip:
    """Greedy generations from base + adapter and from the fused folder, compared token for token.

    Each side formats the prompts with its own chat template (the run's, and the one the fused
    folder carries), so the check also covers the tokenizer and template written into the folder.
    One model is in memory at a time.
    """
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.tuner.utils import load_adapters

    from engine.models.precision import prepare_for_backend

    rep = rep or Reporter()
    prompts = list(prompts or DEFAULT_PROMPTS)
    base_path = resolve_base_model(source.base_model)

    rep("check", "Round trip: generating with base + adapter", 0.0)
    # Both sides compute as chat does on this backend (engine.models.precision: float32 on a CPU,
    # where a 4-bit model would take minutes per answer); on a GPU they stay as stored.
    model, tok = load(str(base_path))
    kind = _read_json(source.adapter_path / "adapter_config.json").get("fine_tune_type", "lora")
    model, _ = prepare_for_backend(model, kind)
    model = load_adapters(model, str(source.adapter_path))
    model.eval()
    ref = [_greedy(model, _encode(tok, p, source.chat_template), max_tokens) for p in prompts]
    ref_prompts = [_encode(tok, p, source.chat_template) for p in prompts]
    del model
    mx.clear_cache()

    rep("check", "Round trip: generating with the fused model", 0.5)
    model, tok = load(str(fused_dir))
    model, _ = prepare_for_backend(model, kind)
    got_prompts = [_encode(tok, p, None) for p in prompts]
    got = [_greedy(model, ids, max_tokens) for ids in got_prompts]
    del model
    mx.clear_cache()

    result = compare(prompts, ref, got, ref_prompts == got_prompts, max_tokens, required)
    rep("check", result.summary(), 1.0)
    return result


def compare(prompts, ref, got, prompt_tokens_agree: bool, max_tokens: int, required: bool):
    """A RoundTrip from two sides' `_greedy` results, prompt by prompt."""
    import mlx.core as mx

    agree, mismatches, diff = [], [], 0.0
    for prompt, (ref_tokens, ref_logits), (got_tokens, got_logits) in zip(
        prompts, ref, got, strict=True
    ):
        agree.append(ref_tokens == got_tokens)
        diff = max(diff, float(mx.max(mx.abs(ref_logits - got_logits)).item()))
        if ref_tokens != got_tokens:
            at = next(
                (i for i, (a, b) in enumerate(zip(ref_tokens, got_tokens, strict=False)) if a != b),
                len(ref_tokens),
            )
            mismatches.append(
                {"prompt": prompt, "position": at, "expected": ref_tokens, "got": got_tokens}
            )
    return RoundTrip(
        required=required,
        prompts=prompts,
        agree=agree,
        prompt_tokens_agree=prompt_tokens_agree,
        tokens_per_prompt=max_tokens,
        max_logit_diff=diff,
        mismatches=mismatches,
    )


def _choice_text(probe: RoundTrip | None) -> str:
    if probe is None:
        return ""
    n, total = sum(probe.agree), len(probe.agree)
    if probe.all_agree:
        return (
            f"Kept the base's quantization: the re-quantized fuse answered all {total} probe "
            "prompts token for token like base + adapter."
        )
    return (
        f"Wrote the dequantized fuse (exact, larger): the re-quantized one agreed with base + "
        f"adapter on {n} of {total} probe prompts (largest first-token logit difference "
        f"{probe.max_logit_diff:.2g}), so it would not answer like the model you tested. To "
        "write the quantized one anyway: export fuse --keep-quantized."
    )


def _encode(tok, prompt: str, template: str | None) -> list[int]:
    template = template or getattr(tok, "chat_template", None)
    if template:
        ids = tok.apply_chat_template(
            [{"role": "user", "content": prompt}],
            chat_template=template,
            add_generation_prompt=True,
        )
        if isinstance(ids, dict):  # some tokenizers answer a BatchEncoding
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    return [int(i) for i in tok.encode(prompt)]


def _greedy(model, ids: list[int], n: int):
    """`n` argmax tokens after `ids`, and the logits of the first one (float32)."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    logits = model(mx.array(ids)[None], cache=cache)[0, -1].astype(mx.float32)
    first = logits
    tokens = []
    for _ in range(n):
        token = int(mx.argmax(logits).item())
        tokens.append(token)
        logits = model(mx.array([[token]]), cache=cache)[0, -1].astype(mx.float32)
    mx.eval(first)
    return tokens, first


def _check_destination(out: Path, overwrite: bool, keep: tuple[Path, ...] = ()) -> None:
    resolved = out.resolve()
    for path in keep:
        path = Path(path).resolve()
        if resolved == path or path.is_relative_to(resolved):
            raise ExportError(
                f"{out} holds the model or adapter being exported.",
                hint="Choose another output folder.",
            )
    destination.check_folder(out, overwrite)


def _folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
