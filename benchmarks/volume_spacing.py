"""Volumes: how much does giving the true voxel spacing matter?  The same objects imaged
isotropic and z-subsampled 4x, retrieved across the two renderings.

The objects of ``volume_encoders.py`` (``_common.make_ellipsoid_cells``: spheres, rods, discs of
equivalent radius 4-6.5 voxels, randomly rotated, one per 32^3 cell, random textures; and the
same without texture, a uniform brightness, so only shape, size and orientation tell them
apart) are rendered on an isotropic grid of spacing 0.5 (the "isotropic" volume, spacing
``(0.5, 0.5, 0.5)``), then imaged with a 4x coarser z-step: every 4th plane of it (the
"z-subsampled" volume, spacing ``(2, 0.5, 0.5)``: each object on 2-4 planes).  Both are
embedded with ``embed_segments(..., axes="zyx", crop_size=32)``; the subsampled volume once
with its true spacing (each object's window resampled to near-isotropic voxels, z upsampled 4x)
and once without it (``spacing=None``: the raw anisotropic window, the object squashed 4x in
z).  Objects that no plane of the subsampled volume crosses are left out of both (counted).

Retrieval: for each object of one rendering, the objects of the other ranked by cosine
similarity (embeddings standardised over both renderings together); top-1 / top-5: the share
of objects whose twin (the same object) is the nearest / among the 5 nearest, averaged over
both directions (isotropic -> subsampled and back).  Chance: 1/n and 5/n.

Encoders: ``resnet18_planes`` and ``resnet18_3d``, dual-masked, untrained (seeds 0, 1, 2;
ImageNet-initialised too when torchvision's resnet18 file is in the torch cache).

Run: ``python benchmarks/volume_spacing.py`` (about 8 min on 2 busy cores) or ``--quick``.
Figures go to ``benchmarks/out/volume_spacing.json``.

Latest figures (``python benchmarks/volume_spacing.py``, 2 shared CPU cores, 469 s; 150
objects, each on 3 planes on average once subsampled, none lost; untrained, mean of 3 seeds;
chance top-1 0.007, top-5 0.033).  Top-1 / top-5 twin retrieval, isotropic <-> z-subsampled:

    objects     encoder          with the spacing  without (spacing=None)
    textured    resnet18_planes  0.478 / 0.740     0.108 / 0.289
    textured    resnet18_3d      0.472 / 0.758     0.024 / 0.107
    shape only  resnet18_planes  0.433 / 0.700     0.126 / 0.288
    shape only  resnet18_3d      0.474 / 0.743     0.033 / 0.118

Giving the true spacing multiplies top-1 retrieval by 4 (planes) to 15-20 (3D); without it,
the native 3D encoder barely finds an object's twin (median rank 36 of 150).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import command_line, environment, make_ellipsoid_cells, unit_rows, write_json

CROP = 32
BATCH = 32
ISOTROPIC = (0.5, 0.5, 0.5)
STEP = 4  # z-subsampling factor
SUBSAMPLED = (0.5 * STEP, 0.5, 0.5)
PHASE = 1  # the first plane kept
ENCODERS = ("resnet18_planes", "resnet18_3d")
TOPS = (1, 5)


def twin_retrieval(a: np.ndarray, b: np.ndarray) -> dict:
    """Row i of ``a`` and row i of ``b`` are the same object: the share of rows whose twin is
    among the k nearest rows of the other set (cosine, standardised over both), k in
    :data:`TOPS`, averaged over both directions; and the median rank of the twin (0: nearest)."""
    both = np.concatenate([a, b])
    sim = unit_rows(a, both) @ unit_rows(b, both).T
    twin = np.diag(sim)
    rank_ab = (sim > twin[:, None]).sum(axis=1)  # b rows nearer to a[i] than its twin
    rank_ba = (sim.T > twin[:, None]).sum(axis=1)
    ranks = np.concatenate([rank_ab, rank_ba])
    out = {f"top{k}": float((ranks < k).mean()) for k in TOPS}
    out["median_rank"] = float(np.median(ranks))
    return out


def embed(encoder, image, labels, spacing, keep) -> np.ndarray:
    import napari_segrep as sr

    df = sr.embed_segments(
        image,
        labels,
        encoder,
        axes="zyx",
        spacing=spacing,
        crop_size=CROP,
        batch_size=BATCH,
        device="cpu",
    )
    df = df.set_index("label").loc[keep]
    emb = df.filter(like="emb_").to_numpy()
    assert np.isfinite(emb).all()
    return emb


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 6 objects per shape")
    parser.add_argument("--per-class", type=int, default=None, help="objects per shape (50)")
    parser.add_argument("--seeds", type=int, default=None, help="encoder seeds (3)")
    parser.add_argument("--encoders", default=",".join(ENCODERS), help="backbones")
    args = parser.parse_args(argv)

    import napari_segrep as sr
    from napari_segrep.engine.backbones import imagenet_cache_path

    per_class = args.per_class or (6 if args.quick else 50)
    seeds = args.seeds or (1 if args.quick else 3)
    names = args.encoders.split(",")
    weight_sets = [None]
    if imagenet_cache_path("resnet18").is_file():
        weight_sets.append("imagenet")

    t_start = time.perf_counter()
    sets = {}
    for textured in (True, False):
        image, labels, _, _ = make_ellipsoid_cells(per_class, seed=7, textured=textured)
        sub_image, sub_labels = image[PHASE::STEP], labels[PHASE::STEP]
        all_ids = np.arange(1, int(labels.max()) + 1)
        keep = np.intersect1d(all_ids, np.unique(sub_labels))
        sets["textured" if textured else "shape only"] = {
            "isotropic": (image, labels),
            "subsampled": (sub_image, sub_labels),
            "keep": keep,
            "dropped": int(len(all_ids) - len(keep)),
            "sub_planes_per_object": float(
                np.mean([len(np.unique(np.nonzero(sub_labels == i)[0])) for i in keep[:50]])
            ),
        }

    results: dict[str, dict] = {}
    for set_name, d in sets.items():
        keep = d["keep"]
        for name in names:
            for weights in weight_sets:
                rows: dict[str, list] = {"with spacing": [], "without spacing": []}
                for seed in range(seeds if weights is None else 1):
                    enc = sr.SegmentEncoder(name, in_channels=1, seed=seed, weights=weights)
                    iso = embed(enc, *d["isotropic"], ISOTROPIC, keep)
                    given = embed(enc, *d["subsampled"], SUBSAMPLED, keep)
                    none = embed(enc, *d["subsampled"], None, keep)
                    rows["with spacing"].append(twin_retrieval(iso, given))
                    rows["without spacing"].append(twin_retrieval(iso, none))
                for how, per_seed in rows.items():
                    key = f"{set_name}, {name}, {weights or 'untrained'}, {how}"
                    results[key] = {
                        "per_seed": per_seed,
                        **{
                            m: float(np.mean([r[m] for r in per_seed]))
                            for m in (*(f"top{k}" for k in TOPS), "median_rank")
                        },
                    }
                    print(f"  {key}: top1 {results[key]['top1']:.3f}", flush=True)

    out = {
        "benchmark": "volume_spacing",
        "command": command_line(),
        "quick": args.quick,
        "environment": environment(),
        "setup": {
            "objects": {k: int(len(d["keep"])) for k, d in sets.items()},
            "dropped_no_plane": {k: d["dropped"] for k, d in sets.items()},
            "subsampled_planes_per_object_mean": {
                k: d["sub_planes_per_object"] for k, d in sets.items()
            },
            "isotropic_shape": list(sets["textured"]["isotropic"][0].shape),
            "subsampled_shape": list(sets["textured"]["subsampled"][0].shape),
            "spacing_isotropic": ISOTROPIC,
            "spacing_subsampled": SUBSAMPLED,
            "crop_size": CROP,
            "encoder_seeds": seeds,
            "weights": [w or "untrained" for w in weight_sets],
            "total_s": time.perf_counter() - t_start,
            "retrieval": "twin among the k nearest of the other rendering (cosine, standardised "
            "over both), both directions, mean over encoder seeds",
        },
        "results": results,
    }
    path = write_json("volume_spacing", out)
    _print_report(out, path)
    return out


def _print_report(out, path) -> None:
    s, env = out["setup"], out["environment"]
    print(f"volume_spacing  ({out['command']})")
    print(
        f"  torch {env['torch']}, {env['torch_threads']} threads, {env['cpu_count']} CPUs, "
        f"load avg {env['loadavg_1min']:.2f}; {s['total_s']:.0f} s in all"
    )
    print(
        f"  isotropic {s['isotropic_shape']} at {s['spacing_isotropic']} vs every {STEP}th plane "
        f"{s['subsampled_shape']} at {s['spacing_subsampled']}; objects {s['objects']} "
        f"(dropped, on no plane: {s['dropped_no_plane']}; planes per object when subsampled: "
        + ", ".join(f"{k} {v:.1f}" for k, v in s["subsampled_planes_per_object_mean"].items())
        + ")"
    )
    n = min(s["objects"].values())
    print(f"  retrieval: {s['retrieval']}; chance top-1 {1 / n:.3f}, top-5 {5 / n:.3f}")
    print(f"  {'objects, encoder, weights, subsampled embedded':<62}{'top-1':>8}{'top-5':>8}"
          f"{'median rank':>13}")  # fmt: skip
    for key, r in out["results"].items():
        print(f"  {key:<62}{r['top1']:>8.3f}{r['top5']:>8.3f}{r['median_rank']:>13.1f}")
    print(f"  figures: {path}")


if __name__ == "__main__":
    main()
