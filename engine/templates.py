"""Chat templates: the model's own, or Lathe's default for base models that have none."""

from __future__ import annotations

# A plain-text template that any tokenizer can encode (no special tokens beyond BOS/EOS). Each
# assistant turn ends with EOS so the tuned model learns to stop. Recorded in the run's config.
DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### Question:\n{{ message['content'] }}\n\n### Answer:\n"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}"
    "{% if not loop.last %}\n\n{% endif %}"
    "{% else %}### {{ message['role'] | capitalize }}:\n{{ message['content'] }}\n\n"
    "{% endif %}"
    "{% endfor %}"
)

# ChatML, used by the tiny test models Lathe builds (and by Qwen and many others).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def model_template(tokenizer) -> str | None:
    """The chat template the tokenizer ships with, or None."""
    inner = getattr(tokenizer, "_tokenizer", tokenizer)
    template = getattr(inner, "chat_template", None)
    if isinstance(template, dict):  # some tokenizers carry named templates
        template = template.get("default") or next(iter(template.values()), None)
    return template or None


def resolve(tokenizer, override: str | None = None) -> tuple[str, str]:
    """(template, source): the override, else the model's own, else Lathe's default.

    `source` is "config", "model" or "default", so a run can report which one it used.
    """
    if override:
        return override, "config"
    own = model_template(tokenizer)
    if own:
        return own, "model"
    return DEFAULT_CHAT_TEMPLATE, "default"
