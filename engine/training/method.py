"""Method and optimizer: freeze the base, add LoRA/DoRA layers (or unfreeze for full
fine-tuning), gradient checkpointing of this model's blocks, and the optimizer of the config.

LoRA layers and learning-rate schedules are mlx-lm's (`linear_to_lora_layers`, `build_schedule`).
"""

from __future__ import annotations

import mlx.core as mx

from engine.config import RunConfig
from engine.errors import LatheError


def parameter_count(model) -> int:
    """The model's real number of parameters: a quantized weight counts the values it packs (eight
    4-bit values per uint32), and quantization scales and biases are not parameters."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    bits = {
        name: int(m.bits)
        for name, m in model.named_modules()
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))
    }
    total = 0
    for key, value in tree_flatten(model.parameters()):
        module, _, leaf = key.rpartition(".")
        if module in bits:
            if leaf in ("scales", "biases"):
                continue
            if leaf == "weight":
                total += value.size * 32 // bits[module]
                continue
        total += value.size
    return int(total)


def apply_method(model, config: RunConfig) -> int:
    """Freeze the base and add trainable LoRA/DoRA layers (or unfreeze for full); returns layers trained."""
    lo = config.lora
    params = {"rank": lo.rank, "scale": lo.scale, "dropout": lo.dropout}
    if lo.fine_tune_type != "full" and lo.keys:
        _check_lora_keys(model, lo.keys, layers_to_train(model, lo.num_layers))
        params["keys"] = list(lo.keys)
    return add_adapters(model, lo.fine_tune_type, lo.num_layers, params)


def layers_to_train(model, num_layers: int) -> int:
    """How many of the last blocks `num_layers` means: all of them for -1 or more than there are."""
    n_model = len(model.layers)
    return n_model if num_layers < 0 or num_layers > n_model else num_layers


def add_adapters(model, fine_tune_type: str, num_layers: int, params: dict) -> int:
    """Freeze the base, then add LoRA/DoRA layers with `params` (rank, scale, dropout, keys) to
    the last `num_layers` blocks, or unfreeze those blocks for full fine-tuning; returns how many.
    Training (`apply_method`) and `models fit --measure` set up a model with this."""
    from mlx_lm.tuner.utils import linear_to_lora_layers

    num_layers = layers_to_train(model, num_layers)
    model.freeze()
    if fine_tune_type == "full":
        for layer in model.layers[len(model.layers) - num_layers :]:
            layer.unfreeze()
    else:
        linear_to_lora_layers(model, num_layers, params, use_dora=fine_tune_type == "dora")
    return num_layers


def _check_lora_keys(model, keys: list[str], num_layers: int) -> None:
    """Refuse `lora.keys` naming modules the trained layers lack (mlx-lm would adapt nothing)."""
    from engine.config import ConfigError

    def adaptable(module) -> bool:
        return hasattr(module, "to_lora") or "Linear" in type(module).__name__

    in_layers = {
        name
        for layer in model.layers[-num_layers:]
        for name, module in layer.named_modules()
        if name and adaptable(module)
    }
    anywhere = {name for name, module in model.named_modules() if name and adaptable(module)}
    unknown = [k for k in keys if k not in in_layers | anywhere]
    if unknown:
        names = sorted(in_layers)
        raise ConfigError(
            f"lora.keys {', '.join(unknown)} {'matches' if len(unknown) == 1 else 'match'} no layer "
            "of this model, so nothing would be trained.",
            f"Use names such as {', '.join(names[:12])}, or leave lora.keys empty to adapt every "
            "linear layer.",
        )


# Optimizer state saved per checkpoint, in copies of the trained parameters (Adam's two moments;
# SGD's and Muon's momentum; Adafactor's factored moments are far smaller, counted as one).


def build_optimizer(config: RunConfig):
    import mlx.optimizers as optim
    from mlx_lm.tuner.utils import build_schedule

    t = config.training
    lr = build_schedule(t.lr_schedule) if t.lr_schedule else t.learning_rate
    classes = {
        "adam": optim.Adam,
        "adamw": optim.AdamW,
        "sgd": optim.SGD,
        "adafactor": optim.Adafactor,
        "muon": optim.Muon,
    }
    try:
        return classes[t.optimizer](learning_rate=lr, **t.optimizer_config)
    except TypeError as exc:
        raise LatheError(
            f"training.optimizer_config does not fit {t.optimizer}: {exc}.",
            "Remove the keys that optimizer does not take.",
        ) from None


def checkpoint_layers(model) -> None:
    """Gradient checkpointing for this model's transformer blocks: their activations are
    recomputed in the backward pass instead of kept (less memory, about a third more compute).

    mlx-lm's `grad_checkpoint` patches the block class itself, so every model of that class loaded
    later in the process would be checkpointed too; here only this model's blocks change class.
    """
    classes: dict[type, type] = {}
    for layer in model.layers:
        cls = type(layer)
        if cls.__name__.startswith("Checkpointed"):
            continue
        if cls not in classes:
            original = cls.__call__

            def checkpointed(module, *args, _original=original, **kwargs):
                def inner(params, *args, **kwargs):
                    module.update(params)
                    return _original(module, *args, **kwargs)

                return mx.checkpoint(inner)(module.trainable_parameters(), *args, **kwargs)

            classes[cls] = type(f"Checkpointed{cls.__name__}", (cls,), {"__call__": checkpointed})
        layer.__class__ = classes[cls]
