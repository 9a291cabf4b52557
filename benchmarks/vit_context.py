"""Does a masked ViT ignore the context?  A background confound, shuffled at test.

Generated images of segments in cells of 40 px: two classes that differ only inside the segment
(class 0: smooth interior; class 1: stripes of 4-6 px period at a random angle; the same mean
brightness), ellipses of 6-12 px semi-axis.  Every cell has its own background: in the training
images it is bright and textured for class 0 and dark for class 1 (the confound: the class can
be read from the background alone); in the test images it is drawn at random.  A logistic
classifier fitted on the training embeddings and scored on the test embeddings tells how much
of what it learnt is the segment, and how much the background.

Compared, untrained (random weights), at crop 64:

- masked (image + feature masking, the default) vs unmasked (both off) for ``vit_tiny_patch16_224``
  and ``resnet18`` (reference); goal masked >= unmasked + 0.2;
- the ViT's pooling choices: ``mean`` (attention mask + fraction-weighted mean of the in-segment
  tokens), ``cls`` (attention mask, masked CLS token: the default, chosen by this benchmark),
  ``plain`` (timm's unmasked
  forward pass on the unmasked image, then the mask-average of its patch tokens, as micro-sam
  pools SAM's features);
- untrained figures are means over 3 generated data sets (``--quick``: 1);
- the same three poolings after a short SSL run (``sr.train_ssl`` on the training images, the
  default recipe, ``--ssl-steps`` optimiser steps).

Run: ``OMP_NUM_THREADS=1 python benchmarks/vit_context.py`` (about 10 min on one thread) or
``--quick``.  Figures go to ``benchmarks/out/vit_context.json``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _common import command_line, environment, verdict, write_json

CELL = 40
CROP = 64
GOAL = 0.2


def make_scene(rng, grid: int, *, confounded: bool):
    """One image of ``grid x grid`` cells and its labels and classes.

    Returns
    -------
    image : (grid * CELL, grid * CELL) float32
    labels : same shape, int32 (ids 1..grid**2, row-major)
    classes : (grid**2,) int, the class of each label
    """
    size = grid * CELL
    image = np.zeros((size, size), np.float32)
    labels = np.zeros((size, size), np.int32)
    classes = rng.integers(0, 2, grid * grid)
    yy, xx = np.mgrid[0:CELL, 0:CELL].astype(np.float32)
    for i, cls in enumerate(classes):
        r, c = divmod(i, grid)
        bright = (cls == 0) if confounded else bool(rng.integers(0, 2))
        if bright:  # bright, coarse texture
            bg = 0.45 + 0.15 * np.sin(xx / 3.0 + rng.uniform(0, 6)) * np.sin(yy / 3.0)
        else:
            bg = np.full((CELL, CELL), 0.05, np.float32)
        bg = bg + rng.normal(0, 0.03, (CELL, CELL))
        a = rng.uniform(6, 12)
        b = a * rng.uniform(0.6, 1.0)
        theta = rng.uniform(0, np.pi)
        cy, cx = rng.uniform(CELL / 2 - 4, CELL / 2 + 4, 2)
        u = ((yy - cy) * np.cos(theta) + (xx - cx) * np.sin(theta)) / a
        v = (-(yy - cy) * np.sin(theta) + (xx - cx) * np.cos(theta)) / b
        inside = u * u + v * v <= 1.0
        level = rng.uniform(0.6, 0.9)
        if cls == 0:
            fg = np.full((CELL, CELL), level, np.float32)
        else:
            period, angle = rng.uniform(4, 6), rng.uniform(0, np.pi)
            phase = (yy * np.cos(angle) + xx * np.sin(angle)) * 2 * np.pi / period
            fg = level + 0.25 * np.sign(np.sin(phase + rng.uniform(0, 6)))
        fg = fg + rng.normal(0, 0.03, (CELL, CELL))
        window = (slice(r * CELL, (r + 1) * CELL), slice(c * CELL, (c + 1) * CELL))
        image[window] = np.where(inside, fg, bg)
        labels[window] = np.where(inside, i + 1, 0)
    return image, labels, classes


def make_split(seed: int, n_images: int, grid: int, *, confounded: bool):
    rng = np.random.default_rng(seed)
    scenes = [make_scene(rng, grid, confounded=confounded) for _ in range(n_images)]
    return [s[0] for s in scenes], [s[1] for s in scenes], np.concatenate([s[2] for s in scenes])


def embed_all(encoder, images, labels) -> np.ndarray:
    import napari_segrep as sr

    rows = []
    for image, lab in zip(images, labels, strict=True):
        df = sr.embed_segments(image, lab, encoder, crop_size=CROP, device="cpu")
        assert (df["label"].to_numpy() == np.arange(1, lab.max() + 1)).all()
        rows.append(df.filter(regex=r"^emb_").to_numpy())
    return np.concatenate(rows)


def probe(train_x, train_y, test_x, test_y) -> dict:
    """A logistic classifier on standardised embeddings: training and test accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, C=0.1))
    clf.fit(train_x, train_y)
    return {
        "train_accuracy": float(clf.score(train_x, train_y)),
        "test_accuracy": float(clf.score(test_x, test_y)),
    }


