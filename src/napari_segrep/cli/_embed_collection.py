"""``napari-segrep embed --images GLOB --labels GLOB -o OUT`` (or ``--data DIR``): a collection
of image/label pairs into one table, resumable and shardable.

Everything is checked before any work (pairing, every file's header: readable, (Y, X) shapes
alike, integer labels, one channel count; the outputs; an unfinished run's settings).  Each
finished image is written at once as a part in ``OUT.parts/``
(:mod:`napari_segrep.analysis.parts`); a rerun of the same command skips them; after the
last image the parts are merged into ``OUT`` plus its provenance sidecar and the folder is
removed.  Under torchrun (or ``--devices N``,
which relaunches under torchrun) rank ``r`` of ``W`` embeds images ``r, r + W, ...``; rank 0
merges once every rank is done, so the table is the one a single process writes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ._common import CLIError, Interrupted, add_pair_options

__all__ = ["add_collection_options", "run_collection"]

#: Set by ``--devices N`` for the processes it starts: where rank 0 leaves the exit status
#: (they exit 0, so that torchrun adds no traceback of its own to a user error).
_STATUS_ENV = "NAPARI_SEGREP_EMBED_STATUS"


def add_collection_options(parser) -> None:
    """``--images``, ``--labels``, ``--data``, ``--devices``, ``--hash``, ``--workers``."""
    group = parser.add_argument_group(
        "collections (instead of IMAGE LABELS; resumable: rerun the same command to continue)"
    )
    add_pair_options(group)
    group.add_argument(
        "--devices",
        type=int,
        default=1,
        help="processes (GPUs) sharing the images; > 1 relaunches under torchrun",
    )
    group.add_argument(
        "--hash",
        action="store_true",
        help="record every input's sha256 in the sidecar (reads every file once more)",
    )
    group.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes reading images ahead (when the engine supports it)",
    )


@dataclass
class _Plan:
    """What a run embeds and how, as checked before any work."""

    pairs: list
    names: list
    encoder: object
    kwargs: dict
    manifest: dict
    folder: object
    kept: int = 0
    start_line: str = ""


def run_collection(args: argparse.Namespace) -> int:
    """The collection form of ``embed``: one table for many image/label pairs."""
    status_file = os.environ.get(_STATUS_ENV)
    if status_file is None:
        return _run(args)
    rank = os.environ.get("RANK", "0")
    try:
        rc = _run(args)
    except (CLIError, ValueError, OSError) as exc:
        print(f"napari-segrep: error: {exc}", file=sys.stderr)
        rc = 2
    except KeyboardInterrupt as exc:
        if rank == "0":
            what = getattr(exc, "what", None) or "nothing was written"
            print(f"napari-segrep: interrupted; {what}", file=sys.stderr)
        rc = 130
    Path(f"{status_file}.{rank}").write_text(f"{rc}\n")
    return 0


class _Quiet(CLIError):
    """A rank other than 0 stops because a rank failed (rank 0 says why)."""


def _run(args: argparse.Namespace) -> int:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.devices < 1:
        raise CLIError(f"--devices {args.devices}: give 1 or more")
    if args.devices > 1 and "WORLD_SIZE" not in os.environ:
        _prepare(args, check_folder=True)  # every user error now, before any process starts
        return _relaunch_under_torchrun(args.devices)
    plan = _prepare(args, check_folder=world == 1)
    rank = int(os.environ.get("RANK", "0"))
    dist = _join_process_group(world)
    try:
        return _execute(args, plan, rank, world, dist)
    except _Quiet:
        return 2
    finally:
        if rank == 0:
            plan.folder.release()
        if dist is not None:
            dist.destroy_process_group()


def _prepare(args: argparse.Namespace, *, check_folder: bool) -> _Plan:
    """Every check that needs no pixel: nothing is written."""
    from .._version import __version__
    from ..analysis.export import sidecar_path
    from ..analysis.parts import PartsFolder, input_record, parts_dir
    from ..engine.input_files import check_pair_headers
    from ..io import pair_files
    from ._common import check_outputs, parse_normalize
    from .weights import choose_weights

    if args.measure:
        raise CLIError("--measure works with one IMAGE LABELS pair: embed collections without it")
    normalize = parse_normalize(args.normalize)
    weights, start_line = choose_weights(
        args.weights, backbone=args.backbone, seed=args.seed, checkpoint=args.checkpoint
    )
    pairs = pair_files(args.images, args.labels, data_dir=args.data)
    names = [image.stem for image, _ in pairs]
    inputs = {"checkpoint": args.checkpoint}
    for name, (image, labels) in zip(names, pairs, strict=True):
        inputs[f"image {name}"], inputs[f"labels of {name}"] = image, labels
    check_outputs([args.output, sidecar_path(args.output)], inputs=inputs, overwrite=args.overwrite)
    shapes = check_pair_headers(pairs, channel_axis=args.channel_axis)
    channels = [_channels(i, lab, args.channel_axis) for i, lab in shapes]
    if len(set(channels)) > 1:
        by_count: dict[int, list[str]] = {}
        for (image, _), count in zip(pairs, channels, strict=True):
            by_count.setdefault(count, []).append(image.name)
        shown = "; ".join(
            f"{count} channel{'s' * (count > 1)}: {', '.join(files[:3])}"
            + (f" and {len(files) - 3} more" if len(files) > 3 else "")
            for count, files in by_count.items()
        )
        raise CLIError(
            f"the images have different numbers of channels ({shown}): one encoder takes one "
            "number of channels; embed them as separate collections"
        )

    from ..engine.embed import encoder_for

    encoder = encoder_for(
        args.checkpoint if args.checkpoint is not None else weights,
        in_channels=channels[0],
        backbone=args.backbone,
        seed=args.seed,
    )
    settings = {
        "encoder": encoder.record(),
        "crop_size": args.crop_size,
        "normalize": normalize,
        "channel_axis": args.channel_axis,
        "package_version": __version__,
    }
    records = [input_record(n, i, lab) for n, (i, lab) in zip(names, pairs, strict=True)]
    manifest = {"package": "napari-segrep", "settings": settings, "inputs": records}
    folder = PartsFolder(parts_dir(args.output))
    kept = 0
    if check_folder:
        kept = folder.check(manifest, overwrite=args.overwrite)
    kwargs = {
        "crop_size": args.crop_size,
        "batch_size": args.batch_size,
        "channel_axis": args.channel_axis,
        "normalize": normalize,
    }
    return _Plan(pairs, names, encoder, kwargs, manifest, folder, kept, start_line)


def _channels(image_shape, labels_shape, channel_axis) -> int:
    """Channels of an image, from its shape (as ``as_channels_first`` reads it)."""
    plane = image_shape[1:] if len(labels_shape) == 3 else image_shape
    if len(plane) == 2:
        return 1
    if channel_axis is not None and -len(plane) <= channel_axis < len(plane):
        return int(plane[channel_axis])
    return 3 if plane[-1] in (3, 4) else 1  # else ambiguous: the engine names the image


def _join_process_group(world: int):
    """``torch.distributed`` with the default group joined (gloo: only small messages and
    barriers travel, the embeddings go through files), or None for one process."""
    if world <= 1:
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return dist


def _share(dist, value) -> list:
    """Every rank's ``value``, in rank order (``[value]`` for one process)."""
    if dist is None:
        return [value]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def _execute(args, plan: _Plan, rank: int, world: int, dist) -> int:
    folder, n = plan.folder, len(plan.pairs)
    problem = None
    if rank == 0:
        try:
            plan.kept = folder.start(plan.manifest, overwrite=args.overwrite)
        except (ValueError, OSError) as exc:
            problem = str(exc)
    problem = _share(dist, problem)[0]  # rank 0's answer, to every rank
    if problem is not None:
        raise CLIError(problem) if rank == 0 else _Quiet(problem)
    if rank == 0 and not args.quiet:
        print(plan.start_line, file=sys.stderr)
        if plan.kept:
            print(
                f"napari-segrep: resuming: {plan.kept} of {n} images already embedded "
                f"({folder.path})",
                file=sys.stderr,
            )
    mine = list(range(rank, n, world))  # DistributedSampler's share, without padding
    t0 = time.perf_counter()
    failure = None
    try:
        _embed_share(args, plan, mine, rank=rank, world=world)
    except (ValueError, OSError) as exc:  # the engine names the image
        failure = str(exc)
    except KeyboardInterrupt:
        done = len(folder.done())
        raise Interrupted(
            f"{done} of {n} images are embedded in {folder.path}: run the same command again "
            "to continue"
        ) from None
    failures = [f for f in _share(dist, failure) if f is not None]
    if failures:
        if rank != 0:
            raise _Quiet(failures[0])
        done = len(folder.done())
        raise CLIError(
            f"{'; '.join(failures)}; the {done} of {n} images embedded so far are kept in "
            f"{folder.path}: fix that file and run the same command again to continue"
        )
    if rank != 0:
        return 0
    return _merge_and_write(args, plan, seconds=time.perf_counter() - t0, world=world)


