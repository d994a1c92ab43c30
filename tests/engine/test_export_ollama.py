"""Ollama Modelfiles: TEMPLATE and stop parameters follow the model's chat template."""

from __future__ import annotations

import pytest

from engine.export import detect_style, export_ollama, modelfile
from engine.templates import CHATML_TEMPLATE, DEFAULT_CHAT_TEMPLATE
from tests.helpers import make_export_run

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def parse_modelfile(text: str) -> dict:
    """FROM, TEMPLATE (triple-quoted or not), SYSTEM and PARAMETER lines of a Modelfile."""
    out: dict = {"PARAMETER": []}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.startswith("#"):
            continue
        key, _, rest = line.partition(" ")
        if rest.startswith('"""'):
            body = rest[3:]
            while not body.endswith('"""'):
                body += "\n" + lines[i]
                i += 1
            value = body[:-3]
        else:
            value = rest
        if key == "PARAMETER":
            name, _, v = value.partition(" ")
            out["PARAMETER"].append((name, v.strip('"')))
        else:
            out[key] = value
    return out


def stops(parsed: dict) -> list[str]:
    return [v for k, v in parsed["PARAMETER"] if k == "stop"]


def test_chatml_modelfile():
    text, style = modelfile("model.gguf", CHATML_TEMPLATE, eos_token="<|im_end|>")
    parsed = parse_modelfile(text)
    assert style.name == "chatml" and parsed["FROM"] == "./model.gguf"
    assert stops(parsed) == ["<|im_start|>", "<|im_end|>"]
    t = parsed["TEMPLATE"]
    assert "<|im_start|>system\n{{ .System }}<|im_end|>\n" in t
    assert "<|im_start|>user\n{{ .Content }}<|im_end|>\n" in t
    assert t.endswith("<|im_start|>assistant\n")


def test_llama3_modelfile():
    text, style = modelfile("model.gguf", LLAMA3_TEMPLATE, eos_token="<|eot_id|>")
    parsed = parse_modelfile(text)
    assert style.name == "llama3"
    assert stops(parsed) == ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    t = parsed["TEMPLATE"]
    assert "<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>" in t
    assert t.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


@pytest.mark.parametrize(
    ("template", "name", "stop"),
    [
        (DEFAULT_CHAT_TEMPLATE, "lathe-default", "### Question:"),
        (
            "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}",
            "mistral-inst",
            "[INST]",
        ),
        (
            "{% for m in messages %}<start_of_turn>{{ m['role'] }}{% endfor %}",
            "gemma",
            "<end_of_turn>",
        ),
        ("{% for m in messages %}<|user|>{{ m['content'] }}<|end|>{% endfor %}", "phi3", "<|end|>"),
    ],
)
def test_other_templates_are_detected(template, name, stop):
    style = detect_style(template, "</s>")
    assert style.name == name and stop in style.stop and style.template


def test_unknown_template_leaves_the_gguf_template_in_charge():
    text, style = modelfile(
        "model.gguf", "{% for m in messages %}<<{{ m.role }}>>{% endfor %}", eos_token="</s>"
    )
    assert style.name == "unknown" and "TEMPLATE" not in parse_modelfile(text)
    assert stops(parse_modelfile(text)) == ["</s>"]


def test_ollama_folder_for_a_stories_run(stories_path, tmp_path):
    run = make_export_run(stories_path, tmp_path / "runs", "story", template=DEFAULT_CHAT_TEMPLATE)
    result = export_ollama(str(run), system="You tell short stories.")
    assert result.path == run / "exports" / "story-ollama"
    assert sorted(p.name for p in result.path.iterdir()) == [
        ".lathe-export.json",
        "Modelfile",
        "model.gguf",
    ]
    parsed = parse_modelfile(result.modelfile.read_text())
    assert parsed["FROM"] == "./model.gguf" and parsed["SYSTEM"] == '"You tell short stories."'
    assert result.template_style == "lathe-default"
    assert stops(parsed) == ["</s>", "### Question:"]
    assert "### Question:\n{{ .Content }}\n\n### Answer:\n" in parsed["TEMPLATE"]
