"""The "Download ImageNet weights (45 MB)" / "Download DINOv2 weights (about 84 MB)" button:
a backbone's pretrained weights (:mod:`napari_segrep.catalogue`) fetched into the local torch
cache when the user asks, and only then.

A small container (button, Cancel, progress bar, a status line) that a dock widget puts next to
its model choice.  It follows the widget's backbone picker (:meth:`WeightsDownloadButton.follow`):
the button is for that backbone's weight set, hidden when the backbone has none, or when whole
weights are already in the cache.  Clicking asks first (the publisher, the size, the licence,
the URL and where the file goes), downloads in a background worker through
:func:`._jobs.start_job` with :func:`napari_segrep.weights.download_weights` (checked, atomic: see
there), shows errors in its status line, and once the weights are there hides itself and tells
its owner.  When the file there is damaged (truncated, empty, an error page, another file:
``WeightsInfo.damaged``) it stays on show, says so, and offers to download the file again
(replacing it once the new one is verified).

Putting it in a widget (Embed segments and Train SegRep do this)::

    from ._weights import WeightsDownloadButton

    self.weights_button = WeightsDownloadButton(
        "resnet18", on_downloaded=lambda path: self.refresh_models()
    )
    self.backbone_input.changed.connect(lambda name: self.weights_button.follow(name))
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from pathlib import Path

from magicgui.widgets import Container, Label, PushButton

from ..weights import WeightsInfo, weights_info
from ._backbones import weight_sets
from ._common import progress_bar, unless_deleted
from ._jobs import Job, start_job, watch_close

__all__ = ["WeightsDownloadButton", "ask_to_download", "default_weights", "download_question"]


def default_weights(backbone: str | None) -> str | None:
    """The name of ``backbone``'s first (default) weight set in the catalogue; None when it has
    none (or the catalogue does not know it)."""
    sets = weight_sets(backbone)
    return sets[0].name if sets else None


def ask_to_download(parent, info: WeightsInfo) -> bool:
    """Ask in a dialog whether to download ``info``'s weights (publisher, size, licence, URL,
    destination)."""
    from qtpy.QtWidgets import QMessageBox

    return QMessageBox.question(parent, *download_question(info)) == (
        QMessageBox.StandardButton.Yes
    )


def download_question(info: WeightsInfo) -> tuple[str, str]:
    """The title and text of the question asked before downloading ``info``'s weights."""
    again = (
        f"\n\nThe file there now is damaged ({info.damaged}): it is replaced once the new one "
        "is verified."
        if info.damaged
        else ""
    )
    size = info.size_text if info.size_text.startswith("about") else f"about {info.size_text}"
    check = (
        "The file is checked (SHA-256) before it is used; torch.hub finds it there too."
        if info.sha256_prefix
        else f"{info.publisher} publishes no checksum: the file is checked by loading it into "
        f"{info.backbone} before it is used."
    )
    licence = f"\nLicence: {info.licence}" if info.licence else ""
    text = (
        f"Download {info.publisher}'s {info.label} weights for {info.backbone} ({size})?"
        f"{licence}\n\nFrom: {info.url}\nTo: {info.path}{again}\n\n{check}"
    )
    return f"Download {info.label} weights?", text


