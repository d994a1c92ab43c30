"""One source of truth for a setting (issue 19): the config field's metadata (help, choices,
range, CLI flag) drives validation, the `train` flags and their help."""

from __future__ import annotations

import dataclasses

import pytest

from engine.cli import main
from engine.config import SECTIONS, cli_options, field_bounds


def test_every_train_flag_comes_from_a_config_field_with_its_help_and_choices(capsys):
    """The 22 flags of `train` were a hand-written list beside the fields they set."""
    options = {o.flag: o for o in cli_options()}
    assert {"--lora-rank", "--optimizer", "--steps-per-eval", "--seed"} <= set(options)
    fields = {
        (section, f.name): f for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)
    }
    for opt in options.values():
        field = fields[(opt.section, opt.name)]
        assert field.metadata["cli"] == opt.flag
        assert opt.help == field.metadata["help"]
        assert opt.choices == (
            tuple(field.metadata["choices"]) if "choices" in field.metadata else None
        )
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--optimizer {adam,adamw,sgd,adafactor,muon}" in text
    assert " ".join(options["--lora-rank"].help.split()) in text


def test_a_flag_value_outside_the_fields_choices_or_range_is_refused(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--optimizer", "adamm"])
    assert exc.value.code == 2 and "invalid choice: 'adamm'" in capsys.readouterr().err
    assert field_bounds("training", "seed")["at_least"] == 0
    code = main(["train", "--model", str(tmp_path), "--data", str(tmp_path), "--seed", "-1"])
    err = capsys.readouterr().err
    assert code != 0 and "training.seed" in err and len(err.strip().splitlines()) == 1
