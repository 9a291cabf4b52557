"""``napari-segrep embed --images GLOB --labels GLOB -o OUT`` (or ``--data DIR``): a collection
of image/label pairs into one table, resumable and shardable.

Everything is checked before any work (every option, pairing, file names, every file's header:
readable, integer labels, each image fitting its labels' layout (2D, a z-stack, a time-lapse:
``--axes``/``--spacing``, else the TIFF metadata; 3D labels whose axes nobody said are refused
with the fix), all 2D or all volumes, one channel count; the outputs; an unfinished run's
settings).  Each finished image is written at once as a part in ``OUT.parts/``
(:mod:`napari_segrep.analysis.parts`); a rerun of the same command, with or without
``--overwrite``, checks the parts it finds and skips those that check out (``--overwrite``
replaces ``OUT``, and a parts folder of other settings, never this run's own parts).  After the
last image the parts are merged into ``OUT`` plus its provenance sidecar (their hashes recorded
first, so that a rerun after a kill between the two renames knows them for its own and
finishes the job) and the folder is removed.  Under torchrun (or ``--devices N``, which
relaunches under torchrun) rank ``r`` of ``W`` embeds images ``r, r + W, ...``; rank 0 merges
once every rank is done, so the table is the one a single process writes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from dataclasses import dataclass, field

from ._common import CLIError, Interrupted, add_pair_options
from ._torchrun import (
    STATUS_ENV,
    join_process_group,
    relaunch_under_torchrun,
    run_as_rank,
    share,
)

__all__ = ["add_collection_options", "run_collection"]


def add_collection_options(parser) -> None:
    """``--images``, ``--labels``, ``--data``, ``--skip-unmatched``, ``--devices``, ``--hash``,
    ``--workers``."""
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
    encoder_sha256: str
    layouts: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    kept: int = 0
    start_line: str = ""
    notes: list = field(default_factory=list)


class _Quiet(CLIError):
    """A rank other than 0 stops because a rank failed (rank 0 says why)."""


def run_collection(args: argparse.Namespace) -> int:
    """The collection form of ``embed``: one table for many image/label pairs."""
    if os.environ.get(STATUS_ENV) is None:
        return _run(args)
    return run_as_rank(lambda: _run(args))  # a rank started by --devices N


def _run(args: argparse.Namespace) -> int:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.devices < 1:
        raise CLIError(f"--devices {args.devices}: give 1 or more")
    if args.devices > 1 and "WORLD_SIZE" not in os.environ:
        plan = _prepare(args, check_folder=True)  # every user error now, before any process
        return relaunch_under_torchrun(args.devices, kept=lambda: _kept(plan))
    rank = int(os.environ.get("RANK", "0"))
    with warnings.catch_warnings():
        if rank != 0 or STATUS_ENV in os.environ:  # said once: by rank 0, or by --devices
            warnings.simplefilter("ignore")
        plan = _prepare(args, check_folder=world == 1)
    dist = join_process_group(world)
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
    from ._common import check_outputs, pairs_from_args, parse_normalize
    from ._layout import check_encoder_dims, choose_backbone, collection_layouts
    from .weights import choose_weights

    if args.measure:
        raise CLIError("--measure works with one IMAGE LABELS pair: embed collections without it")
    _check_options(args)
    normalize = parse_normalize(args.normalize)
    pairs = pairs_from_args(args)
    _check_file_names(pairs)
    names = [image.stem for image, _ in pairs]
    inputs = {"checkpoint": args.checkpoint}
    for name, (image, labels) in zip(names, pairs, strict=True):
        inputs[f"image {name}"], inputs[f"labels of {name}"] = image, labels
    outputs = [args.output, sidecar_path(args.output)]
    folder = PartsFolder(parts_dir(args.output))
    # an output that this run's own merge wrote (then was killed) is this run's to replace
    ours = all(folder.wrote(p) for p in outputs if os.path.lexists(p))
    check_outputs(outputs, inputs=inputs, overwrite=args.overwrite or ours)
    checked = collection_layouts(
        pairs, axes=args.axes, spacing=args.spacing, channel_axis=args.channel_axis
    )
    layouts = checked.layouts
    crop_size = _check_crop_size(args.crop_size, pairs, checked.shapes, layouts, args.backbone)
    channels = checked.channels
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
    backbone = choose_backbone(
        args.backbone,
        layouts[0],
        checkpoint=args.checkpoint,
        device=args.device,
        weights=args.weights,
    )
    weights, start_line = choose_weights(
        args.weights, backbone=backbone, seed=args.seed, checkpoint=args.checkpoint
    )

    from ..engine.embed import encoder_for

    encoder = encoder_for(
        args.checkpoint if args.checkpoint is not None else weights,
        in_channels=channels[0],
        backbone=backbone,
        seed=args.seed,
    )
    check_encoder_dims(encoder, layouts[0], checkpoint=args.checkpoint)
    record = encoder.record()
    settings = {
        "encoder": record,
        "crop_size": crop_size,
        "normalize": normalize,
        "channel_axis": args.channel_axis,
        "axes": args.axes,
        "spacing": None if args.spacing is None else [float(v) for v in args.spacing],
        "package_version": __version__,
    }
    records = [
        {**input_record(n, i, lab), "layout": layout.describe()}
        for n, (i, lab), layout in zip(names, pairs, layouts, strict=True)
    ]
    manifest = {"package": "napari-segrep", "settings": settings, "inputs": records}
    kept = 0
    if check_folder:
        try:
            kept = folder.check(manifest, overwrite=args.overwrite)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    kwargs = {
        "crop_size": crop_size,
        "batch_size": args.batch_size,
        "channel_axis": args.channel_axis,
        "normalize": normalize,
    }
    skipped = [str(p) for p in getattr(pairs, "skipped", ())]
    return _Plan(
        pairs,
        names,
        encoder,
        kwargs,
        manifest,
        folder,
        record["sha256"],
        layouts,
        skipped,
        kept,
        start_line,
        checked.notes,
    )


def _check_options(args: argparse.Namespace) -> None:
    """The numeric options, before anything is read or written."""
    from inspect import signature

    from ..engine.collection import iter_embed_images

    if args.workers < 0:
        raise CLIError(f"--workers {args.workers}: give 0 (read images in this process) or more")
    if args.workers and "num_workers" not in signature(iter_embed_images).parameters:
        raise CLIError("--workers: this version embeds images one at a time; leave it out")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size {args.batch_size}: give 1 or more")


def _check_crop_size(crop_size: int | None, pairs, shapes, layouts, backbone=None) -> int:
    """``--crop-size`` (None: the engine's default for the objects' dimensions) by the
    engine's rule for every image (the smallest is the strictest), before any work."""
    from ..engine.inputs import check_crop_size
    from ..engine.pipeline import default_crop_size

    if crop_size is None:
        crop_size = default_crop_size(layouts[0], backbone)
    sides = [
        (max(lab[1:] if layout.has_time else lab), image)
        for (image, _), (_, lab), layout in zip(pairs, shapes, layouts, strict=True)
    ]
    side, image = min(sides, key=lambda item: item[0])
    try:
        return check_crop_size(crop_size, (side,))
    except ValueError as exc:
        raise CLIError(f"--crop-size {crop_size} (for {image.name}): {exc}") from None


