"""The segment gallery on a table of ``napari-segrep embed`` (real files, a real viewer): every
segment of many images not open in napari, each image read only when a thumbnail of it is
needed, thumbnails identical to the engine's, exact nearest neighbours, clusters, clear errors
for a missing sidecar or a moved file, clicks that say the image is not open."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tifffile

from napari_segrep._sample_data import make_cells
from napari_segrep.analysis.export import sidecar_path

from ..conftest import require_napari, write_pairs_folder

require_napari()

from ._gallery import dock_gallery as _gallery  # noqa: E402
from ._gallery import embed_layer as _embed  # noqa: E402
from ._gallery import wait_loaded as _loaded  # noqa: E402

TIMEOUT_MS = 120_000
SMALL = ["--crop-size", "32", "--batch-size", "8", "--device", "cpu", "--weights", "none"]


def _embed_collection(root, out, *more):
    from napari_segrep.cli import main

    assert main(["embed", "--data", str(root), "-o", str(out), "--quiet", *SMALL, *more]) == 0
    return out


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """Three image/label pairs embedded into one Parquet table by the CLI."""
    root = tmp_path_factory.mktemp("collection")
    data = write_pairs_folder(root / "data", 3)
    return _embed_collection(data, root / "cells.parquet")


def _files(out):
    """Image name -> (image path, labels path), as the CLI's sidecar lists them."""
    record = json.loads(sidecar_path(out).read_text())
    return {r["name"]: (r["image"], r["labels"]) for r in record["images"]}


def _expected(out, rows, *, size=64):
    """The thumbnails of table rows ``rows`` straight from the engine, on the files."""
    import napari_segrep as sr
    from napari_segrep.analysis.export import read_table

    table, files = read_table(out), _files(out)
    out_thumbs = []
    for row in rows:
        image, labels = files[table["image"].iloc[row]]
        label = int(table["label"].iloc[row])
        thumb = sr.segment_thumbnails(
            tifffile.imread(image), tifffile.imread(labels), [label], size=size, normalize="image"
        )
        out_thumbs.append(thumb[0])
    return np.stack(out_thumbs)


def _made_sources(gallery):
    """Member index -> whether its ThumbnailSource has read its files (absent: never made)."""
    return {i: source._loaded for i, (_, source) in gallery.source._thumbnail_sources.items()}


def test_gallery_table__all_segments_are_the_files_thumbnails_in_table_order(
    make_napari_viewer, qtbot, collection
):
    from napari_segrep.analysis.export import read_table

    viewer = make_napari_viewer()
    gallery = _gallery(viewer)
    table = gallery.open_table(collection)
    n = len(read_table(collection))
    assert gallery.map_input.value is table
    assert table.name == "cells.parquet (table, 3 images)"
    assert gallery.points_layer is None
    assert gallery.show_input.value == "all segments"  # no cluster column
    _loaded(qtbot, gallery, n)
    assert gallery.shown_rows == list(range(n))
    assert gallery.page_label.value == f"1-{n} of {n}"
    expected = _expected(collection, range(n))
    for i in range(n):
        np.testing.assert_array_equal(gallery.thumbnail(i), expected[i])
    assert gallery.grid.item(7).text().startswith("im1 ")
    assert _made_sources(gallery) == {0: True, 1: True, 2: True}
    assert len(viewer.layers) == 0  # nothing was opened in napari

    again = gallery.open_table(collection)  # opened again: read again, listed once
    assert table.closed and gallery.map_input.value is again
    assert [c for c in gallery.map_input.choices if c is table] == []
    _loaded(qtbot, gallery, n)

    # the orders work on a table too
    gallery.order_input.value = "random"
    _loaded(qtbot, gallery, n)
    assert sorted(gallery.shown_rows) == list(range(n))


