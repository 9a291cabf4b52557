"""`napari-segrep embed` on real files: TIFF/PNG in, CSV + JSON out, errors that write nothing."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st

import napari_segrep as sr
from napari_segrep.analysis.export import sidecar_path
from napari_segrep.cli import main
from napari_segrep.io import file_sha256

from ..conftest import disc_labels


@pytest.fixture()
def files(tmp_path, scene):
    image, labels = scene
    img16 = (image * 4000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "img.tif", img16)
    tifffile.imwrite(tmp_path / "lab.tif", labels)
    return tmp_path, img16, labels


def _run(*argv):
    return main([str(a) for a in argv])


def test_cli_embed__tiff_round_trip_matches_the_api(files, capsys):
    tmp, image, labels = files
    out = tmp / "out.csv"
    assert (
        _run(
            "embed",
            tmp / "img.tif",
            tmp / "lab.tif",
            "-o",
            out,
            "--crop-size",
            32,
            "--device",
            "cpu",
            "--normalize",
            "0,4000",
        )
        == 0
    )
    df = pd.read_csv(out)
    api = sr.embed_segments(image, labels, crop_size=32, device="cpu", normalize=(0, 4000))
    assert list(df["label"]) == list(api["label"])
    np.testing.assert_allclose(
        df.filter(like="emb_"), api.filter(like="emb_"), rtol=1e-6, atol=1e-7
    )
    side = json.loads(sidecar_path(out).read_text())
    assert side["package_version"] == sr.__version__
    assert side["encoder"]["backbone"] == "resnet18" and side["seed"] == 0
    assert side["normalization"] == {"mode": "fixed", "low": [0.0], "high": [4000.0]}
    assert side["crop_size"] == 32 and side["n_segments"] == 6
    assert side["checkpoint_sha256"] is None
    assert "6 segments embedded" in capsys.readouterr().err
    assert sorted(p.name for p in tmp.iterdir()) == [
        "img.tif",
        "lab.tif",
        "out.csv",
        "out.csv.json",
    ]


def test_cli_embed__checkpoint_png_rgb_and_segment_normalisation(tmp_path):
    rng = np.random.default_rng(0)
    rgb = (rng.random((48, 48, 3)) * 255).astype(np.uint8)
    labels = disc_labels((48, 48), [(12, 12, 6), (30, 30, 9)]).astype(np.uint8)
    iio.imwrite(tmp_path / "rgb.png", rgb)
    iio.imwrite(tmp_path / "lab.png", labels)
    ckpt = sr.save_encoder(sr.SegmentEncoder(in_channels=3, seed=5), tmp_path / "model.pt")
    out = tmp_path / "res.csv"
    assert (
        _run(
            "embed",
            tmp_path / "rgb.png",
            tmp_path / "lab.png",
            "-o",
            out,
            "--checkpoint",
            ckpt,
            "--normalize",
            "segment",
            "--crop-size",
            32,
            "--quiet",
        )
        == 0
    )
    side = json.loads(sidecar_path(out).read_text())
    assert side["checkpoint_sha256"] == file_sha256(ckpt)
    assert side["encoder"]["in_channels"] == 3 and side["encoder"]["seed"] == 5
    api = sr.embed_segments(rgb, labels, sr.load_encoder(ckpt), crop_size=32, normalize="segment")
    np.testing.assert_allclose(
        pd.read_csv(out).filter(like="emb_"), api.filter(like="emb_"), rtol=1e-6, atol=1e-7
    )


def test_cli_embed__multichannel_channel_axis(tmp_path):
    stack = np.random.default_rng(1).random((2, 40, 40)).astype(np.float32)
    labels = disc_labels((40, 40), [(20, 20, 8)])
    tifffile.imwrite(tmp_path / "s.tif", stack)
    tifffile.imwrite(tmp_path / "l.tif", labels)
    assert (
        _run(
            "embed",
            tmp_path / "s.tif",
            tmp_path / "l.tif",
            "-o",
            tmp_path / "o.csv",
            "--channel-axis",
            0,
            "--crop-size",
            32,
            "--quiet",
        )
        == 0
    )
    assert json.loads((tmp_path / "o.csv.json").read_text())["encoder"]["in_channels"] == 2


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("shape", "does not match"),
        ("unreadable", "cannot read"),
        ("missing", "does not exist"),
        ("not_checkpoint", "not a readable checkpoint"),
        ("no_dir", "does not exist: create it first"),
        ("dir_is_file", "not a directory"),
        ("normalize", "--normalize"),
        ("float_labels", "integer"),
        ("bool_labels", "labels must be an integer array, got dtype bool"),
        ("bool_image", "image must be numeric"),
    ],
)
def test_cli_embed__errors_are_named_and_write_nothing(files, capsys, case, match):
    tmp, image, labels = files
    img, lab, out, extra = tmp / "img.tif", tmp / "lab.tif", tmp / "out.csv", []
    out.write_text("previous results\n")  # must survive any failure
    if case == "shape":
        tifffile.imwrite(tmp / "small.tif", labels[:50])
        lab = tmp / "small.tif"
    elif case == "unreadable":
        (tmp / "bad.png").write_bytes(b"\x89PNG garbage")
        img = tmp / "bad.png"
    elif case == "missing":
        img = tmp / "nope.tif"
    elif case == "not_checkpoint":
        (tmp / "model.pt").write_text("hello")
        extra = ["--checkpoint", tmp / "model.pt"]
    elif case == "no_dir":
        out = tmp / "missing_dir" / "out.csv"
    elif case == "dir_is_file":
        out = tmp / "lab.tif" / "out.csv"
    elif case == "normalize":
        extra = ["--normalize", "bright"]
    elif case == "float_labels":
        tifffile.imwrite(tmp / "flab.tif", labels.astype(np.float32))
        lab = tmp / "flab.tif"
    elif case == "bool_labels":
        tifffile.imwrite(tmp / "mask.tif", labels > 0)
        lab = tmp / "mask.tif"
    elif case == "bool_image":
        tifffile.imwrite(tmp / "mask.tif", image > 2000)
        img = tmp / "mask.tif"
    before = sorted(p.name for p in tmp.iterdir())
    # --overwrite: out.csv exists (without it, that is the error); a failure still keeps it
    assert (
        _run("embed", img, lab, "-o", out, "--crop-size", 32, "--quiet", "--overwrite", *extra) == 2
    )
    err = capsys.readouterr().err
    assert "napari-segrep: error:" in err and match in err
    assert err.startswith("napari-segrep: error:") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err  # one line, naming the problem
    assert sorted(p.name for p in tmp.iterdir()) == before
    assert (tmp / "out.csv").read_text() == "previous results\n"


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert err.startswith("napari-segrep: error:") and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def _listing(tmp):
    return {p.name: (p.read_bytes() if p.is_file() else None) for p in tmp.iterdir()}


@pytest.mark.parametrize("case", ["image", "labels", "symlink", "hardlink", "checkpoint_sidecar"])
def test_cli_embed__refuses_an_output_that_is_an_input(files, capsys, case):
    """Even with --overwrite; before any work (the labels here would fail validation too, and the
    output is named first)."""
    tmp, _, _ = files
    extra = []
    if case == "image":
        out, role = tmp / "img.tif", "image"
    elif case == "labels":
        out, role = tmp / "lab.tif", "labels"
    elif case == "symlink":
        (tmp / "link.csv").symlink_to(tmp / "img.tif")
        out, role = tmp / "link.csv", "image"
    elif case == "hardlink":
        os.link(tmp / "lab.tif", tmp / "hard.csv")
        out, role = tmp / "hard.csv", "labels"
    else:  # the sidecar out.csv.json is the checkpoint
        sr.save_encoder(sr.SegmentEncoder(seed=1), tmp / "out.csv.json")
        out, role, extra = tmp / "out.csv", "checkpoint", ["--checkpoint", tmp / "out.csv.json"]
    before = _listing(tmp)
    argv = ["embed", tmp / "img.tif", tmp / "lab.tif", "-o", out, "--overwrite", "--quiet"]
    assert _run(*argv, *extra) == 2
    _one_line_error(capsys, f"is the input {role}")
    assert _listing(tmp) == before


@pytest.mark.parametrize("name", ["res.json", "res.JSON"])
def test_cli_embed__refuses_an_output_named_like_its_sidecar(files, capsys, name):
    tmp, _, _ = files
    before = _listing(tmp)
    assert _run("embed", tmp / "img.tif", tmp / "lab.tif", "-o", tmp / name, "--quiet") == 2
    _one_line_error(capsys, "ends in .json, which napari-segrep keeps for", "OUT.csv")
    assert _listing(tmp) == before


@pytest.mark.parametrize("existing", ["out.csv", "out.csv.json"])
def test_cli_embed__existing_outputs_are_replaced_only_with_overwrite(files, capsys, existing):
    tmp, _, _ = files
    if existing == "out.csv":
        (tmp / existing).write_text("the user's file\n")
    else:  # a sidecar of ours (a JSON someone else wrote is never replaced: below)
        sr.write_table(pd.DataFrame({"label": [1]}), tmp / "out.csv")
        (tmp / "out.csv").unlink()
    before = _listing(tmp)
    argv = ["embed", tmp / "img.tif", tmp / "lab.tif", "-o", tmp / "out.csv", "--crop-size", 32]
    assert _run(*argv, "--quiet") == 2
    _one_line_error(capsys, f"{tmp / existing} exists", "--overwrite")
    assert _listing(tmp) == before
    assert _run(*argv, "--quiet", "--overwrite") == 0
    assert json.loads((tmp / "out.csv.json").read_text())["n_segments"] == 6
    assert len(pd.read_csv(tmp / "out.csv")) == 6


def test_cli_embed__an_output_that_is_a_directory_fails_before_any_work(files, capsys):
    tmp, _, _ = files
    (tmp / "results").mkdir()
    (tmp / "bad_labels.tif").write_bytes(b"not an image")  # would fail if it were read
    argv = ["embed", tmp / "img.tif", tmp / "bad_labels.tif", "-o", tmp / "results", "--quiet"]
    assert _run(*argv) == 2
    _one_line_error(capsys, f"{tmp / 'results'} is a directory")
    assert not list((tmp / "results").iterdir())


def test_cli_embed__outputs_get_the_users_permissions(files):
    from ..test_io import umask

    tmp, _, _ = files
    with umask(0o027):
        argv = ["embed", tmp / "img.tif", tmp / "lab.tif", "-o", tmp / "o.csv", "--crop-size", 32]
        assert _run(*argv, "--quiet") == 0
    for name in ("o.csv", "o.csv.json"):
        assert stat.S_IMODE((tmp / name).stat().st_mode) == 0o640, name


def test_cli_embed__a_warning_is_one_clean_line(tmp_path, capsys):
    """The engine warns about labels without a segment: the user reads one line, not Python's
    ``file:line: UserWarning`` with the source line."""
    tifffile.imwrite(tmp_path / "img.tif", np.ones((32, 32), np.uint8))
    tifffile.imwrite(tmp_path / "lab.tif", np.zeros((32, 32), np.int32))
    argv = ["embed", tmp_path / "img.tif", tmp_path / "lab.tif", "-o", tmp_path / "o.csv"]
    assert _run(*argv, "--quiet") == 0
    err = capsys.readouterr().err
    warning_lines = [
        line for line in err.splitlines() if "segrep: warning" in line or "Warn" in line
    ]
    assert warning_lines == [
        "napari-segrep: warning: labels contain no segment (all zero): returning an empty table"
    ], err
    assert "UserWarning" not in err and "warnings.warn" not in err
    assert len(pd.read_csv(tmp_path / "o.csv")) == 0


def test_cli_embed__measure_adds_the_measurement_columns(files, capsys):
    from napari_segrep.analysis.measure import SHAPE_COLUMNS

    tmp, image, labels = files
    out = tmp / "m.csv"
    argv = ["embed", tmp / "img.tif", tmp / "lab.tif", "-o", out, "--crop-size", 32, "--measure"]
    assert _run(*argv) == 0
    assert "embedded in" in capsys.readouterr().err
    df = pd.read_csv(out)
    geometry = ["area", *SHAPE_COLUMNS, "intensity_mean_0", "intensity_std_0"]
    first = list(df.columns).index("emb_0")
    assert list(df.columns[first - len(geometry) + 1 : first]) == geometry[1:]
    assert list(df.columns).count("area") == 1
    expected = sr.measure_segments(image, labels)
    np.testing.assert_allclose(df[geometry], expected[geometry], rtol=1e-9)
    side = json.loads(sidecar_path(out).read_text())
    assert side["measure"] is True and side["measurements"] == geometry
    clf = sr.train_classifier(
        df, {1: "a", 2: "a", 3: "b", 4: "b"}, features="embedding+geometry", method="knn", k=1
    )
    assert len(clf.predict(df)) == 6

    plain = tmp / "p.csv"
    assert (
        _run("embed", tmp / "img.tif", tmp / "lab.tif", "-o", plain, "--crop-size", 32, "--quiet")
        == 0
    )
    assert "perimeter" not in pd.read_csv(plain).columns
    assert json.loads(sidecar_path(plain).read_text())["measure"] is False


@pytest.mark.parametrize("inputs", ["pair", "data"])
def test_cli_embed__a_users_json_beside_the_output_is_never_replaced(files, capsys, inputs):
    """Issue 22, item 3: ``out.json`` of the user's next to ``-o out.csv --overwrite`` stays; a
    JSON of the user's at the sidecar's own place (``out.csv.json``) is refused in one line,
    with or without --overwrite, before any work."""
    tmp, _, _ = files
    if inputs == "pair":
        pair = [tmp / "img.tif", tmp / "lab.tif"]
    else:
        (tmp / "data" / "images").mkdir(parents=True)
        (tmp / "data" / "labels").mkdir()
        os.link(tmp / "img.tif", tmp / "data" / "images" / "a.tif")
        os.link(tmp / "lab.tif", tmp / "data" / "labels" / "a.tif")
        pair = ["--data", tmp / "data"]
    (tmp / "out.json").write_text('{"my": "notes"}\n')
    (tmp / "out.csv.json").write_text('{"my": "other notes"}\n')
    before = _listing(tmp)
    argv = ["embed", *pair, "-o", tmp / "out.csv", "--crop-size", 32, "--quiet"]
    for extra in ([], ["--overwrite"]):
        assert _run(*argv, *extra) == 2
        _one_line_error(
            capsys,
            f"{tmp / 'out.csv.json'} exists and was not written by napari-segrep",
            "choose another output name, or move that file",
        )
        assert _listing(tmp) == before
    (tmp / "out.csv.json").unlink()
    assert _run(*argv, "--overwrite") == 0
    assert (tmp / "out.json").read_text() == '{"my": "notes"}\n'
    assert json.loads(sidecar_path(tmp / "out.csv").read_text())["n_segments"] == 6


@pytest.mark.parametrize("sample", ["cells", "coins"])
def test_cli_embed__swapped_image_and_labels_are_refused_before_any_work(tmp_path, capsys, sample):
    """``embed coins_labels.tif coins.tif`` (labels first): one line naming both files and the
    right order, exit 2, nothing written, no encoder built (it used to warn and write a table
    of 250 "segments" of the photograph)."""
    from napari_segrep._sample_data import make_cells, make_coins

    image, labels = make_coins() if sample == "coins" else make_cells((128, 128), 12)[:2]
    tifffile.imwrite(tmp_path / f"{sample}.tif", image)
    tifffile.imwrite(tmp_path / f"{sample}_labels.tif", labels)
    image_path, labels_path = tmp_path / f"{sample}.tif", tmp_path / f"{sample}_labels.tif"
    out = tmp_path / "out.csv"
    assert _run("embed", labels_path, image_path, "-o", out, "--weights", "none") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(
        f"napari-segrep: error: image and labels seem swapped: the LABELS {image_path} look like "
        "an intensity image ("
    ), err
    assert f"the IMAGE {labels_path} like a label image ({int(labels.max())} compact" in err
    assert f"give the image first: napari-segrep embed {image_path} {labels_path} ..." in err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([image_path.name, labels_path.name])
    # the right way round it embeds
    argv = ["embed", image_path, labels_path, "-o", out, "--weights", "none", "--quiet"]
    assert _run(*argv, "--crop-size", 32, "--device", "cpu") == 0
    assert len(pd.read_csv(out)) == len(np.unique(labels)) - 1


@settings(max_examples=40, deadline=None)
@given(
    cells=st.lists(
        st.tuples(st.integers(0, 15), st.integers(1, 7)),
        min_size=1,
        max_size=16,
        unique_by=lambda cell: cell[0],
    ),
    background=st.integers(0, 255),
    noise=st.integers(0, 40),
    seed=st.integers(0, 2**32 - 1),
)
def test_refuse_swapped__never_refuses_a_label_image_given_as_labels(
    cells, background, noise, seed
):
    """Whatever the image (flat, noisy, with a background of zeros, even a label image
    itself), labels made of compact segments (discs on a 4x4 grid, radius 1-7) are never
    called swapped: the refusal needs LABELS that look like an intensity image."""
    from napari_segrep.cli.embed import _refuse_swapped

    discs = [(8 + 16 * (i // 4), 8 + 16 * (i % 4), r) for i, r in cells]
    labels = disc_labels((64, 64), discs)
    rng = np.random.default_rng(seed)
    image = background * (labels > 0) + rng.integers(0, noise + 1, labels.shape)
    for candidate in (image.astype(np.uint8), labels.astype(np.uint16), np.zeros_like(labels)):
        _refuse_swapped(candidate, labels, image_path=Path("i.tif"), labels_path=Path("l.tif"))


# ---------------------------------------------------------------------- volumes
def _blobs(shape, centres, radius):
    """Labels of ``shape`` (any dims) with one ball per centre, ids 1, 2, ..."""
    grid = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    for k, centre in enumerate(centres):
        d2 = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
        labels[d2 <= radius**2] = k + 1
    return labels


@pytest.fixture()
def volume_files(tmp_path):
    """vol.tif (16, 32, 32) uint16 and vol_labels.tif with 3 balls, plain TIFFs (no
    metadata about axes or spacing)."""
    labels = _blobs((16, 32, 32), [(5, 8, 8), (8, 20, 12), (10, 12, 24)], 4)
    rng = np.random.default_rng(3)
    image = (rng.random(labels.shape) * 1000 + 2000 * (labels > 0)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "vol.tif", image)
    tifffile.imwrite(tmp_path / "vol_labels.tif", labels)
    return tmp_path, image, labels


def test_cli_embed__a_3d_pair_without_axes_is_refused_with_both_fixes(volume_files, capsys):
    """Issue 23: "3D image (64, 64, 64) is ambiguous: pass channel_axis" is gone; the user reads
    one line naming the labels file and both fixes, before any work, nothing written."""
    tmp, _, _ = volume_files
    before = _listing(tmp)
    argv = ["embed", tmp / "vol.tif", tmp / "vol_labels.tif", "-o", tmp / "out.csv"]
    assert _run(*argv, "--weights", "none") == 2
    err = _one_line_error(capsys, "vol_labels.tif", "(16, 32, 32)", "--axes zyx", "--axes tyx")
    assert "z-stack" in err and "time-lapse" in err
    assert "channel_axis" not in err and "channel-axis" not in err
    assert _listing(tmp) == before


def _write(tmp, name, array):
    tifffile.imwrite(tmp / name, array)
    return tmp / name


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        (
            "2d_image_3d_labels",
            ["plane.tif (32, 32)", "a z-stack (--axes zyx) but the image is 2D", "the volume"],
        ),
        ("3d_image_2d_labels", ["one axis more than the labels", "--axes zyx", "--channel-axis 0"]),
        (
            "planes_differ",
            ["short_labels.tif are (12, 32, 32)", "does not match", "(Z, Y, X) shape"],
        ),
        ("one_plane", ["one_labels.tif (1, 32, 32) are a volume of 1 plane", "at least 2 planes"]),
        ("spacing_zero", ["--spacing 0 0.5 0.5", "positive and finite", "DZ DY DX"]),
        ("spacing_negative", ["--spacing -2 0.5 0.5", "positive and finite"]),
        ("spacing_nan", ["--spacing nan 0.5 0.5", "positive and finite"]),
        ("spacing_count", ["--spacing 0.5 0.5: 2 values", "3 spatial axes", "DZ DY DX"]),
        ("spacing_count_2d", ["--spacing 2 0.5 0.5: 3 values", "2 spatial axes", "DY DX"]),
        ("axes_count", ["--axes zyx names 3 axes", "p_labels.tif are 2D (32, 32)", "--axes yx"]),
        ("2d_backbone", ["--backbone resnet18 embeds 2D objects", "a z-stack", "--backbone"]),
    ],
)
def test_cli_embed__bad_volume_inputs_are_one_line_before_any_work(
    volume_files, capsys, case, needles
):
    """Each mistake with a volume is one line naming it and the fix; nothing is written."""
    tmp, image, labels = volume_files
    img, lab, extra = tmp / "vol.tif", tmp / "vol_labels.tif", ["--axes", "zyx"]
    if case == "2d_image_3d_labels":
        img = _write(tmp, "plane.tif", image[8])
    elif case == "3d_image_2d_labels":
        lab, extra = _write(tmp, "plane_labels.tif", labels[8]), []
    elif case == "planes_differ":
        lab = _write(tmp, "short_labels.tif", labels[:12])
    elif case == "one_plane":
        img, lab = _write(tmp, "one.tif", image[:1]), _write(tmp, "one_labels.tif", labels[:1])
    elif case.startswith("spacing"):
        values = {
            "spacing_zero": ["0", "0.5", "0.5"],
            "spacing_negative": ["-2", "0.5", "0.5"],
            "spacing_nan": ["nan", "0.5", "0.5"],
            "spacing_count": ["0.5", "0.5"],
            "spacing_count_2d": ["2", "0.5", "0.5"],
        }[case]
        extra += ["--spacing", *values]
        if case == "spacing_count_2d":
            img, lab = _write(tmp, "p.tif", image[8]), _write(tmp, "p_labels.tif", labels[8])
            extra = ["--spacing", *values]
    elif case == "axes_count":
        img, lab = _write(tmp, "p.tif", image[8]), _write(tmp, "p_labels.tif", labels[8])
    elif case == "2d_backbone":
        extra += ["--backbone", "resnet18"]
    before = _listing(tmp)
    assert _run("embed", img, lab, "-o", tmp / "out.csv", "--weights", "none", *extra) == 2
    err = _one_line_error(capsys, *needles)
    assert "pass channel_axis" not in err
    assert _listing(tmp) == before


def test_cli_embed__a_vit_backbone_embeds_with_its_own_crop_and_names_itself(files, capsys):
    """``napari-segrep embed IMG LAB --backbone vit_tiny_patch16_224 -o out.csv``: timm's
    ViT-Tiny with masked attention, untrained (it has no weights to download), at its own crop
    (112: a 7x7 token grid) unless --crop-size says otherwise; the sidecar names the backbone."""
    tmp, image, labels = files
    out = tmp / "vit.csv"
    assert _run("embed", tmp / "img.tif", tmp / "lab.tif", "-o", out,
                "--backbone", "vit_tiny_patch16_224") == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "weights: untrained vit_tiny_patch16_224 (random init, seed 0)" in err
    df = pd.read_csv(out)
    emb = df.filter(like="emb_").to_numpy()
    assert emb.shape == (len(np.unique(labels)) - 1, 192) and np.isfinite(emb).all()
    sidecar = json.loads(sidecar_path(out).read_text())
    assert sidecar["crop_size"] == 112 and sidecar["encoder"]["backbone"] == "vit_tiny_patch16_224"
    # a weight set the ViT has not: refused before any work, naming the fix
    assert _run("embed", tmp / "img.tif", tmp / "lab.tif", "-o", tmp / "x.csv",
                "--backbone", "vit_tiny_patch16_224", "--weights", "imagenet") == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "backbone vit_tiny_patch16_224 has no 'imagenet' weights" in err
    assert "--weights none" in err and not (tmp / "x.csv").exists()
