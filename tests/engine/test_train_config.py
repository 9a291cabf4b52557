"""TrainConfig: the one source of every training default and its help text."""

from __future__ import annotations

from napari_segrep.engine.training import train_ssl


def test_train_config__every_setting_has_help_and_the_cli_and_api_take_its_default():
    """One source: train_ssl's defaults and train's options are TrainConfig's."""
    import argparse
    import dataclasses
    import inspect

    from napari_segrep.cli import get_arg_parser
    from napari_segrep.engine import train_config as tc
    from napari_segrep.engine.losses import LOSSES

    for spec in dataclasses.fields(tc.TrainConfig):
        assert spec.metadata["help"], spec.name
    assert set(tc.choices("loss")) == set(LOSSES)
    signature = inspect.signature(train_ssl).parameters
    for name in ("epochs", "batch_size", "loss", "optimizer", "lr", "seed", "image_masking"):
        assert signature[name].default == tc.default(name), name
    train = get_arg_parser()._subparsers._group_actions[0].choices["train"]
    actions = {a.dest: a for a in train._actions if not isinstance(a, argparse._HelpAction)}
    for name in ("loss", "optimizer", "batchnorm_stats", "seed", "min_size"):
        assert actions[name].default == tc.default(name), name
        assert tc.help_text(name) in actions[name].help, name
    # the batch size is chosen by the run (refining from annotations takes smaller batches)
    assert actions["batch_size"].default is None
    assert f"(default: {tc.default('batch_size')};" in actions["batch_size"].help
    for name in ("epochs", "crop_size", "lr", "backbone"):  # chosen from the data: None
        assert actions[name].default is None and "(default:" in actions[name].help
    assert list(actions["loss"].choices) == list(tc.choices("loss"))
    assert tc.setting("amp").metadata["off"] == actions["no_amp"].help