def _embed_share(args, plan: _Plan, mine: list[int], *, rank: int, world: int) -> None:
    """Embed this rank's images that have no part yet, writing each part as it comes."""
    from inspect import signature

    from tqdm import tqdm

    from ..engine.collection import iter_embed_images

    folder = plan.folder
    done = folder.done()
    todo = [i for i in mine if i not in done]
    show = rank == 0 and not args.quiet
    prefix = f"rank 0 of {world}: " if world > 1 else ""
    kwargs = dict(plan.kwargs, device=_device(args.device))
    if "num_workers" in signature(iter_embed_images).parameters:
        kwargs["num_workers"] = args.workers
    elif args.workers:
        raise CLIError("--workers: this version embeds images one at a time; leave it out")
    images = tqdm(
        total=len(mine),
        initial=len(mine) - len(todo),
        desc=f"{prefix}images",
        unit="image",
        file=sys.stderr,
        disable=not show,
    )
    segments = tqdm(desc=f"{prefix}segments", unit="seg", file=sys.stderr, disable=not show)

    def count_segments(module, inputs, output) -> None:  # returns None: output unchanged
        segments.update(len(output))

    hook = plan.encoder.register_forward_hook(count_segments)
    try:
        stream = iter_embed_images(
            [plan.pairs[i][0] for i in todo],
            [plan.pairs[i][1] for i in todo],
            names=[plan.names[i] for i in todo],
            encoder=plan.encoder,
            **kwargs,
        )
        for j, (name, table) in enumerate(stream):
            folder.write(todo[j], name, table)
            images.update(1)
    finally:
        hook.remove()
        segments.close()
        images.close()