def test_gallery_table__clusters_read_only_the_images_they_show(
    make_napari_viewer, qtbot, collection, tmp_path
):
    from napari_segrep.analysis.export import read_table, write_table

    df = read_table(collection)
    names = sorted(df["image"].unique())
    clustered = df.assign(cluster=[names.index(v) * 10 for v in df["image"]])
    record = json.loads(sidecar_path(collection).read_text())
    out = write_table(clustered, tmp_path / "clustered.parquet", provenance=record)

    viewer = make_napari_viewer()
    gallery = _gallery(viewer)
    gallery.open_table(out)
    assert gallery.show_input.value == "cluster"  # the table has clusters
    assert list(gallery.which_input.choices) == [0, 10, 20]
    assert gallery.which_input.value == 0
    rows_0 = np.flatnonzero(df["image"].to_numpy() == "im0").tolist()
    _loaded(qtbot, gallery, len(rows_0))
    assert gallery.shown_rows == rows_0
    assert _made_sources(gallery) == {0: True}  # im1 and im2 were never read

    gallery.which_input.value = 20
    rows_2 = np.flatnonzero(df["image"].to_numpy() == "im2").tolist()
    _loaded(qtbot, gallery, len(rows_2))
    assert gallery.shown_rows == rows_2
    assert _made_sources(gallery) == {0: True, 2: True}
    expected = _expected(out, rows_2)
    for i in range(len(rows_2)):
        np.testing.assert_array_equal(gallery.thumbnail(i), expected[i])


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_gallery_table__more_like_this_is_the_exact_nearest_neighbours(
    make_napari_viewer, qtbot, collection, metric
):
    from scipy.spatial.distance import cdist

    from napari_segrep.analysis.export import read_table
    from napari_segrep.analysis.tables import embedding_matrix

    viewer = make_napari_viewer()
    gallery = _gallery(viewer)
    gallery.open_table(collection)
    n = len(read_table(collection))
    _loaded(qtbot, gallery, n)
    item = gallery.grid.item(8)  # a row of the second image
    gallery.grid.setCurrentItem(item)
    assert item.isSelected()
    gallery.metric_input.value = metric
    gallery.k_input.value = 10
    gallery.more_like_this()
    _loaded(qtbot, gallery, 11)
    x = embedding_matrix(read_table(collection)).astype(np.float64)
    dist = cdist(x[8:9], x, metric=metric)[0]
    dist[8] = np.inf
    direct = np.argsort(dist, kind="stable")[:10]
    assert gallery.shown_rows == [8, *direct.tolist()]
    assert "query" in gallery.grid.item(0).text()
    expected = _expected(collection, gallery.shown_rows)
    for i in range(11):
        np.testing.assert_array_equal(gallery.thumbnail(i), expected[i])


