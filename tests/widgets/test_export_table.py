"""The widgets' Export CSV... (``_common.export_table``): both files or neither, a user's JSON
never replaced, and text a spreadsheet could run as a formula written as it is, with a napari
warning notification (real files, napari's own notification manager; no viewer needed)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from napari_segrep.analysis.export import sidecar_path

from ..conftest import require_napari

require_napari()


def _notifications(since: int) -> list:
    from napari.utils.notifications import notification_manager

    return notification_manager.records[since:]


def _export(path, table, **kwargs):
    from napari_segrep._widgets._common import export_table

    return export_table(
        None,
        table,
        {"command": "test"},
        path,
        title="Export",
        suggestion="t.csv",
        overwrite=kwargs.pop("overwrite", True),
    )


def _table(names):
    return pd.DataFrame({"label": range(1, len(names) + 1), "class_annotation": names})


def test_export_table__warns_in_napari_about_cells_a_spreadsheet_could_run(tmp_path):
    from napari.utils.notifications import NotificationSeverity, notification_manager

    seen = len(notification_manager.records)
    names = ["round", '=HYPERLINK("http://x")', "-"]
    assert _export(tmp_path / "t.csv", _table(names)) == tmp_path / "t.csv"
    warned = [n for n in _notifications(seen) if n.severity == NotificationSeverity.WARNING]
    assert len(warned) == 1 and "t.csv: 2 text cell(s) start with =, +, -, @" in warned[0].message
    back = pd.read_csv(tmp_path / "t.csv", dtype=str, keep_default_na=False)
    assert back["class_annotation"].tolist() == names  # written as they are

    seen = len(notification_manager.records)
    _export(tmp_path / "safe.csv", _table(["round", "NA"]))
    assert not [n for n in _notifications(seen) if n.severity == NotificationSeverity.WARNING]


def test_export_table__a_users_json_at_the_sidecar_place_is_kept_and_said(tmp_path):
    from napari.utils.notifications import NotificationSeverity, notification_manager

    sidecar_path(tmp_path / "t.csv").write_text('{"my": "notes"}')
    seen = len(notification_manager.records)
    assert _export(tmp_path / "t.csv", _table(["a"])) is None
    errors = [n for n in _notifications(seen) if n.severity == NotificationSeverity.ERROR]
    assert len(errors) == 1 and "was not written by napari-segrep" in errors[0].message
    assert sidecar_path(tmp_path / "t.csv").read_text() == '{"my": "notes"}'
    assert not (tmp_path / "t.csv").exists()


@pytest.mark.parametrize("existing", [False, True])
def test_export_table__replaces_what_the_user_agreed_to(tmp_path, existing):
    if existing:
        _export(tmp_path / "t.csv", _table(["old"]))
    assert _export(tmp_path / "t.csv", _table(["new", "two"])) == tmp_path / "t.csv"
    assert pd.read_csv(tmp_path / "t.csv")["class_annotation"].tolist() == ["new", "two"]
    record = json.loads(sidecar_path(tmp_path / "t.csv").read_text())
    assert record["package"] == "napari-segrep" and record["command"] == "test"
