"""Ollama: a folder with the GGUF and a Modelfile, ready for `ollama create NAME -f Modelfile`.

The Modelfile's TEMPLATE (Go template syntax) and `stop` parameters are chosen from the model's
Jinja chat template: ChatML, Llama 3, Lathe's default template for base models, Mistral/Llama 2
`[INST]`, Gemma and Phi-3 are recognised from the template text. An unrecognised template gets no
TEMPLATE line (Ollama then derives one from the chat template inside the GGUF) and a note says so.
"""

from __future__ import annotations

import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from engine.export import destination
from engine.export.job import ExportError, ProgressFn, Reporter, private_output
from engine.export.source import AdapterSource, resolve_adapter
from engine.models.info import is_model_folder
from engine.templates import DEFAULT_CHAT_TEMPLATE


@dataclass
class TemplateStyle:
    name: str
    template: str | None  # Go template for Ollama; None: let Ollama use the GGUF's own
    stop: list[str] = field(default_factory=list)


def _chatml() -> TemplateStyle:
    template = (
        "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
        "{{ range .Messages }}"
        '{{ if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n'
        '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n{{ .Content }}<|im_end|>\n'
        "{{ end }}"
        "{{ end }}<|im_start|>assistant\n"
    )
    return TemplateStyle("chatml", template, ["<|im_start|>", "<|im_end|>"])


def _llama3() -> TemplateStyle:
    template = (
        "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
        "{{ range .Messages }}"
        '{{ if or (eq .Role "user") (eq .Role "assistant") }}'
        "<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
        "{{ end }}"
        "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    return TemplateStyle(
        "llama3", template, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    )


def _lathe_default(eos: str) -> TemplateStyle:
    # Mirrors engine.templates.DEFAULT_CHAT_TEMPLATE: llama.cpp adds BOS itself; earlier assistant
    # turns end with EOS and a blank line, and the prompt ends with "### Answer:\n". Tools, tool
    # calls and tool results are written as the Jinja template writes them (Ollama prints a tool
    # and a call's arguments as JSON). Go templates cannot look ahead, so here every tool result,
    # not only the last of a row, is followed by "### Answer:".
    template = (
        "{{ if .Tools }}### Tools:\n"
        'To call a tool, answer with <tool_call>{"name": ..., "arguments": {...}}</tool_call>.\n'
        "{{ range .Tools }}{{ . }}\n{{ end }}\n{{ end }}"
        "{{ if .System }}{{ .System }}\n\n{{ end }}"
        "{{ range .Messages }}"
        '{{ if eq .Role "user" }}### Question:\n{{ .Content }}\n\n### Answer:\n'
        '{{ else if eq .Role "assistant" }}{{ .Content }}'
        "{{ if and .Content .ToolCalls }}\n{{ end }}"
        "{{ range $i, $c := .ToolCalls }}{{ if $i }}\n{{ end }}"
        '<tool_call>{"name": "{{ $c.Function.Name }}", "arguments": {{ $c.Function.Arguments }}}'
        "</tool_call>{{ end }}" + eos + "\n\n"
        '{{ else if eq .Role "tool" }}### Tool result:\n{{ .Content }}\n\n### Answer:\n'
        "{{ end }}"
        "{{ end }}"
    )
    return TemplateStyle(
        "lathe-default", template, [eos, "### Question:"] if eos else ["### Question:"]
    )


def _inst() -> TemplateStyle:
    template = (
        "{{ range $i, $_ := .Messages }}"
        '{{ if eq .Role "user" }}[INST] {{ if and $.System (eq $i 0) }}{{ $.System }}\n\n{{ end }}'
        "{{ .Content }} [/INST]"
        '{{ else if eq .Role "assistant" }} {{ .Content }}</s>'
        "{{ end }}"
        "{{ end }}"
    )
    return TemplateStyle("mistral-inst", template, ["[INST]", "[/INST]", "</s>"])


def _gemma() -> TemplateStyle:
    template = (
        "{{ range $i, $_ := .Messages }}"
        '{{ if eq .Role "user" }}<start_of_turn>user\n{{ if and $.System (eq $i 0) }}{{ $.System }}\n\n{{ end }}'
        "{{ .Content }}<end_of_turn>\n"
        '{{ else if eq .Role "assistant" }}<start_of_turn>model\n{{ .Content }}<end_of_turn>\n'
        "{{ end }}"
        "{{ end }}<start_of_turn>model\n"
    )
    return TemplateStyle("gemma", template, ["<start_of_turn>", "<end_of_turn>"])


def _phi3() -> TemplateStyle:
    template = (
        "{{ if .System }}<|system|>\n{{ .System }}<|end|>\n{{ end }}"
        "{{ range .Messages }}"
        '{{ if eq .Role "user" }}<|user|>\n{{ .Content }}<|end|>\n'
        '{{ else if eq .Role "assistant" }}<|assistant|>\n{{ .Content }}<|end|>\n'
        "{{ end }}"
        "{{ end }}<|assistant|>\n"
    )
    return TemplateStyle("phi3", template, ["<|end|>", "<|user|>", "<|assistant|>", "<|system|>"])