def test_gallery_table__clicks_go_nowhere_and_say_the_image_is_not_open(
    make_napari_viewer, qtbot, collection
):
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer()
    gallery = _gallery(viewer)
    table = gallery.open_table(collection)
    _loaded(qtbot, gallery)
    item = gallery.grid.item(9)
    rect = gallery.grid.visualItemRect(item)
    qtbot.mouseClick(gallery.grid.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert "im1.tif is not open in the viewer" in gallery.status.value
    assert table.selection == frozenset({9})
    gallery.go_to(14)
    assert "im2.tif is not open in the viewer" in gallery.status.value
    assert table.selection == frozenset({14})

    # annotating needs the segments in napari
    with pytest.raises(ValueError, match="annotating needs the segments in napari"):
        gallery.annotate_chosen("")
    gallery.annotate_button.changed.emit(True)  # the button: an error in the status, no raise
    assert "annotating needs the segments in napari" in gallery.status.value

    # the hover preview has no map to follow
    gallery._hover_position = (10.0, 10.0)
    gallery._hover()
    assert gallery.preview.row is None

    # a table has no map to select points in
    gallery.show_input.value = "selected points"
    assert gallery.grid.count() == 0
    assert "no map to select in" in gallery.status.value


def test_gallery_table__one_image_table_with_relative_paths(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    import napari_segrep as sr
    from napari_segrep.analysis.export import read_table
    from napari_segrep.cli import main

    write_pairs_folder(tmp_path / "data", 1)
    monkeypatch.chdir(tmp_path)  # the CLI records IMAGE LABELS as given: relative here
    image, labels = "data/images/im0.tif", "data/labels/im0_labels.tif"
    assert main(["embed", image, labels, "-o", "one.csv", "--quiet", *SMALL]) == 0
    monkeypatch.chdir(tmp_path / "data")  # found beside the table, not from here
    viewer = make_napari_viewer()
    gallery = _gallery(viewer)
    table = gallery.open_table(tmp_path / "one.csv")
    assert table.names == ["im0"]
    assert table.members[0].run.image == str(tmp_path / image)
    df = read_table(tmp_path / "one.csv")
    _loaded(qtbot, gallery, len(df))
    expected = sr.segment_thumbnails(
        tifffile.imread(tmp_path / image),
        tifffile.imread(tmp_path / labels),
        df["label"].to_numpy(),
        size=64,
    )
    for i in range(len(df)):
        np.testing.assert_array_equal(gallery.thumbnail(i), expected[i])


def test_gallery_table__missing_sidecar_and_moved_files_are_clear_errors(
    make_napari_viewer, tmp_path, collection
):
    from napari_segrep._widgets._gallery_table import open_table_collection

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(collection, alone / "cells.parquet")
    with pytest.raises(ValueError, match=r"sidecar cells\.parquet\.json is missing.*re-run"):
        open_table_collection(alone / "cells.parquet")
    (alone / "cells.parquet.json").write_text('{"someone": "else"}')
    with pytest.raises(ValueError, match="not a napari-segrep provenance record"):
        open_table_collection(alone / "cells.parquet")

    data = write_pairs_folder(tmp_path / "data", 2)
    out = _embed_collection(data, tmp_path / "moved.csv")
    (data / "images" / "im1.tif").rename(tmp_path / "im1.tif")
    viewer = make_napari_viewer()
    gallery = _gallery(viewer)
    with pytest.raises(ValueError, match=r"image im1\.tif of im1 listed in moved\.csv\.json is"):
        gallery.open_table(out)
    assert gallery.source is None and gallery.map_input.value is None
    with pytest.raises(ValueError, match="no such table"):
        gallery.open_table(tmp_path / "nothing.parquet")


def test_gallery_table__all_segments_of_a_map(make_napari_viewer, qtbot):
    """The "all segments" mode works for maps too: every row, in order."""
    from napari_segrep._widgets._results import results_for
    from napari_segrep.analysis.neighbours import typical_segments

    viewer = make_napari_viewer()
    image, labels, _ = make_cells(shape=(128, 128), n_cells=12, seed=3)
    viewer.add_image(image, name="img")
    viewer.add_labels(labels, name="cells")
    gallery = _gallery(viewer)
    embed = _embed(viewer, qtbot)
    qtbot.waitUntil(lambda: gallery.points_layer == embed.points_layer, timeout=5000)
    table = results_for(viewer.layers["cells"]).table
    n = len(table)
    gallery.show_input.value = "all segments"
    _loaded(qtbot, gallery, n)
    assert gallery.shown_rows == list(range(n))
    assert not gallery.order_input.native.isHidden()  # first / random / most typical
    gallery.order_input.value = "most typical"
    _loaded(qtbot, gallery, n)
    assert gallery.shown_rows == typical_segments(table, range(n), k=n).index.tolist()


@pytest.fixture(scope="module")
def tricky_names(tmp_path_factory):
    """Images named NA, None and 000 (what pandas reads as missing values or numbers)
    embedded by the CLI into a CSV table; returns the table's path."""
    root = tmp_path_factory.mktemp("tricky")
    data = write_pairs_folder(root / "data", 3)
    for i, name in enumerate(["NA", "None", "000"]):
        (data / "images" / f"im{i}.tif").rename(data / "images" / f"{name}.tif")
        (data / "labels" / f"im{i}_labels.tif").rename(data / "labels" / f"{name}_labels.tif")
    return _embed_collection(data, root / "cells.csv")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_gallery_table__images_named_like_missing_values_or_numbers(tmp_path, tricky_names, suffix):
    """Issue 22, item 5: an image named NA.tif (or None, 000) keeps its rows in the gallery."""
    from napari_segrep._widgets._gallery_table import open_table_collection
    from napari_segrep.analysis.export import read_table, write_table

    table = tricky_names
    if suffix == ".parquet":
        record = json.loads(sidecar_path(tricky_names).read_text())
        table = write_table(read_table(tricky_names), tmp_path / "t.parquet", provenance=record)
    collection = open_table_collection(table)
    assert sorted(collection.names) == ["000", "NA", "None"]
    df = read_table(table)
    for member in collection.members:
        assert len(member.table) == (df["image"] == member.name).sum() > 0
        assert member.run.image.endswith(f"{member.name}.tif")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param("[" * 200_000 + "]" * 200_000, "nested deeper than 32", id="200000 deep"),
        ('{"package": "napari-segrep", "images": [5]}', "'images[0]' must be an object"),
        ('{"package": "napari-segrep", "images": "x"}', "'images' must be a list"),
        ('{"package": "napari-segrep", "inputs": {"image": 3}}', "'inputs.image' must be"),
        ('{"package": "napari-segrep", "normalize": {}}', "'normalize' must be"),
    ],
)
def test_gallery_table__a_damaged_sidecar_is_one_line_naming_it(
    tmp_path, collection, content, problem
):
    """Issue 22, item 8: no RecursionError or AttributeError from Open table..."""
    from napari_segrep._widgets._gallery_table import open_table_collection

    shutil.copy(collection, tmp_path / "cells.parquet")
    sidecar_path(tmp_path / "cells.parquet").write_text(content)
    with pytest.raises(ValueError) as caught:
        open_table_collection(tmp_path / "cells.parquet")
    message = str(caught.value)
    assert message.startswith(str(tmp_path / "cells.parquet.json")) and problem in message
    assert "restore it, or re-run napari-segrep embed" in message and "\n" not in message


