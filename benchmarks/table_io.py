"""Big embedding tables on disk: Parquet vs CSV (``write_table`` / ``read_table``, chosen by the
output's extension).  A table like ``embed_images`` gives (``image``, ``label``, geometry,
512 float32 embedding columns), written and read back both ways in the same run; CSV is the
baseline.

    python benchmarks/table_io.py               # 100,000 rows
    python benchmarks/table_io.py --rows 20000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def make_table(rows: int, dim: int = 512, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    front = pd.DataFrame(
        {
            "image": [f"field_{i // 1000:03d}" for i in range(rows)],
            "label": np.arange(rows, dtype=np.int64) % 1000 + 1,
            "centroid_y": rng.random(rows) * 1024,
            "centroid_x": rng.random(rows) * 1024,
            "area": rng.integers(50, 400, rows),
        }
    )
    emb = pd.DataFrame(
        rng.standard_normal((rows, dim), dtype=np.float32),
        columns=[f"emb_{i}" for i in range(dim)],
    )
    return pd.concat([front, emb], axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()

    from napari_segrep.analysis.export import read_table, write_table

    table = make_table(args.rows)
    print(f"table_io  (python benchmarks/table_io.py --rows {args.rows})")
    print(f"  {len(table)} rows x {table.shape[1]} columns (512 float32 embedding columns)")
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for kind in ("csv", "parquet"):
            path = Path(folder) / f"table.{kind}"
            t0 = time.perf_counter()
            write_table(table, path, provenance={"package": "napari-segrep"})
            written = time.perf_counter() - t0
            t0 = time.perf_counter()
            back = read_table(path)
            read = time.perf_counter() - t0
            exact = np.array_equal(
                back.filter(like="emb_").to_numpy(np.float32),
                table.filter(like="emb_").to_numpy(np.float32),
            )
            results[kind] = (written, read, path.stat().st_size / 2**20, exact)
    for kind, (written, read, size, exact) in results.items():
        print(
            f"  {kind:8s} write {written:6.2f} s   read {read:6.2f} s   {size:8.1f} MiB   "
            f"embeddings read back exactly: {exact}"
        )
    (cw, cr, cs, _), (pw, pr, ps, _) = results["csv"], results["parquet"]
    print(
        f"  Parquet vs CSV: write {cw / pw:.1f}x faster, read {cr / pr:.1f}x faster, "
        f"{cs / ps:.1f}x smaller"
    )


if __name__ == "__main__":
    main()