def _check_file_names(pairs) -> None:
    """A file name that is not valid UTF-8 cannot go into the table's ``image`` column (nor
    into its Parquet or CSV file): refused up front, naming the file."""
    bad = []
    for image, labels in pairs:
        for path in (image, labels):
            try:
                path.name.encode("utf-8")
            except UnicodeEncodeError:
                bad.append(os.fsencode(path).decode("utf-8", "backslashreplace"))
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise CLIError(
            f"file names that are not valid UTF-8: {', '.join(bad[:3])}{more}: the image names "
            "go into the table, which holds UTF-8 text; rename these files"
        )


def _execute(args, plan: _Plan, rank: int, world: int, dist) -> int:
    from ..analysis.export import sidecar_path

    folder, n = plan.folder, len(plan.pairs)
    outputs = [args.output, sidecar_path(args.output)]
    answer: dict = {"problem": None, "good": [], "finished": False}
    if rank == 0:
        try:
            start = folder.start(
                plan.manifest, overwrite=args.overwrite, encoder_sha256=plan.encoder_sha256
            )
            for output in outputs:  # what a killed run left beside OUT
                _remove_leftover_temporaries(output)
            answer["good"] = sorted(start.good)
            answer["finished"] = all(folder.wrote(p) for p in outputs)
        except (ValueError, OSError) as exc:
            answer["problem"] = str(exc)
    answer = share(dist, answer)[0]  # rank 0's answer, to every rank
    if answer["problem"] is not None:
        raise CLIError(answer["problem"]) if rank == 0 else _Quiet(answer["problem"])
    if answer["finished"]:  # killed after both renames: only the parts folder was left
        return _finish(args, plan) if rank == 0 else 0
    good = set(answer["good"])
    plan.kept = len(good)
    if rank == 0:
        if start.bad:
            shown = "; ".join(start.bad[:5]) + (
                f"; and {len(start.bad) - 5} more" if len(start.bad) > 5 else ""
            )
            warnings.warn(
                f"{len(start.bad)} part{'s' * (len(start.bad) > 1)} in {folder.path} "
                f"do{'es' * (len(start.bad) == 1)} not check out and "
                f"{'are' if len(start.bad) > 1 else 'is'} embedded again: {shown}",
                UserWarning,
                stacklevel=1,
            )
        for note in plan.notes:
            print(note, file=sys.stderr)
        if not args.quiet:
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
        _embed_share(args, plan, mine, good, rank=rank, world=world)
    except (ValueError, OSError) as exc:  # the engine names the image
        failure = str(exc)
    except KeyboardInterrupt:
        raise Interrupted(_kept(plan)) from None
    failures = [f for f in share(dist, failure) if f is not None]
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