def test_gallery_table__an_earlier_versions_sidecar_still_opens(tmp_path, collection):
    from napari_segrep._widgets._gallery_table import open_table_collection

    shutil.copy(collection, tmp_path / "cells.parquet")
    shutil.copy(sidecar_path(collection), tmp_path / "cells.json")  # the name before issue 22
    opened = open_table_collection(tmp_path / "cells.parquet")
    assert opened.names == ["im0", "im1", "im2"]


def test_gallery_source__volumes_and_stacks_give_the_engines_thumbnails(tmp_path):
    """A table of 3D objects (``bbox_z0``...) is shown as 3D tiles, with the spacing its run
    recorded; a stack's table (``frame``) as the frames' 2D thumbnails, its channel axis
    counted within a frame as ``embed_stack`` counts it."""
    import pandas as pd
    from skimage.measure import regionprops_table

    import napari_segrep as sr
    from napari_segrep._widgets._gallery_source import GallerySource
    from napari_segrep._widgets._gallery_table import FileMember, FileRun, TableCollection

    zz, yy, xx = np.mgrid[:12, :40, :40]
    volume = ((2 * (zz - 6)) ** 2 + (yy - 14) ** 2 + (xx - 24) ** 2 <= 64).astype(np.int32)
    volume[(zz - 6) ** 2 + (yy - 30) ** 2 + (xx - 10) ** 2 <= 9] = 2
    vol_image = (volume * 90 + 20).astype(np.uint8)
    props = pd.DataFrame(regionprops_table(volume, properties=("label", "bbox")))
    names = ["bbox_z0", "bbox_y0", "bbox_x0", "bbox_z1", "bbox_y1", "bbox_x1"]
    vol_table = props.rename(columns={f"bbox-{i}": c for i, c in enumerate(names)})
    stack_labels = volume[::6].copy()  # (2, 40, 40): two frames
    stack_image = np.stack([vol_image[::6], 255 - vol_image[::6]], axis=1)  # (T, C, Y, X)
    frames = [
        pd.DataFrame(regionprops_table(f, properties=("label", "bbox"))) for f in stack_labels
    ]
    stack_table = pd.concat([f.assign(frame=t) for t, f in enumerate(frames)]).rename(
        columns={"bbox-0": "bbox_y0", "bbox-1": "bbox_x0", "bbox-2": "bbox_y1", "bbox-3": "bbox_x1"}
    )
    paths = {}
    for name, array in [
        ("vol", vol_image),
        ("vol_labels", volume),
        ("stack", stack_image),
        ("stack_labels", stack_labels),
    ]:
        paths[name] = str(tmp_path / f"{name}.tif")
        tifffile.imwrite(paths[name], array)
    recorded = {"axes": "zyx", "spacing": [2.0, 1.0, 1.0], "channel_axis": None}
    members = [
        FileMember("vol", vol_table, FileRun(paths["vol"], paths["vol_labels"], recorded), {}),
        FileMember("old", vol_table, FileRun(paths["vol"], paths["vol_labels"], {}), {}),
        FileMember(
            "stack",
            stack_table.reset_index(drop=True),
            FileRun(paths["stack"], paths["stack_labels"], {"channel_axis": 0}),  # in a frame
            {},
        ),
    ]
    source = GallerySource(TableCollection(tmp_path / "t.csv", members))
    shown = {}
    for request in source.requests(np.arange(len(source))):
        thumbs = request.source.thumbnails(request.ids, frame=request.frames)
        shown.update(zip(request.positions.tolist(), thumbs, strict=True))
    n = len(vol_table)
    for spacing, at in [((2, 1, 1), 0), (None, n)]:  # recorded spacing; none: cubic voxels
        expected = sr.segment_thumbnails(
            vol_image, volume, vol_table["label"], axes="zyx", spacing=spacing, table=vol_table
        )
        for k in range(n):
            np.testing.assert_array_equal(shown[at + k], expected[k])
    assert not np.array_equal(shown[0], shown[n])  # the spacing made a difference
    ids, frame_of = stack_table["label"].to_numpy(), stack_table["frame"].to_numpy()
    expected = sr.segment_thumbnails(
        stack_image, stack_labels, ids, axes="tyx", channel_axis=1, frame=frame_of
    )
    for k in range(len(ids)):
        np.testing.assert_array_equal(shown[2 * n + k], expected[k])