def _device(device: str) -> str:
    """This process's device: under torchrun, ``auto``/``cuda`` mean its own GPU."""
    if "LOCAL_RANK" in os.environ and device in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            return f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
    return device


def _merge_and_write(args, plan: _Plan, *, seconds: float, world: int) -> int:
    """Rank 0, every part done: merge in input order, write OUT + sidecar, remove parts."""
    from ..analysis.export import provenance, sidecar_path, write_table
    from ..analysis.parts import input_record
    from ..engine.collection import merge_parts

    folder, n = plan.folder, len(plan.pairs)
    df = merge_parts(folder.read_all(range(n)))
    records = plan.manifest["inputs"]
    if args.hash:
        records = [
            input_record(name, image, labels, sha256=True)
            for name, (image, labels) in zip(plan.names, plan.pairs, strict=True)
        ]
    sidecar = provenance(
        command="embed",
        encoder_config=plan.encoder.record(),
        n_segments=len(df),
        normalization=df.attrs.get("normalization"),
        crop_size=args.crop_size,
        batch_size=args.batch_size,
        channel_axis=args.channel_axis,
        device=_device(args.device),
        inputs={"images": args.images, "labels": args.labels, "data": args.data},
        checkpoint=args.checkpoint,
        seconds=seconds,
        images=records,
        n_images=n,
        world_size=world,
        resumed_images=plan.kept,
        normalize=plan.kwargs["normalize"],
        measure=False,
    )
    write_table(df, args.output, provenance=sidecar, overwrite=bool(args.overwrite))
    folder.release()
    folder.remove()
    print(
        f"{len(df)} segments of {n} images embedded in {seconds:.1f} s -> {args.output} "
        f"(+ {sidecar_path(args.output).name})",
        file=sys.stderr,
    )
    return 0


def _relaunch_under_torchrun(n: int) -> int:
    """``--devices N`` outside torchrun: run this same command under torchrun, each process
    with its share of the CPU threads; the exit status is rank 0's."""
    import signal
    import subprocess
    import tempfile

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc_per_node={n}", "-m", "napari_segrep.cli", *sys.argv[1:]]
    threads = max(1, (os.cpu_count() or 1) // n)
    with tempfile.TemporaryDirectory(prefix="napari-segrep-") as tmp:
        status = Path(tmp) / "status"
        env = {**os.environ, _STATUS_ENV: str(status)}
        env.setdefault("OMP_NUM_THREADS", str(threads))
        print(f"napari-segrep: starting {n} processes: {' '.join(cmd[1:])}", file=sys.stderr)
        process = subprocess.Popen(cmd, env=env)
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the processes get it too
        try:
            rc = process.wait()
        finally:
            signal.signal(signal.SIGINT, previous)
        codes = {p.name: int(p.read_text()) for p in Path(tmp).glob("status.*")}
    if "status.0" in codes:  # rank 0 has said what happened
        return codes["status.0"]
    if rc != 0 or codes:
        print(
            f"napari-segrep: error: a process ended with status {rc or max(codes.values())} "
            "(see above); the images embedded so far are kept: run the same command again to "
            "continue",
            file=sys.stderr,
        )
        return 2
    return 0
