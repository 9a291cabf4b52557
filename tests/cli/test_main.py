"""The command line as a whole: the parser assembled from the subcommand modules, cheap help,
and main's error policy (user errors: one line, exit 2; divergence: exit 1; bugs: traceback)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import tifffile

from napari_segrep._sample_data import make_cells
from napari_segrep.cli import get_arg_parser, main

HEAVY = {"torch", "torchvision", "pandas", "scipy", "sklearn", "umap", "napari", "qtpy"}


def test_cli__help_documents_every_option():
    top = subprocess.run(
        [sys.executable, "-m", "napari_segrep.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "embed" in top and "demo" in top
    sub = subprocess.run(
        [sys.executable, "-m", "napari_segrep.cli", "embed", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for option in (
        "--checkpoint",
        "--crop-size",
        "--batch-size",
        "--device",
        "--normalize",
        "--channel-axis",
        "--output",
    ):
        assert option in sub


def test_cli__help_and_parsing_load_no_torch():
    """``napari-segrep --help`` (and every subcommand's) answers without importing torch or
    any other heavy module: commands import those when they run."""
    code = (
        "import json, sys\n"
        "import napari_segrep.cli as cli\n"
        "for argv in ([], ['embed'], ['train'], ['demo']):\n"
        "    try:\n"
        "        cli.main([*argv, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "cli.get_arg_parser().parse_args(['embed', 'a.tif', 'b.tif', '-o', 'c.csv'])\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "usage: napari-segrep train" in done.stdout  # the help really was printed
    loaded = set(json.loads(done.stdout.splitlines()[-1]))
    assert "napari_segrep" in loaded
    assert not loaded & HEAVY, loaded & HEAVY


def test_get_arg_parser__lists_the_subcommands_in_order():
    parser = get_arg_parser()
    help_text = parser.format_help()
    assert help_text.index("embed") < help_text.index("train") < help_text.index("demo")
    for command in ("embed", "train", "demo"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--no-such-option"])
    with pytest.raises(SystemExit):
        parser.parse_args([])  # a command is required


def test_main__diverged_training_exits_1_with_one_line(tmp_path, capsys):
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "labels").mkdir()
    for i in range(2):
        image, labels, _ = make_cells(shape=(128, 128), n_cells=12, seed=10 + i)
        tifffile.imwrite(tmp_path / "data" / "images" / f"img{i}.tif", image)
        tifffile.imwrite(tmp_path / "data" / "labels" / f"img{i}_labels.tif", labels)
    argv = ["train", "--data", tmp_path / "data", "--log-dir", tmp_path / "logs", "--epochs", 1]
    argv += ["--optimizer", "adamw", "--lr", 1e30, "--batch-size", 8, "--crop-size", 32]
    argv += ["--device", "cpu", "--quiet"]
    assert main([str(a) for a in argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("napari-segrep: error: the loss became") and err.count("\n") == 1
    assert "Traceback" not in err


def test_main__interrupt_exits_130(monkeypatch, capsys):
    """A second Ctrl-C (KeyboardInterrupt out of a command) is exit status 130, one line.  The
    command's body is a stand-in: a real one would need a signal sent mid-run."""

    def command(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("napari_segrep.cli.demo.run", command)
    assert main(["demo", "--headless"]) == 130
    assert capsys.readouterr().err == "napari-segrep: interrupted; nothing was written\n"


def test_main__a_bug_keeps_its_traceback(monkeypatch):
    """A TypeError is a programming error, not a user's: main does not disguise it as one
    (users' errors that the engine reports as TypeError are checked by the commands first)."""

    def command(args):
        raise TypeError("unsupported operand type(s)")

    monkeypatch.setattr("napari_segrep.cli.demo.run", command)
    with pytest.raises(TypeError, match="unsupported operand"):
        main(["demo", "--headless"])


def _option_entries(help_text: str) -> dict[str, str]:
    """``--help`` output -> {first option string: its help text (wrapped lines joined)}."""
    entries: dict[str, str] = {}
    current = None
    for line in help_text.splitlines():
        if line.startswith("  -"):
            invocation, _, rest = line.strip().partition("  ")
            current = invocation.split(",")[0].split()[0]
            entries[current] = rest.strip()
        elif current is not None and line.startswith("   "):
            entries[current] = f"{entries[current]} {line.strip()}".strip()
        else:
            current = None
    return entries


@pytest.mark.parametrize("command", ["embed", "train", "demo"])
def test_cli__every_option_shows_its_help_and_its_default_once(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    entries = _option_entries(capsys.readouterr().out)
    entries.pop("-h")
    assert len(entries) >= (10 if command != "demo" else 5), entries
    for option, text in entries.items():
        assert text and not text.startswith("("), f"{option} has no help: {text!r}"
        if option == "-o":
            assert "(required)" in text and "(default:" not in text, text
        else:
            assert text.count("(default:") == 1, f"{option}: {text!r}"


@pytest.mark.parametrize("output", [".", "", "/", ".."])
@pytest.mark.parametrize("command", ["embed", "embed --data", "classify"])
def test_cli__every_output_option_needs_a_file_name(tmp_path, capsys, monkeypatch, command, output):
    """``-o .``, ``-o ""``, ``-o /`` and ``-o ..``: one line saying a file name is needed (not
    "PosixPath('.') has an empty name"), before any work and writing nothing."""
    image, labels, _ = make_cells(shape=(64, 64), n_cells=4, seed=0)
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "labels").mkdir()
    tifffile.imwrite(tmp_path / "data" / "images" / "a.tif", image)
    tifffile.imwrite(tmp_path / "data" / "labels" / "a.tif", labels)
    (tmp_path / "t.csv").write_text("label,emb_0\n1,0.5\n2,0.25\n")
    (tmp_path / "ann.csv").write_text("label,class\n1,a\n2,b\n")
    argv = {
        "embed": ["embed", "data/images/a.tif", "data/labels/a.tif"],
        "embed --data": ["embed", "--data", "data"],
        "classify": ["classify", "t.csv", "--annotations", "ann.csv"],
    }[command]
    monkeypatch.chdir(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main([*argv, "-o", output, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("napari-segrep: error: output ") and err.count("\n") == 1, err
    assert "is a folder, not a file name: give the table a file name, e.g." in err, err
    assert "PosixPath" not in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