class WeightsDownloadButton(Container):
    """A button that downloads ``backbone``'s weight set ``weights`` after asking, with
    progress and Cancel; hidden while (and as soon as) whole weights are in the cache, and for a
    backbone without pretrained weights.  A damaged file there is named in the status line and
    the button downloads it again (:meth:`refresh`).

    Parameters
    ----------
    backbone : str
        Whose weights (a backbone of :mod:`napari_segrep.catalogue`: ``resnet18``,
        ``vit_small_patch14_reg4_dinov2``...).
    weights : str, optional
        Which weight set (``"imagenet"``, ``"dinov2"``); None: the backbone's first.
    on_downloaded : callable(Path), optional
        Called in the GUI thread with the file's path once the weights it offers are in the
        cache (downloaded by this button, or by another button for the same file meanwhile).

    Attributes
    ----------
    confirm : callable(WeightsInfo) -> bool
        Asks before downloading (default: a dialog, :func:`ask_to_download`); tests replace it.
    url, sha256 : str or None
        Passed to :func:`~napari_segrep.weights.download_weights` (a mirror, the expected
        digest); None: its defaults (``SEGREP_WEIGHTS_URL``, the publisher's URL and checksum).
    job : Job or None
        The running download.
    """

    #: Open buttons: a download by one hides all those for the same file.
    instances: weakref.WeakSet = weakref.WeakSet()

    def __init__(
        self,
        backbone: str = "resnet18",
        weights: str | None = None,
        *,
        on_downloaded: Callable[[Path], object] | None = None,
    ) -> None:
        super().__init__(labels=False)
        WeightsDownloadButton.instances.add(self)
        self.backbone = backbone
        self.weights = weights if weights is not None else default_weights(backbone)
        self.on_downloaded = on_downloaded
        self.url: str | None = None
        self.sha256: str | None = None
        self.confirm: Callable[[WeightsInfo], bool] = lambda info: ask_to_download(
            self.native, info
        )
        self.job: Job | None = None
        self._job_for: tuple[str, str | None] | None = None  # the running download's target
        self.button = PushButton(text="Download weights")
        self.cancel_button = PushButton(text="Cancel download", visible=False)
        self.progress = progress_bar()
        self.status = Label(value="", visible=False)
        self.status.native.setWordWrap(True)
        self.extend([self.button, self.cancel_button, self.progress, self.status])
        self.button.changed.connect(lambda: self.download())
        self.cancel_button.changed.connect(self.cancel)
        self.refresh()

    def info(self) -> WeightsInfo | None:
        """What is known about the weights the button offers now (None: the backbone has no
        pretrained weights)."""
        if self.weights is None:
            return None
        try:
            return weights_info(self.backbone, weights=self.weights, url=self.url)
        except ValueError:  # a backbone without that weight set
            return None

    def follow(self, backbone: str, weights: str | None = None) -> None:
        """Offer ``backbone``'s weight set ``weights`` (None: its first) from now on: what a
        backbone picker calls when it changes.  A download under way goes on (it is for the
        file it named); the button follows once it ends."""
        self.backbone = backbone
        self.weights = weights if weights is not None else default_weights(backbone)
        if self.job is None:
            self._say("")
            self.refresh()

    def refresh(self, info: WeightsInfo | None = None) -> None:
        """Show what the cache holds now: hidden when whole weights are there (or the backbone
        has none); otherwise on show, and when the file there is damaged, saying so and
        offering to download it again."""
        if info is None:
            info = self.info()
        if info is None or info.usable:
            self.visible = False
            return
        again = " again" if info.damaged else ""
        self.button.text = f"Download {info.label} weights{again} ({info.size_text})"
        licence = f", {info.licence}" if info.licence else ""
        self.button.tooltip = (
            f"{info.publisher}'s {info.label} weights of {info.backbone}{licence}, into "
            f"{info.path} (asks first)"
        )
        if info.damaged:
            self._say(
                f"The {info.label} weights file in the torch cache is damaged ({info.damaged}): "
                "download it again."
            )
        # (showing a widget without a parent would open a window of its own)
        if self.native.parent() is not None:
            self.visible = True

    def download(self):
        """Ask, then download in a background worker; returns the napari worker (None when
        the weights are already there, the backbone has none, or the user said no)."""
        if self.job is not None:
            return self.job.worker
        info = self.info()
        if info is None:
            return None
        if info.usable:
            self._on_present(info.path)
            return None
        if not self.confirm(info):
            self._say("Not downloaded.")
            return None
        backbone, weights, url, sha256 = self.backbone, self.weights, self.url, self.sha256
        approximate = info.size or info.approx_size or 1

        def call(progress, should_stop):
            from ..weights import download_weights
            from . import _session

            _session.load_engine()  # the file is checked with torch: load it without a freeze

            def report(done: int, total: int | None) -> None:
                progress(done, total or max(done, approximate))

            return download_weights(
                backbone,
                weights=weights,
                url=url,
                sha256=sha256,
                progress=report,
                should_stop=should_stop,
            )

        watch_close(self.native.window())  # closing napari cancels the download first
        self._set_running(True)
        self._say(f"Downloading from {info.url} ...")
        label = info.label
        self._job_for = (backbone, weights)
        self.job = start_job(
            call,
            desc=f"Downloading {info.filename}",
            progress_bar=self.progress,
            on_result=lambda path: self._on_downloaded(Path(path), label, backbone),
            on_error=self._on_error,
            on_done=self._on_job_done,
        )
        return self.job.worker

    def cancel(self) -> None:
        """Stop the running download: nothing is written."""
        if self.job is not None:
            self.job.cancel()
            self._say("Cancelling...")

    # ------------------------------------------------------------------ results
    def _on_downloaded(self, path: Path, label: str, backbone: str) -> None:
        from napari.utils.notifications import show_info

        show_info(f"{label} weights ({backbone}) saved to {path}")
        for button in list(WeightsDownloadButton.instances):
            unless_deleted(button._on_file)(path)

    def _on_file(self, path: Path) -> None:
        """A weights file arrived in the cache: done, when it is the one offered now."""
        info = self.info()
        if info is not None and info.path == path:
            self._on_present(path)

    def _on_present(self, path: Path) -> None:
        self._say("")
        self.visible = False
        if self.on_downloaded is not None:
            self.on_downloaded(path)

    def _on_error(self, exc: BaseException) -> None:
        from ..errors import Cancelled

        if isinstance(exc, Cancelled):
            self._say("Download cancelled: nothing was written.")
        else:
            self._say(f"Download failed: {exc}")

    def _on_job_done(self) -> None:
        self.job = None
        self._set_running(False)
        if (self.backbone, self.weights) != self._job_for:  # the picker changed meanwhile
            self._say("")
            self.refresh()

    def _set_running(self, running: bool) -> None:
        self.button.enabled = not running
        self.cancel_button.visible = running

    def _say(self, text: str) -> None:
        self.status.value = text
        self.status.visible = bool(text)