def vit_encoder(pooling: str, *, masked: bool = True):
    """vit_tiny with ``pooling``; ``plain`` sees the unmasked image (image masking off)."""
    import napari_segrep as sr

    if not masked:
        return sr.SegmentEncoder(
            "vit_tiny_patch16_224", in_channels=1, image_masking=False, feature_masking=False
        ).eval()
    enc = sr.SegmentEncoder(
        "vit_tiny_patch16_224", in_channels=1, image_masking=pooling != "plain"
    ).eval()
    enc.backbone.pooling = pooling
    return enc


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer images, 20 steps")
    parser.add_argument("--ssl-steps", type=int, default=None, help="optimiser steps of SSL")
    args = parser.parse_args(argv)
    import napari_segrep as sr

    n_images, grid, steps, seeds = (2, 5, 20, 1) if args.quick else (6, 6, 150, 3)
    steps = args.ssl_steps or steps
    t_start = time.perf_counter()

    def score(encoder, train, test) -> dict:
        with torch.inference_mode():
            a = embed_all(encoder, train[0], train[1])
            b = embed_all(encoder, test[0], test[1])
        return probe(a, train[2], b, test[2])

    untrained = {
        "resnet18_masked": lambda: sr.SegmentEncoder("resnet18", in_channels=1).eval(),
        "resnet18_unmasked": lambda: sr.SegmentEncoder(
            "resnet18", in_channels=1, image_masking=False, feature_masking=False
        ).eval(),
        "vit_tiny_unmasked": lambda: vit_encoder("mean", masked=False),
        "vit_tiny_mean": lambda: vit_encoder("mean"),
        "vit_tiny_cls": lambda: vit_encoder("cls"),
        "vit_tiny_plain": lambda: vit_encoder("plain"),
    }
    # Untrained: several data sets (train/test scene seeds), the mean accuracy and each one's.
    per_seed: dict[str, list[dict]] = {name: [] for name in untrained}
    for k in range(seeds):
        train_k = make_split(2 * k, n_images, grid, confounded=True)
        test_k = make_split(2 * k + 1, n_images, grid, confounded=False)
        for name, build in untrained.items():
            per_seed[name].append(score(build(), train_k, test_k))
    results: dict[str, dict] = {}
    for name, runs in per_seed.items():
        results[name] = {key: float(np.mean([r[key] for r in runs])) for key in runs[0]} | {
            "test_accuracy_per_seed": [r["test_accuracy"] for r in runs]
        }
    train = make_split(0, n_images, grid, confounded=True)
    test = make_split(1, n_images, grid, confounded=False)
    untrained_s = time.perf_counter() - t_start

    batch = 32
    segments = n_images * grid * grid
    ssl = {}
    for pooling in ("mean", "cls", "plain"):
        t0 = time.perf_counter()
        encoder = vit_encoder(pooling)
        per_epoch = max(1, (segments - max(1, segments // 10)) // batch)
        result = sr.train_ssl(
            train[0],
            train[1],
            encoder=encoder,
            epochs=max(1, -(-steps // per_epoch)),
            batch_size=batch,
            crop_size=CROP,
            image_masking=pooling != "plain",
            device="cpu",
            seed=0,
        )
        trained = result.encoder.eval()
        assert trained.backbone.pooling == pooling
        ssl[pooling] = {
            **score(trained, train, test),
            "steps": len(result.history),
            "final_loss": float(result.history[-1]["loss"]),
            "train_s": time.perf_counter() - t0,
        }
    for pooling, r in ssl.items():
        results[f"vit_tiny_{pooling}_after_ssl"] = r

    def test(name):
        return results[name]["test_accuracy"]

    gaps = {
        "vit_tiny_masked_minus_unmasked": test("vit_tiny_mean") - test("vit_tiny_unmasked"),
        "resnet18_masked_minus_unmasked": test("resnet18_masked") - test("resnet18_unmasked"),
        "vit_tiny_mean_minus_plain": test("vit_tiny_mean") - test("vit_tiny_plain"),
        "vit_tiny_mean_minus_cls": test("vit_tiny_mean") - test("vit_tiny_cls"),
        "vit_tiny_mean_minus_plain_after_ssl": test("vit_tiny_mean_after_ssl")
        - test("vit_tiny_plain_after_ssl"),
        "vit_tiny_mean_minus_cls_after_ssl": test("vit_tiny_mean_after_ssl")
        - test("vit_tiny_cls_after_ssl"),
    }
    out = {
        "benchmark": "vit_context",
        "command": command_line(),
        "quick": args.quick,
        "environment": environment(),
        "setup": {
            "train": f"{n_images} images x {grid * grid} segments, background = class",
            "test": f"{n_images} images x {grid * grid} segments, background random",
            "classes": "0: smooth interior, 1: stripes (same mean level)",
            "crop_size": CROP,
            "classifier": "StandardScaler + LogisticRegression(C=0.1)",
            "ssl": f"sr.train_ssl defaults, batch {batch}, ~{steps} steps, on the train images "
            "of data seed 0 (untrained figures: mean over the data seeds)",
            "data_seeds_untrained": seeds,
            "untrained_s": untrained_s,
        },
        "results": results,
        "gaps": gaps,
        "goal": {"masked_minus_unmasked_min": GOAL},
        "total_wall_s": time.perf_counter() - t_start,
    }
    path = write_json("vit_context", out)
    _print_report(out, path)
    return out


def _print_report(out, path) -> None:
    s, r, g, env = out["setup"], out["results"], out["gaps"], out["environment"]
    print(f"vit_context  ({out['command']})")
    print(
        f"  torch {env['torch']}, {env['torch_threads']} threads, load avg "
        f"{env['loadavg_1min']:.2f}; train: {s['train']}; test: {s['test']}; crop {s['crop_size']}"
    )
    print(f"  {'encoder':<32}{'train acc':>10}{'test acc':>10}")
    for name, v in r.items():
        extra = f"   ({v['steps']} SSL steps, {v['train_s']:.0f} s)" if "steps" in v else ""
        print(f"  {name:<32}{v['train_accuracy']:>10.3f}{v['test_accuracy']:>10.3f}{extra}")
    print("  test-accuracy gaps:")
    for name, v in g.items():
        mark = f"  goal >= {GOAL}: {verdict(v, GOAL)}" if "masked_minus" in name else ""
        print(f"    {name:<40}{v:+.3f}{mark}")
    if out["quick"]:
        print("  QUICK smoke run: few segments, few steps: figures are noisy")
    print(f"  total {out['total_wall_s']:.0f} s; figures: {path}")


if __name__ == "__main__":
    main()
