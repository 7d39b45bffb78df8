import logging

import pytest
from pydantic import BaseModel, ValidationError

from models.labels import Task
from training.__main__ import build_parser, main
from training.config import TrainConfig, leaf_fields, load_config


def test_default_config_is_valid_and_single_label():
    cfg = load_config()
    assert cfg.task is Task.SINGLE_LABEL
    assert cfg.mlflow.alias == "champion"


def test_overrides_are_typed_by_yaml():
    cfg = load_config(
        overrides={
            "optim.lr": "3e-4",
            "data.labels": "[a, b]",
            "model.pretrained": "null",
            "data.on_error": "skip",
        }
    )
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.data.labels == ["a", "b"]
    assert cfg.model.pretrained is None
    assert cfg.data.on_error == "skip"


def test_csv_defaults_to_multi_label():
    cfg = load_config(overrides={"data.format": "csv", "data.manifest": "m.csv"})
    assert cfg.task is Task.MULTI_LABEL


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"optim.lr": "-1"}, "greater than 0"),
        ({"data.format": "csv"}, "data.manifest is not set"),
        ({"data.num_folds": "5", "data.fold": "5"}, "data.fold must be < data.num_folds"),
        ({"data.on_error": "ignore"}, "'fail' or 'skip'"),
        ({"model.task": "regression"}, "single_label"),
    ],
)
def test_invalid_settings_are_rejected(overrides, message):
    with pytest.raises(ValidationError, match=message):
        load_config(overrides=overrides)


def test_unknown_setting_is_rejected():
    with pytest.raises(ValueError, match="unknown setting 'optim.learning_rate'"):
        load_config(overrides={"optim.learning_rate": "1"})


def test_unknown_yaml_key_is_rejected(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ValidationError, match="lrr"):
        load_config(path)


def test_every_setting_has_a_cli_flag_with_help():
    train_parser = build_parser()._subparsers._group_actions[0].choices["train"]
    flags = {a.option_strings[0]: a.help for a in train_parser._actions if a.option_strings}
    for dotted, info in leaf_fields(TrainConfig).items():
        assert f"--{dotted}" in flags
        assert info.description, f"{dotted} has no description"


def test_every_section_class_is_named_config():
    sections = [info.annotation for info in TrainConfig.model_fields.values()]
    names = {t.__name__ for t in sections if isinstance(t, type) and issubclass(t, BaseModel)}
    assert names >= {"DataConfig", "ModelConfig", "OptimConfig", "AugmentConfig", "MlflowConfig"}
    assert "DistributedConfig" in names
    assert all(name.endswith("Config") for name in names)


def test_cli_print_config_applies_flags(capsys):
    assert main(["train", "--optim.epochs", "3", "--print-config"]) == 0
    assert "epochs: 3" in capsys.readouterr().out


def test_cli_reports_bad_config_without_traceback(caplog):
    # `main` returns the exit code: a bad config is logged (no exception, no traceback) and 2.
    with caplog.at_level(logging.INFO, logger="training"):
        assert main(["train", "--optim.lr", "-5", "--print-config"]) == 2
    [error] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert error.getMessage().startswith("Invalid configuration")
    assert error.exc_info is None and "Traceback" not in caplog.text