def detect_style(chat_template: str | None, eos_token: str = "</s>") -> TemplateStyle:
    """The Ollama template and stop words that match a Jinja chat template."""
    text = chat_template or ""
    if not text.strip():
        return TemplateStyle("none", None, [eos_token] if eos_token else [])
    if text.strip() == DEFAULT_CHAT_TEMPLATE.strip() or (
        "### Question:" in text and "### Answer:" in text
    ):
        return _lathe_default(eos_token)
    if "<|im_start|>" in text:
        return _chatml()
    if "<|start_header_id|>" in text:
        return _llama3()
    if "<start_of_turn>" in text:
        return _gemma()
    if "<|user|>" in text and "<|end|>" in text:
        return _phi3()
    if "[INST]" in text:
        return _inst()
    return TemplateStyle("unknown", None, [eos_token] if eos_token else [])


def _quote(value: str) -> str:
    if "\n" in value or '"' in value:
        if '"""' in value:
            raise ExportError(
                "The chat template contains three double quotes, which a Modelfile cannot hold."
            )
        return f'"""{value}"""'
    return f'"{value}"'


def modelfile(
    gguf_name: str,
    chat_template: str | None,
    *,
    eos_token: str = "</s>",
    system: str | None = None,
    num_ctx: int | None = None,
) -> tuple[str, TemplateStyle]:
    """The Modelfile text for a GGUF next to it, and the template style it used."""
    style = detect_style(chat_template, eos_token)
    lines = [
        "# Made by Lathe. Create the model with: ollama create NAME -f Modelfile",
        f"FROM ./{gguf_name}",
        "",
    ]
    if style.template is not None:
        lines += [f"TEMPLATE {_quote(style.template)}", ""]
    elif style.name == "unknown":
        lines += [
            "# The chat template was not recognised: Ollama uses the template inside the GGUF.",
            "",
        ]
    if system:
        lines += [f"SYSTEM {_quote(system)}", ""]
    for stop in dict.fromkeys(style.stop):
        lines.append(f"PARAMETER stop {_quote(stop)}")
    if num_ctx:
        lines.append(f"PARAMETER num_ctx {int(num_ctx)}")
    return "\n".join(lines).rstrip() + "\n", style


@dataclass
class OllamaResult:
    path: Path
    gguf: Path
    modelfile: Path
    template_style: str
    notes: list[str]

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "gguf": str(self.gguf),
            "modelfile": str(self.modelfile),
            "template_style": self.template_style,
            "notes": self.notes,
            "create_command": f"cd {self.path} && ollama create {self.path.name.lower()} -f Modelfile",
        }


@private_output
def export_ollama(
    spec: str | Path | AdapterSource,
    out: str | Path | None = None,
    *,
    dtype: str = "f16",
    system: str | None = None,
    base_model: str | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> OllamaResult:
    """Write `out/` with `model.gguf` and a `Modelfile` for a run, adapter folder or MLX model folder."""
    from engine.export.gguf import export_gguf

    rep = Reporter(progress, cancel)
    folder = None if isinstance(spec, AdapterSource) else Path(str(spec)).expanduser()
    if folder is not None and folder.is_dir() and is_model_folder(folder):
        source, label = folder, folder.name
        out = Path(out).expanduser() if out else folder.parent / f"{folder.name}-ollama"
    else:
        source = spec if isinstance(spec, AdapterSource) else resolve_adapter(spec, base_model)
        label = source.label
        base = source.run_dir / "exports" if source.run_dir else source.adapter_path.parent
        out = Path(out).expanduser() if out else base / f"{label}-ollama"
    destination.check_folder(out, overwrite)
    tmp = destination.temp_folder(out)
    try:
        result = export_gguf(
            source,
            tmp / "model.gguf",
            dtype=dtype,
            progress=rep.scaled(0.0, 0.95),
            cancel=rep.cancel,
        )
        eos = _eos_token(source)
        text, style = modelfile("model.gguf", result.chat_template, eos_token=eos, system=system)
        from engine.workspace import write_text_atomic

        write_text_atomic(tmp / "Modelfile", text)
        destination.write_manifest(tmp, "ollama")
        rep.check()
        destination.replace_folder(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    notes = list(result.notes)
    if style.name == "unknown":
        notes.append(
            "The chat template was not recognised; Ollama will use the template stored in the GGUF."
        )
    rep("done", f"Ollama folder ready: {out} (template: {style.name})", 1.0)
    return OllamaResult(out, out / "model.gguf", out / "Modelfile", style.name, notes)


def _eos_token(source) -> str:
    import json

    from engine.export.source import resolve_base_model

    folder = Path(source) if isinstance(source, Path) else resolve_base_model(source.base_model)
    try:
        cfg = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "</s>"
    eos = cfg.get("eos_token")
    if isinstance(eos, dict):
        eos = eos.get("content")
    return eos if isinstance(eos, str) and re.fullmatch(r"\S+", eos) else "</s>"
