"""The README's pictures of a training run folder: its two charts and TensorBoard's projector.

    python docs/run_folder_pictures.py

Trains resnet18 (untrained start, crop 32) on generated cells with ``train_ssl(charts=True,
tensorboard=True)`` into a temporary run folder, then writes

- docs/run_loss.png, docs/run_quality.png: the run's ``charts/loss.png`` and
  ``charts/quality.png`` as written;
- docs/tensorboard_projector.png: ``tensorboard --logdir RUN/tensorboard`` in headless
  Chromium (``chromium --headless --screenshot``, WebGL by SwiftShader), on the PROJECTOR tab:
  the monitor set's embeddings, each point drawn as its segment's masked crop (the sprite).

Needs the tensorboard extra (``pip install -e ".[tensorboard]"``) and Chromium (Debian:
``apt-get install chromium``).  A few minutes on 2 CPU cores.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).parent


def train(run: Path) -> None:
    from napari_segrep._sample_data import make_cells
    from napari_segrep.engine.training import train_ssl

    pairs = [make_cells(shape=(256, 256), n_cells=40, seed=s)[:2] for s in range(4)]
    train_ssl(
        [p[0] for p in pairs],
        [p[1] for p in pairs],
        backbone="resnet18",
        crop_size=32,
        batch_size=32,
        epochs=12,
        device="cpu",
        checkpoint_dir=run,
        charts=True,
        tensorboard=True,
        seed=0,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def projector_screenshot(logdir: Path, out: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium is not installed (Debian: apt-get install chromium)")
    port = _free_port()
    board = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir)]
        + ["--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(120):
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        time.sleep(3)  # the projector plugin finds the run
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--use-gl=angle",
                "--use-angle=swiftshader",
                "--enable-unsafe-swiftshader",
                "--ignore-gpu-blocklist",
                "--hide-scrollbars",
                "--window-size=1400,900",
                "--virtual-time-budget=30000",
                f"--screenshot={out}",
                url + "#projector",
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
    finally:
        board.terminate()
        board.wait(30)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        train(run)
        shutil.copyfile(run / "charts" / "loss.png", HERE / "run_loss.png")
        shutil.copyfile(run / "charts" / "quality.png", HERE / "run_quality.png")
        projector_screenshot(run / "tensorboard", HERE / "tensorboard_projector.png")
    for name in ("run_loss.png", "run_quality.png", "tensorboard_projector.png"):
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()
