"""UMAP of 100,000 segments: time after the JIT warm-up, and which neighbour search keeps the
map's quality.

The embeddings are a **seeded synthetic mixture**, not real ones (embedding 100,000 real
segments takes far longer than this benchmark): 512-d, 30 Gaussian clusters of uneven size in 6 groups
(clusters within a group nearer), in a shared 64-d subspace with a power-law spectrum, each
cluster its own shape, plus isotropic noise in all 512 dimensions and a ReLU (pooled CNN
features are non-negative).  Its true cluster is each row's class.

Variants (all standardised as ``umap_map`` does, ``n_neighbors=15``, ``min_dist=0.1``, seeded,
``n_jobs=1``): the package's ``umap_map`` (NN-descent on the 512-d rows, the baseline), the
same with another seed (the seed-to-seed noise floor), ``low_memory=False``, PCA to 50 dims
then NN-descent, PCA to 50 then exact k-NN (BLAS, blocked; such a map cannot ``transform``
new rows), PCA 50 with 100 layout epochs instead of UMAP's 200.  Each is run once on the
100,000 rows after an untimed warm-up of every variant on 5,000 rows.  The k-NN time is
umap's ``nearest_neighbors`` call (timed by wrapping it) plus PCA where there is one; layout:
the rest of the fit.

Quality, on a random sample of 2,000 rows (exact neighbours in the standardised 512-d space by
brute force): ``recall@15`` of the k-NN graph UMAP used; ``pres@10``: fraction of a row's 10
exact 512-d neighbours among its 10 neighbours in the 2-D map; ``agree``:
``reduce.neighbour_agreement`` (k=10, all rows) of the 2-D map with the baseline's map;
``class@10``: fraction of a row's 10 nearest map neighbours of its own class (all rows).

    nice -n 10 python benchmarks/umap_scale.py             # ~25 min on 2 busy cores
    nice -n 10 python benchmarks/umap_scale.py --n 20000   # ~3 min
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import write_json

K_GRAPH = 15


# ----------------------------------------------------------------------------- data
def synthetic_embeddings(n: int, dim: int = 512, *, seed: int = 0):
    """``(n, dim)`` float32 mixture embeddings and ``(n,)`` true cluster ids (see module doc).

    Tuned to look like real ones where it matters here: on 3,136 segments embedded by
    ``embed_segments`` (untrained resnet18), exact 15-NN after PCA to 50 dims recover 0.89 of
    the 512-d exact neighbours; on this mixture 0.87; nearest neighbours share a class 95%."""
    rng = np.random.default_rng(seed)
    n_groups, per_group, latent = 6, 5, 64
    k = n_groups * per_group
    sizes = rng.dirichlet(np.full(k, 2.0)) * n
    sizes = np.maximum(np.floor(sizes).astype(int), 1)
    sizes[np.argmax(sizes)] += n - sizes.sum()
    basis = np.linalg.qr(rng.normal(size=(dim, latent)))[0].T  # (latent, dim), orthonormal
    spectrum = np.arange(1, latent + 1) ** -0.7  # a power-law spectrum, as CNN features have
    groups = rng.normal(0, 1.0, (n_groups, latent))
    centres = np.repeat(groups, per_group, axis=0) + rng.normal(0, 0.6, (k, latent))
    centres *= 1.5 * spectrum
    emb = np.empty((n, dim), np.float32)
    truth = np.repeat(np.arange(k), sizes)
    start = 0
    for c, size in enumerate(sizes):
        scale = spectrum * rng.uniform(0.5, 1.5, latent)  # each cluster its own shape
        z = centres[c] + rng.normal(size=(size, latent)) * scale
        emb[start : start + size] = z @ basis + rng.normal(0, 0.02, (size, dim))
        start += size
    emb += 0.05
    np.maximum(emb, 0, out=emb)  # ~40% zeros, like pooled ReLU features
    order = rng.permutation(n)
    return emb[order], truth[order]


def standardise(emb: np.ndarray) -> np.ndarray:
    emb = np.asarray(emb, np.float64)
    std = emb.std(0)
    return (emb - emb.mean(0)) / np.where(std > 0, std, 1.0)


# ----------------------------------------------------------------------------- neighbours
def exact_knn(x: np.ndarray, k: int, *, queries: np.ndarray | None = None, block: int = 2048):
    """Exact Euclidean k-NN (self included, first) of ``queries`` rows (default: all) by
    blocked BLAS: ``(indices, distances)``, each ``(q, k)``."""
    x = np.ascontiguousarray(x, np.float32)
    rows = np.arange(len(x)) if queries is None else np.asarray(queries)
    sq = np.einsum("ij,ij->i", x, x)
    idx = np.empty((len(rows), k), np.int64)
    dist = np.empty((len(rows), k), np.float32)
    for s in range(0, len(rows), block):
        r = rows[s : s + block]
        d = sq[r, None] - 2.0 * (x[r] @ x.T) + sq[None, :]
        d[np.arange(len(r)), r] = -1.0  # self first, whatever rounding says
        part = np.argpartition(d, k, axis=1)[:, :k]
        pd = np.take_along_axis(d, part, 1)
        o = np.argsort(pd, axis=1)
        idx[s : s + block] = np.take_along_axis(part, o, 1)
        dist[s : s + block] = np.sqrt(np.maximum(np.take_along_axis(pd, o, 1), 0))
    return idx, dist


def recall(graph: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(a[:k]) & set(b)) / k for a, b in zip(graph, exact, strict=True)]))


def map_knn(coords: np.ndarray, k: int, queries=None) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k + 1).fit(coords)
    q = coords if queries is None else coords[queries]
    return nn.kneighbors(q, return_distance=False)[:, 1:]


def class_agreement(coords: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    return float((truth[map_knn(coords, k)] == truth[:, None]).mean())


# ----------------------------------------------------------------------------- variants
class KnnTimer:
    """Wraps umap's ``nearest_neighbors`` to time it and keep the graph it returns."""

    def __init__(self) -> None:
        import umap.umap_ as umap_

        self._module, self._original = umap_, umap_.nearest_neighbors
        self.seconds, self.graph = 0.0, None
        umap_.nearest_neighbors = self

    def __call__(self, *args, **kwargs):
        t = time.perf_counter()
        out = self._original(*args, **kwargs)
        self.seconds += time.perf_counter() - t
        self.graph = out[0]
        return out

    def reset(self) -> None:
        self.seconds, self.graph = 0.0, None


