"""The "Download ImageNet weights (45 MB)" button: torchvision's ImageNet weights fetched into
the local torch cache when the user asks, and only then.

A small container (button, Cancel, progress bar, a status line) that a dock widget puts next to
its model choice.  Clicking asks first (the URL, the size and where the file goes), downloads
in a background worker through :func:`._jobs.start_job` with
:func:`napari_segrep.weights.download_weights` (checked, atomic: see there), shows errors in its
status line, and once the weights are there hides itself and tells its owner.  It is hidden
from the start when whole weights are already in the cache; when the file there is damaged
(truncated, empty, an error page, another file: ``WeightsInfo.damaged``) it stays on show, says
so, and offers to download the file again (replacing it once the new one is verified).

Putting it in a widget (Embed segments does this; Train SegRep can do the same)::

    from ._weights import WeightsDownloadButton

    self.weights_button = WeightsDownloadButton(
        on_downloaded=lambda path: self.refresh_models(),  # or choices=combo, select=choice
    )
    self.extend([..., self.model_input, self.weights_button, ...])
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from pathlib import Path

from magicgui.widgets import ComboBox, Container, Label, PushButton

from ..weights import WeightsInfo, weights_info
from ._common import progress_bar, unless_deleted
from ._jobs import Job, start_job, watch_close

__all__ = ["WeightsDownloadButton", "ask_to_download", "imagenet_present"]


def imagenet_present(backbone: str = "resnet18") -> bool:
    """Whether ``backbone``'s ImageNet weights are in the local torch cache now, whole (a
    damaged file does not count).  Imports no torch; the file's SHA-256 is computed once per
    version of the file (about 0.1 s for 45 MB), so it is cheap enough for a combo box's
    choices."""
    try:
        return weights_info(backbone).usable
    except ValueError:  # no ImageNet weights for this backbone
        return False


def ask_to_download(parent, info: WeightsInfo) -> bool:
    """Ask in a dialog whether to download ``info``'s weights (URL, size, destination)."""
    from qtpy.QtWidgets import QMessageBox

    again = (
        f"\n\nThe file there now is damaged ({info.damaged}): it is replaced once the new one "
        "is verified."
        if info.damaged
        else ""
    )
    text = (
        f"Download torchvision's ImageNet weights for {info.backbone} (about {info.size_text})?"
        f"\n\nFrom: {info.url}\nTo: {info.path}{again}\n\n"
        "The file is checked (SHA-256) before it is used; torchvision finds it there too."
    )
    answer = QMessageBox.question(parent, "Download ImageNet weights?", text)
    return answer == QMessageBox.StandardButton.Yes


