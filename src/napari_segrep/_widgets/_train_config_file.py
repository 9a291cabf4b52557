"""Train SegRep's config files: the text **Save config...** and the run folder's
``config.yaml`` hold, and the checks **Load config...** makes of a file's values before any field
changes (the keys are the command line's: ``napari-segrep train --config``)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["config_text", "config_updates"]


def config_text(config: dict) -> str:
    """A config file's text (Save config..., and the run folder's ``config.yaml``)."""
    import yaml

    return (
        "# Train SegRep settings: Load config... reads them back; "
        "napari-segrep train --config THIS_FILE runs them\n# (add data: FOLDER, or "
        "images: GLOB and labels: GLOB, when no folder is set)\n"
        + yaml.safe_dump(config, sort_keys=False)
    )


def config_updates(path: Path, values: dict, fields: dict) -> list:
    """``[(widget, value)]`` for the ``values`` of the config file ``path`` that have a field
    in ``fields`` (``{key: widget}``), each checked against its widget (a switch, a choice, a
    number in the widget's range); a ``ValueError`` naming the file and the key otherwise."""
    updates = []
    for key, value in values.items():
        widget = fields.get(key)
        if widget is None:
            continue
        if key.startswith("no_") or key == "rotations":
            if not isinstance(value, bool):
                raise ValueError(f"{path}: {key}: {value!r} is not true or false")
            value = (not value) if key.startswith("no_") else value
        elif key in ("epochs", "lr") and value is None:
            value = 0
        elif key in ("objective", "loss", "optimizer", "device"):
            allowed = list(widget.choices)
            if value not in allowed:
                raise ValueError(f"{path}: {key}: {value!r} is not one of {allowed}")
        elif key in ("epochs", "batch_size", "crop_size"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{path}: {key}: {value!r} is not an integer")
            if not widget.min <= value <= widget.max:
                raise ValueError(f"{path}: {key}: {value} is outside {widget.min}..{widget.max}")
        elif key == "lr":
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{path}: lr: {value!r} is not a number") from None
            if not value > 0:
                raise ValueError(f"{path}: lr: lr must be > 0, got {value}")
        elif value is None:
            continue
        elif not isinstance(value, str):
            raise ValueError(f"{path}: {key}: {value!r} is not text")
        updates.append((widget, value))
    return updates