def pca(z: np.ndarray, dims: int, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    return PCA(n_components=dims, random_state=seed).fit_transform(z).astype(np.float32)


def umap_fit(x, *, seed, precomputed=None, **options):
    import umap

    model = umap.UMAP(
        n_components=2,
        n_neighbors=K_GRAPH,
        min_dist=0.1,
        random_state=seed,
        n_jobs=1,
        precomputed_knn=precomputed or (None, None, None),
        **options,
    )
    return model.fit_transform(x)


def run_variant(name: str, emb: np.ndarray, timer: KnnTimer) -> dict:
    """One variant on ``emb``: ``coords``, ``knn_s`` (PCA included), ``total_s``, ``graph``."""
    from napari_segrep.analysis.reduce import umap_map

    timer.reset()
    t0 = time.perf_counter()
    if name.startswith("umap_map"):
        coords = umap_map(emb, seed=1 if name.endswith("seed 1") else 0).coords
        return {"coords": coords, "knn_s": timer.seconds, "graph": timer.graph,
                "total_s": time.perf_counter() - t0}  # fmt: skip
    z = standardise(emb)
    if name == "low_memory=False":
        coords = umap_fit(z, seed=0, low_memory=False)
        return {"coords": coords, "knn_s": timer.seconds, "graph": timer.graph,
                "total_s": time.perf_counter() - t0}  # fmt: skip
    x = pca(z, 50, 0)
    t_pca = time.perf_counter() - t0
    if name.startswith("PCA 50 + exact"):
        idx, dist = exact_knn(x, K_GRAPH)
        t_knn = time.perf_counter() - t0
        coords = umap_fit(x, seed=0, precomputed=(idx, dist))
        return {"coords": coords, "knn_s": t_knn, "graph": idx,
                "total_s": time.perf_counter() - t0}  # fmt: skip
    epochs = 100 if "100 epochs" in name else None
    coords = umap_fit(x, seed=0, n_epochs=epochs)
    return {"coords": coords, "knn_s": t_pca + timer.seconds, "graph": timer.graph,
            "total_s": time.perf_counter() - t0}  # fmt: skip


VARIANTS = [
    "umap_map (package: 512-d NN-descent)",
    "umap_map, seed 1",
    "low_memory=False",
    "PCA 50 + NN-descent",
    "PCA 50 + exact (BLAS)",
    "PCA 50 + NN-descent, 100 epochs",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--sample", type=int, default=2000, help="rows for exact quality")
    parser.add_argument("--variants", default="", help="comma-separated subset (by index)")
    args = parser.parse_args()
    variants = VARIANTS
    if args.variants:
        variants = [VARIANTS[int(i)] for i in args.variants.split(",")]

    from napari_segrep.analysis.reduce import neighbour_agreement, warm_up_umap

    timer = KnnTimer()
    t = time.perf_counter()
    warm_up_umap()
    small, _ = synthetic_embeddings(5000, args.dim, seed=1)
    for name in variants:  # every code path compiled before any timing
        run_variant(name, small, timer)
    warm_s = time.perf_counter() - t

    t = time.perf_counter()
    emb, truth = synthetic_embeddings(args.n, args.dim, seed=0)
    data_s = time.perf_counter() - t
    z = standardise(emb)
    sample = np.random.default_rng(0).choice(args.n, min(args.sample, args.n), replace=False)
    t = time.perf_counter()
    exact15, _ = exact_knn(z, K_GRAPH, queries=sample)
    exact_sample_s = time.perf_counter() - t
    exact10 = exact15[:, 1:11]
    del z
    print(f"umap_scale  (nice -n 10 python benchmarks/umap_scale.py --n {args.n} --dim {args.dim})")
    print(
        f"  data: seeded synthetic mixture, {args.n} x {args.dim} float32, 30 clusters "
        f"({data_s:.1f} s); warm-up (JIT + every variant on 5,000 rows): {warm_s:.1f} s"
    )
    print(
        f"  exact 512-d neighbours of {len(sample)} sampled rows: {exact_sample_s:.1f} s "
        f"(-> exact k-NN of all rows ~{exact_sample_s * args.n / len(sample):.0f} s)"
    )

    rows, reference = {}, None
    for name in variants:
        out = run_variant(name, emb, timer)
        coords = out["coords"]
        if reference is None:
            reference = coords
        row = {
            "knn_s": out["knn_s"],
            "layout_s": out["total_s"] - out["knn_s"],
            "total_s": out["total_s"],
            "recall15": recall(out["graph"][sample], exact15) if out["graph"] is not None
            else float("nan"),
            "pres10": recall(map_knn(coords, 10, sample), exact10),
            "agree": neighbour_agreement(coords, reference, k=10),
            "class10": class_agreement(coords, truth),
        }  # fmt: skip
        rows[name] = row
        print(f"  ... {name}: {row['total_s']:.1f} s", flush=True)

    base = rows[variants[0]]["total_s"]
    print(
        f"\n  {'method':38s} {'kNN s':>7s} {'layout s':>8s} {'total s':>8s} {'ratio':>6s}"
        f" {'recall@15':>9s} {'pres@10':>7s} {'agree':>6s} {'class@10':>8s}"
    )
    for name, r in rows.items():
        r["ratio_vs_default"] = r["total_s"] / base
        print(
            f"  {name:38s} {r['knn_s']:7.1f} {r['layout_s']:8.1f} {r['total_s']:8.1f}"
            f" {r['ratio_vs_default']:6.2f} {r['recall15']:9.3f} {r['pres10']:7.3f}"
            f" {r['agree']:6.3f} {r['class10']:8.3f}"
        )
    print(
        "  ratio: total / the first row's (same run); agree: vs the first row's map "
        "(its seed-1 row is the noise floor)"
    )
    write_json(
        "umap_scale",
        {"n": args.n, "dim": args.dim, "sample": len(sample), "warm_up_s": warm_s,
         "exact_sample_s": exact_sample_s, "variants": rows},
    )  # fmt: skip


if __name__ == "__main__":
    main()