class WeightsDownloadButton(Container):
    """A button that downloads ``backbone``'s ImageNet weights after asking, with progress and
    Cancel; hidden while (and as soon as) whole weights are in the cache.  A damaged file there
    is named in the status line and the button downloads it again (:meth:`refresh`).

    Parameters
    ----------
    backbone : str
        Whose weights (``resnet18``, ``resnet34``, ``resnet50``).
    on_downloaded : callable(Path), optional
        Called in the GUI thread with the file's path once the weights are in the cache
        (downloaded by this button, or by another button for the same backbone meanwhile).
    choices : ComboBox, optional
        A combo box whose choices are re-read then (e.g. the model choice) ...
    select : str, optional
        ... and the choice to select in it (e.g. the ImageNet model), when it is offered.

    Attributes
    ----------
    confirm : callable(WeightsInfo) -> bool
        Asks before downloading (default: a dialog, :func:`ask_to_download`); tests replace it.
    url, sha256 : str or None
        Passed to :func:`~napari_segrep.weights.download_weights` (a mirror, the expected
        digest); None: its defaults (``SEGREP_WEIGHTS_URL``, torchvision's URL and checksum).
    job : Job or None
        The running download.
    """

    #: Open buttons: a download by one hides all those for the same backbone.
    instances: weakref.WeakSet = weakref.WeakSet()

    def __init__(
        self,
        backbone: str = "resnet18",
        *,
        on_downloaded: Callable[[Path], object] | None = None,
        choices: ComboBox | None = None,
        select: str | None = None,
    ) -> None:
        super().__init__(labels=False)
        WeightsDownloadButton.instances.add(self)
        self.backbone = backbone
        self.on_downloaded = on_downloaded
        self.choices, self.select = choices, select
        self.url: str | None = None
        self.sha256: str | None = None
        self.confirm: Callable[[WeightsInfo], bool] = lambda info: ask_to_download(
            self.native, info
        )
        self.job: Job | None = None
        info = weights_info(backbone)
        self.button = PushButton(
            text=f"Download ImageNet weights ({info.size_text})",
            tooltip=f"torchvision's {backbone} ImageNet weights, into {info.path} (asks first)",
        )
        self.cancel_button = PushButton(text="Cancel download", visible=False)
        self.progress = progress_bar()
        self.status = Label(value="", visible=False)
        self.status.native.setWordWrap(True)
        self.extend([self.button, self.cancel_button, self.progress, self.status])
        self.button.changed.connect(lambda: self.download())
        self.cancel_button.changed.connect(self.cancel)
        self.refresh(info)

    def refresh(self, info: WeightsInfo | None = None) -> None:
        """Show what the cache holds now: hidden when whole weights are there; otherwise on
        show, and when the file there is damaged, saying so and offering to download it
        again."""
        if info is None:
            info = weights_info(self.backbone, url=self.url)
        if info.usable:  # (showing a widget without a parent would open a window)
            self.visible = False
            return
        again = " again" if info.damaged else ""
        self.button.text = f"Download ImageNet weights{again} ({info.size_text})"
        if info.damaged:
            self._say(
                f"The ImageNet weights file in the torch cache is damaged ({info.damaged}): "
                "download it again."
            )

    def download(self):
        """Ask, then download in a background worker; returns the napari worker (None when
        the weights are already there or the user said no)."""
        if self.job is not None:
            return self.job.worker
        info = weights_info(self.backbone, url=self.url)
        if info.usable:
            self._on_present(info.path)
            return None
        if not self.confirm(info):
            self._say("Not downloaded.")
            return None
        backbone, url, sha256 = self.backbone, self.url, self.sha256
        approximate = info.size or 1

        def call(progress, should_stop):
            from ..weights import download_weights
            from . import _session

            _session.load_engine()  # the file is checked with torch: load it without a freeze

            def report(done: int, total: int | None) -> None:
                progress(done, total or max(done, approximate))

            return download_weights(
                backbone, url=url, sha256=sha256, progress=report, should_stop=should_stop
            )

        watch_close(self.native.window())  # closing napari cancels the download first
        self._set_running(True)
        self._say(f"Downloading from {info.url} ...")
        self.job = start_job(
            call,
            desc=f"Downloading {info.filename}",
            progress_bar=self.progress,
            on_result=lambda path: self._on_downloaded(Path(path)),
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
    def _on_downloaded(self, path: Path) -> None:
        from napari.utils.notifications import show_info

        show_info(f"ImageNet weights ({self.backbone}) saved to {path}")
        for button in list(WeightsDownloadButton.instances):
            if button.backbone == self.backbone:
                unless_deleted(button._on_present)(path)

    def _on_present(self, path: Path) -> None:
        if self.backbone == "resnet18":
            from . import _session

            _session.imagenet_available = True  # what the session's warm-up would find now
        self._say("")
        self.visible = False
        if self.choices is not None:
            self.choices.reset_choices()
            if self.select is not None and self.select in self.choices.choices:
                self.choices.value = self.select
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

    def _set_running(self, running: bool) -> None:
        self.button.enabled = not running
        self.cancel_button.visible = running

    def _say(self, text: str) -> None:
        self.status.value = text
        self.status.visible = bool(text)
