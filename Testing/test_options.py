"""Each training option is declared once, on its config field: the command line's parser, the config built from
it and the worker's command line (what the Slicer module starts) all come from that declaration."""
from __future__ import annotations

import dataclasses

import pytest

from MedAutoencoderLib.cli.commands import build_parser, train_config_from_args
from MedAutoencoderLib.config import ModelConfig, TrainConfig, option_fields
from MedAutoencoderLib.worker import jobs


def parsed(arguments):
    return train_config_from_args(build_parser().parse_args(["train", *arguments]))


def changed(spec):
    """A valid value of an option other than its default."""
    if spec.value_type is bool:
        return not spec.default
    if spec.option.choices:
        return next(c for c in spec.option.choices if c != spec.default)
    if spec.count == "+":
        return ["x.nrrd", "y/"] if spec.value_type is str else type(spec.default)(v * 2 for v in spec.default)
    if spec.count != 1:
        return tuple(v * 2 for v in spec.default)
    if spec.value_type is str:
        return "some file.pt"
    return spec.value_type(3.25 if spec.value_type is float and spec.default is None else (spec.default or 1) * 3)


def with_value(config, path, value):
    if len(path) == 1:
        return dataclasses.replace(config, **{path[0]: value})
    return dataclasses.replace(config, **{path[0]: with_value(getattr(config, path[0]), path[1:], value)})


def test_the_parser_defaults_are_the_configs():
    assert parsed(["--data", "a", "--out", "m.pt"]) == TrainConfig(data=["a"], out="m.pt")


@pytest.mark.parametrize("spec", option_fields(TrainConfig), ids=lambda spec: spec.option.flag)
def test_every_option_reaches_the_worker_and_comes_back_as_given(spec):
    config = with_value(TrainConfig(data=["a.nrrd"], out="m.pt"), spec.path, changed(spec))
    arguments = config.as_arguments()
    assert spec.option.flag in arguments
    assert parsed(arguments) == config


def test_only_what_differs_from_the_defaults_is_passed():
    assert TrainConfig(data=["a"], out="m.pt").as_arguments() == ["--data", "a", "--out", "m.pt"]


def test_the_module_command_line_parses_to_what_the_module_asked_for():
    command = jobs.train_command("py", ["a.nrrd", "b folder"], "vae", "m.pt", epochs=3, max_minutes=1.5,
                                 device="cpu", stop_file="stop", overwrite=True)
    args = build_parser().parse_args(command[3:])
    assert train_config_from_args(args) == TrainConfig(
        data=["a.nrrd", "b folder"], out="m.pt", model=ModelConfig(name="vae"), epochs=3, max_minutes=1.5,
        overwrite=True, stop_file="stop", device="cpu")
    assert args.progress == "json"