def _remove_leftover_temporaries(output) -> None:
    """Delete the temporaries and backups that a killed write of ``output`` left beside it
    (``io.atomic_write_files``' names for it, nothing else)."""
    from ..io import leftover_temporaries

    for path in leftover_temporaries(output):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _embed_share(args, plan: _Plan, mine: list[int], good: set, *, rank: int, world: int) -> None:
    """Embed this rank's images whose part does not check out, writing each part as it comes."""
    from tqdm import tqdm

    from ..engine.collection import iter_embed_images

    folder = plan.folder
    todo = [i for i in mine if i not in good]
    show = rank == 0 and not args.quiet
    prefix = f"rank 0 of {world}: " if world > 1 else ""
    kwargs = dict(plan.kwargs, device=_device(args.device))
    if args.workers:
        kwargs["num_workers"] = args.workers
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
            axes=[plan.layouts[i] for i in todo],  # as checked (spacing and its source too)
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
    """Rank 0, every part done: merge the checked parts in input order, record the hashes of
    OUT and its sidecar in the manifest, write both together, remove the parts."""
    from ..analysis.export import check_sidecar_free, provenance, sidecar_path, table_files
    from ..analysis.parts import input_record
    from ..engine.collection import merge_parts
    from ..io import atomic_write_files

    folder, n = plan.folder, len(plan.pairs)
    df = merge_parts(folder.read_all(plan.names, encoder_sha256=plan.encoder_sha256))
    records = plan.manifest["inputs"]
    if args.hash:
        records = [
            {**input_record(name, image, labels, sha256=True), "layout": record["layout"]}
            for name, (image, labels), record in zip(plan.names, plan.pairs, records, strict=True)
        ]
    sidecar = provenance(
        command="embed",
        encoder_config=plan.encoder.record(),
        n_segments=len(df),
        normalization=df.attrs.get("normalization"),
        crop_size=plan.kwargs["crop_size"],
        batch_size=args.batch_size,
        channel_axis=args.channel_axis,
        device=_device(args.device),
        inputs={"images": args.images, "labels": args.labels, "data": args.data},
        checkpoint=args.checkpoint,
        seconds=seconds,
        layout=_layout_record(plan),
        images=records,
        n_images=n,
        world_size=world,
        resumed_images=plan.kept,
        normalize=plan.kwargs["normalize"],
        measure=False,
        skipped_unmatched=plan.skipped,
    )
    files = table_files(df, args.output, provenance=sidecar)
    if not folder.wrote(sidecar_path(args.output)):
        try:  # someone else's JSON that appeared during the run: never replaced
            check_sidecar_free(args.output)
        except ValueError as exc:
            raise CLIError(f"{exc}; the parts are kept in {folder.path}") from None
    for path in files:  # appeared during the run?  only this run's own, or --overwrite
        if os.path.lexists(path) and not args.overwrite and not folder.wrote(path):
            raise CLIError(
                f"{path} appeared while the images were embedded: pass --overwrite to replace "
                f"it, or move it away; the parts are kept in {folder.path}: run the same "
                "command again to write the table"
            )
    folder.record_merge(files)
    atomic_write_files({path: _writer(data) for path, data in files.items()})
    print(
        f"{len(df)} segments of {n} images embedded in {seconds:.1f} s -> {args.output} "
        f"(+ {sidecar_path(args.output).name})",
        file=sys.stderr,
    )
    _remove_parts(plan)
    return 0


def _layout_record(plan: _Plan) -> dict:
    """The sidecar's ``layout``: the one of every image, or one per image name when they
    differ (a file's own metadata)."""
    described = [layout.describe() for layout in plan.layouts]
    if all(d == described[0] for d in described):
        return described[0]
    return dict(zip(plan.names, described, strict=True))


def _writer(data: bytes):
    return lambda fh: fh.write(data)


def _finish(args, plan: _Plan) -> int:
    """Rank 0: OUT and its sidecar are the ones this run's merge wrote (a kill came after both
    renames): only the parts folder is left to remove."""
    from ..analysis.export import sidecar_path

    print(
        f"napari-segrep: {args.output} and {sidecar_path(args.output).name} were already "
        f"written by this command; removing {plan.folder.path}",
        file=sys.stderr,
    )
    _remove_parts(plan)
    return 0


def _remove_parts(plan: _Plan) -> None:
    """Remove the parts folder: what the run wrote there; a file it did not write is kept
    (and with it the folder), said once."""
    left = plan.folder.finish()
    if left:
        shown = ", ".join(left[:3]) + (f" and {len(left) - 3} more" if len(left) > 3 else "")
        warnings.warn(
            f"{plan.folder.path} was kept: it holds files napari-segrep did not write "
            f"({shown}); the run's own files there are removed: move yours elsewhere and "
            "delete the folder before embedding to this output again",
            UserWarning,
            stacklevel=1,
        )


def _kept(plan: _Plan) -> str:
    """After an interrupt or a stopped process: what is kept, and how to continue."""
    return (
        f"{len(plan.folder.done())} of {len(plan.pairs)} images are embedded in "
        f"{plan.folder.path}: run the same command again to continue"
    )
