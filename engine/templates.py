"""Chat templates: the model's own, or Lathe's default for base models that have none."""

from __future__ import annotations

# A plain-text template that any tokenizer can encode (no special tokens beyond BOS/EOS). Each
# assistant turn ends with EOS so the tuned model learns to stop. Recorded in the run's config.
# Tools (docs: README "Datasets"): tool definitions come first, one JSON object a line under
# "### Tools:"; an assistant's tool calls follow its text as <tool_call>{"name", "arguments"}
# </tool_call>, one a line; each tool result is "### Tool result:" and its text, and the last
# result of a row is followed by "### Answer:" for the assistant's next turn.
DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}### Tools:\n"
    'To call a tool, answer with <tool_call>{"name": ..., "arguments": {...}}</tool_call>.\n'
    "{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}{{ '\\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### Question:\n{{ message['content'] }}\n\n### Answer:\n"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] or '' }}"
    "{% for call in message['tool_calls'] or [] %}"
    "{% set fn = call['function'] if call['function'] is defined else call %}"
    "{% if message['content'] or not loop.first %}\n{% endif %}"
    "<tool_call>{{ {'name': fn['name'], 'arguments': fn['arguments']} | tojson }}</tool_call>"
    "{% endfor %}"
    "{{ eos_token }}"
    "{% if not loop.last %}\n\n{% endif %}"
    "{% elif message['role'] == 'tool' %}### Tool result:\n{{ message['content'] }}\n\n"
    "{% if loop.last or loop.nextitem['role'] != 'tool' %}### Answer:\n{% endif %}"
    "{% else %}### {{ message['role'] | capitalize }}:\n{{ message['content'] }}\n\n"
    "{% endif %}"
    "{% endfor %}"
)

# Names a config or `--chat-template` may give instead of template text: Lathe's default.
DEFAULT_TEMPLATE_NAMES = ("lathe", "default")

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
    """(template, source): the override, else the model's own, else Lathe's default. An override
    of "lathe" (or "default") names Lathe's default template.

    `source` is "config", "model" or "default", so a run can report which one it used.
    """
    if override and override.strip().lower() in DEFAULT_TEMPLATE_NAMES:
        return DEFAULT_CHAT_TEMPLATE, "default"
    if override:
        return override, "config"
    own = model_template(tokenizer)
    if own:
        return own, "model"
    return DEFAULT_CHAT_TEMPLATE, "default"