def test_open_table_collection__volumes_keep_the_axes_and_spacing_their_sidecar_records(
    tmp_path,
):
    """A table of volumes from ``embed --data --axes zyx --spacing``, opened in the gallery:
    each image's run has the recorded axes and spacing, so its 3D thumbnails are drawn at that
    spacing, as ``segment_thumbnails`` draws them with it; a sidecar whose layout is not one
    gives no layout (the table's columns say what the objects are)."""
    import napari_segrep as sr
    from napari_segrep._widgets._gallery_source import GallerySource
    from napari_segrep._widgets._gallery_table import _layout_of, open_table_collection
    from napari_segrep.analysis.export import read_table
    from napari_segrep.cli import main

    from ..cli.test_embed_collection import write_volumes_folder

    data = write_volumes_folder(tmp_path / "vols", 2)
    out = tmp_path / "v.parquet"
    small = ["--crop-size", "16", "--device", "cpu", "--weights", "none", "-q"]
    argv = ["embed", "--data", str(data), "-o", str(out), "--axes", "zyx"]
    assert main([*argv, "--spacing", "2", "1", "1", *small]) == 0
    table = open_table_collection(out)
    assert [(m.run.params["axes"], m.run.params["spacing"]) for m in table.members] == [
        ("zyx", (2.0, 1.0, 1.0))
    ] * 2
    source = GallerySource(table)
    (request,) = [r for r in source.requests([0, 1, 2]) if len(r.ids)]
    shown = request.source.thumbnails(request.ids)
    rows = read_table(out)
    first = rows[rows["image"] == "vol0"]
    image = tifffile.imread(data / "images" / "vol0.tif")
    labels = tifffile.imread(data / "labels" / "vol0_labels.tif")
    expected = sr.segment_thumbnails(
        image, labels, first["label"], axes="zyx", spacing=(2, 1, 1), table=first
    )
    for got, want in zip(shown, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    for bad in ({"axes": "qq"}, {"axes": "zyx", "spacing": [0, 1, 1]}, "zyx"):
        assert _layout_of({"layout": bad}, "x") in ({}, {"axes": "zyx", "spacing": None})
    assert _layout_of({"layout": {"axes": "zyx", "spacing": [1, True, 1]}}, "x")["spacing"] is None
