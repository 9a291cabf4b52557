"""The command line as a whole: the parser assembled from the subcommand modules, cheap help,
and main's error policy (user errors: one line, exit 2; divergence: exit 1; bugs: traceback)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

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


@pytest.fixture()
def small_inputs(tmp_path):
    """A tiny image/labels pair (also as --data), an embedding table and its annotations."""
    import numpy as np
    import pandas as pd

    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "labels").mkdir()
    image, labels, _ = make_cells(shape=(64, 64), n_cells=4, seed=1)
    tifffile.imwrite(tmp_path / "data" / "images" / "im.tif", image)
    tifffile.imwrite(tmp_path / "data" / "labels" / "im_labels.tif", labels)
    rng = np.random.default_rng(0)
    table = {"label": range(1, 13), **{f"emb_{i}": rng.random(12) for i in range(4)}}
    pd.DataFrame(table).to_csv(tmp_path / "table.csv", index=False)
    pd.DataFrame({"label": range(1, 7), "class": ["a", "b"] * 3}).to_csv(
        tmp_path / "ann.csv", index=False
    )
    return tmp_path


_SEED_COMMANDS = {
    "embed": (lambda d: ["embed", *_pair(d), "-o", d / "out.csv", "--weights", "none"], 2**63 - 1),
    "embed --data": (lambda d: ["embed", "--data", d / "data", "-o", d / "out.csv"], 2**63 - 1),
    "train": (lambda d: ["train", "--data", d / "data", "--log-dir", d / "out"], 2**63 - 1),
    "classify": (
        lambda d: [
            "classify",
            d / "table.csv",
            "--annotations",
            d / "ann.csv",
            "-o",
            d / "out.csv",
        ],
        2**32 - 1,
    ),
}


def _pair(d):
    return d / "data" / "images" / "im.tif", d / "data" / "labels" / "im_labels.tif"


@pytest.mark.parametrize("command", list(_SEED_COMMANDS))
@pytest.mark.parametrize("seed", ["99999999999999999999", "-1", "max+1"])
def test_main__an_out_of_range_seed_is_one_line_before_any_work(
    small_inputs, capsys, command, seed
):
    """Every command taking --seed refuses one its libraries cannot take, naming the range,
    before writing anything (it used to end in "Overflow when unpacking long long", after the
    work had started, or in scikit-learn's message blaming the annotations)."""
    argv, maximum = _SEED_COMMANDS[command]
    seed = str(maximum + 1) if seed == "max+1" else seed
    assert main([str(a) for a in [*argv(small_inputs), "--seed", seed, "--quiet"]]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"napari-segrep: error: --seed {seed} is out of range: give an integer from 0 to "
        f"{maximum} (2**{maximum.bit_length()} - 1)\n"
    )
    assert not list(small_inputs.glob("out*"))


@pytest.mark.parametrize("command", ["embed", "classify"])
def test_main__the_largest_seed_works(small_inputs, capsys, command):
    argv, maximum = _SEED_COMMANDS[command]
    assert main([str(a) for a in [*argv(small_inputs), "--seed", maximum, "--quiet"]]) == 0
    from napari_segrep.analysis.export import sidecar_path

    sidecar = json.loads(sidecar_path(small_inputs / "out.csv").read_text())
    recorded = sidecar["encoder" if command == "embed" else "classifier"]["seed"]
    assert recorded == maximum


# ---------------------------------------------------------------------- the README's synopsis
ROOT = Path(__file__).resolve().parents[2]


def _synopsis_module():
    """docs/cli_synopsis.py, the generator of the README's CLI synopsis."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cli_synopsis", ROOT / "docs" / "cli_synopsis.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme__the_cli_synopsis_is_the_one_the_parser_generates():
    synopsis = _synopsis_module()
    block = synopsis.readme_block((ROOT / "README.md").read_text(encoding="utf-8"))
    assert block == synopsis.synopsis(get_arg_parser()), (
        "README.md's CLI synopsis differs from the parser: run python docs/cli_synopsis.py"
    )


def _subcommand_argvs(parser, prefix=()):
    import argparse

    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield list(prefix)
        return
    for name, sub in subs[0].choices.items():
        yield from _subcommand_argvs(sub, (*prefix, name))


def _synopsis_entries(block: str) -> list[str]:
    """The README block's command entries, continuation lines joined."""
    entries: list[str] = []
    for line in block.splitlines():
        if line.startswith("napari-segrep "):
            entries.append(line)
        elif line.startswith("    ") and entries:
            entries[-1] += f" {line.strip()}"
    return entries


def test_readme__the_cli_synopsis_names_every_option_that_help_shows(capsys):
    """Read from each command's --help itself (not from the generator): every option is in
    the README's synopsis, in its command's entry (the README had drifted: embed --backbone
    --seed --quiet, train --channel-axis..., demo --screenshot, weights --timeout were
    missing)."""
    block = _synopsis_module().readme_block((ROOT / "README.md").read_text(encoding="utf-8"))
    entries = _synopsis_entries(block)
    commands = list(_subcommand_argvs(get_arg_parser()))
    assert len(commands) >= 6, commands
    for argv in commands:
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        options = [o for o in _option_entries(capsys.readouterr().out) if o != "-h"]
        prefix = f"napari-segrep {' '.join(argv)}"
        (entry,) = [e for e in entries if e == prefix or e.startswith(f"{prefix} ")]
        for option in options:
            assert re.search(rf"[\s\[|]{re.escape(option)}[\]|\s]", f"{entry} "), (prefix, option)


def test_cli_synopsis__check_fails_on_a_stale_readme_and_the_command_fixes_it(tmp_path):
    """The documented command, as a developer runs it: --check says what to run (exit 1) when
    the block is stale; without --check it rewrites the block and nothing else."""
    synopsis = _synopsis_module()
    readme = tmp_path / "README.md"
    stale = f"# intro\n\n{synopsis.BEGIN}\n```bash\nnapari-segrep embed IMAGE LABELS\n```\n"
    readme.write_text(f"{stale}{synopsis.END}\n\nmore text\n", encoding="utf-8")
    script = [sys.executable, str(ROOT / "docs" / "cli_synopsis.py"), "--readme", str(readme)]
    check = subprocess.run([*script, "--check"], capture_output=True, text=True)
    assert check.returncode == 1
    assert check.stderr == (
        f"{readme}: the CLI synopsis is out of date: run python docs/cli_synopsis.py\n"
    )
    assert subprocess.run(script, capture_output=True, text=True).returncode == 0
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# intro\n\n") and text.endswith("\n\nmore text\n")
    assert synopsis.readme_block(text) == synopsis.synopsis(get_arg_parser())
    assert subprocess.run([*script, "--check"], capture_output=True).returncode == 0


def test_cli__help_texts_name_every_format_and_quiet_is_spelt_alike(capsys):
    """embed's -o names .h5ad, --measure says it is for one pair, and -q/--quiet is the same
    option in every command that has one (only classify had -q)."""
    helps = {}
    for argv in _subcommand_argvs(get_arg_parser()):
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        helps[" ".join(argv)] = _option_entries(capsys.readouterr().out)
    embed = helps["embed"]
    assert all(f"OUT.{ext}" in embed["-o"] for ext in ("csv", "parquet", "h5ad")), embed["-o"]
    assert "one IMAGE LABELS pair only" in embed["--measure"]
    quiet = [command for command, entries in helps.items() if "-q" in entries]
    assert sorted(quiet) == ["classify", "demo", "embed", "train", "weights download"]
    assert not [command for command, entries in helps.items() if "--quiet" in entries]
