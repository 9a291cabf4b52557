"""Does self-supervised training do something useful?  And what does masking cost in training?

Data with known classes, generated here: cells whose class is their *texture* (smooth, spotty,
striped, ringed) while size, elongation, orientation and brightness vary at random within every
class (nuisances the augmentations teach invariance to), packed so that many cells touch.
SSL trains on one image; k-NN accuracy (k=5, leave-one-out, cosine) of the embeddings of the
cells of a second image is measured before and after, for masked SegRep training and for the
same loop with both maskings off.  Throughput (crops/s) of the two loops comes from the same run.

    python benchmarks/ssl_knn.py            # ~5 min on 2 CPU cores
    python benchmarks/ssl_knn.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from _common import OUT_DIR, knn_accuracy
from scipy import ndimage

import napari_segrep as sr
from napari_segrep.engine.training import train_ssl

CLASSES = ("smooth", "spotty", "striped", "ringed")


def make_texture_cells(shape=(640, 640), n_cells=320, *, seed=0):
    rng = np.random.default_rng(seed)
    h, w = shape
    labels = np.zeros(shape, np.int32)
    image = np.zeros(shape, np.float64)
    yy, xx = np.mgrid[0:h, 0:w]
    classes = {}
    k = 0
    for _ in range(n_cells * 40):
        if k == n_cells:
            break
        kind = CLASSES[k % len(CLASSES)]
        cy, cx = rng.uniform(12, h - 12), rng.uniform(12, w - 12)
        a = rng.uniform(7, 12)
        b = a * rng.uniform(0.6, 1.0)
        angle = rng.uniform(0, np.pi)
        r = int(a) + 2
        sl = (
            slice(int(max(cy - r, 0)), int(min(cy + r + 1, h))),
            slice(int(max(cx - r, 0)), int(min(cx + r + 1, w))),
        )
        dy, dx = yy[sl] - cy, xx[sl] - cx
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        inside = rho <= 1
        if (labels[sl][inside] != 0).any():
            continue
        if kind == "smooth":
            tex = np.ones_like(rho)
        elif kind == "spotty":
            tex = 0.4 + 1.2 * (rng.random(rho.shape) < 0.15)
        elif kind == "striped":
            tex = 0.6 + 0.5 * np.sin(2 * np.pi * u / rng.uniform(3.5, 5))
        else:
            tex = 0.4 + 0.8 * (rho > 0.65)
        k += 1
        labels[sl][inside] = k
        image[sl][inside] += rng.uniform(0.3, 1.0) * tex[inside]
        classes[k] = kind
    image = ndimage.gaussian_filter(image, 0.7) + 0.05 + rng.normal(0, 0.03, shape)
    return np.clip(image * 30000, 0, 65535).astype(np.uint16), labels, classes


def evaluate(encoder, image, labels, classes, crop):
    df = sr.embed_segments(image, labels, encoder, crop_size=crop, device="cpu")
    truth = np.array([CLASSES.index(classes[int(lab)]) for lab in df["label"]])
    return knn_accuracy(df.filter(like="emb_").to_numpy(), truth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    n = 96 if args.quick else 320
    size = (352, 352) if args.quick else (640, 640)
    epochs = args.epochs or (2 if args.quick else None)  # None: train_ssl's default
    crop, batch = 48, 64
    train = make_texture_cells(size, n, seed=0)
    test = make_texture_cells(size, n, seed=1)
    print(f"ssl_knn  (python benchmarks/ssl_knn.py{' --quick' if args.quick else ''})")
    print(
        f"  {len(train[2])} training cells, {len(test[2])} test cells, 4 texture classes; "
        f"crop {crop}, batch {batch}, {epochs or 'default'} epochs, defaults otherwise "
        "(NT-Xent + AdamW)"
    )
    untrained = sr.SegmentEncoder(seed=0)
    before = evaluate(untrained, *test, crop)
    print(
        f"  k-NN accuracy (k=5) on the test image, untrained encoder: {before:.3f} "
        f"(chance {1 / len(CLASSES):.2f})"
    )
    results = {"before": before, "runs": {}}
    for masked in (True, False):
        name = "masked" if masked else "no_mask"
        t0 = time.perf_counter()
        res = train_ssl(
            train[0],
            train[1],
            epochs=epochs,
            batch_size=batch,
            crop_size=crop,
            image_masking=masked,
            feature_masking=masked,
            device="cpu",
            seed=0,
        )
        seconds = time.perf_counter() - t0
        after = evaluate(res.encoder, *test, crop)
        results["epochs"] = res.history[-1]["epoch"]
        per_epoch = [
            float(np.mean([h["loss"] for h in res.history if h["epoch"] == e]))
            for e in range(1, results["epochs"] + 1)
        ]
        speed = float(np.median([h["crops_per_s"] for h in res.history[1:]] or [np.nan]))
        results["runs"][name] = {
            "after": after,
            "seconds": seconds,
            "crops_per_s": speed,
            "loss_per_epoch": per_epoch,
        }
        curve = " ".join(f"{v:.3f}" for v in per_epoch)
        print(
            f"  {name:8s}: k-NN {before:.3f} -> {after:.3f}; {results['epochs']} epochs, "
            f"{len(res.history)} steps, {seconds:.0f} s, median "
            f"{speed:.0f} crops/s; loss per epoch: {curve}"
        )
    ratio = results["runs"]["masked"]["crops_per_s"] / results["runs"]["no_mask"]["crops_per_s"]
    results["throughput_ratio_masked_over_no_mask"] = ratio
    print(
        f"  training throughput masked / no-mask (same loop, same run): {ratio:.2f}  "
        "target >= 0.8: " + ("MEETS" if ratio >= 0.8 else "MISSES")
    )
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "ssl_knn.json").write_text(json.dumps(results, indent=2))
    print(f"  figures: {OUT_DIR / 'ssl_knn.json'}")


if __name__ == "__main__":
    main()
