"""What ``--devices N`` needs to run a command under torchrun: the torchrun command line (``embed``
and ``train``) and, for ``embed``'s collections, both sides of the relaunch.

The process the user started runs torchrun with rank 0's stderr relayed as it comes and
torchrun's own output kept aside, then says in one line how the ranks ended
(:func:`relaunch_under_torchrun`); each rank it starts writes its stderr and its exit status to
files, stops quietly on torchrun's SIGTERM and exits 0 (:func:`run_as_rank`).  The ranks join
one process group and exchange small values (:func:`join_process_group`, :func:`share`: a rank
that vanished stops the others quietly).

Standard library only at import time (``napari-segrep --help`` must not load torch).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from ._common import CLIError

__all__ = [
    "STATUS_ENV",
    "join_process_group",
    "relaunch_under_torchrun",
    "run_as_rank",
    "share",
    "torchrun_command",
]

#: Set by ``--devices N`` for the processes it starts: where each rank leaves its exit status
#: (they exit 0, so that torchrun adds no traceback of its own to a user error).
STATUS_ENV = "NAPARI_SEGREP_EMBED_STATUS"
#: Set by ``--devices N``: the folder where each rank writes its stderr (``rank<r>.err``);
#: rank 0's is shown as it comes (progress, warnings, errors), the others' only when a rank
#: fails unexpectedly.
_STDERR_ENV = "NAPARI_SEGREP_EMBED_STDERR"
#: A rank's status when torchrun stopped it (SIGTERM) or a peer vanished: it says nothing.
_STOPPED = 143


class _Stopped(Exception):
    """This rank stops because torchrun stopped it (SIGTERM) or another rank vanished; the
    process that started torchrun says what happened."""


def torchrun_command(n: int) -> list[str]:
    """The command line that runs this same command (``sys.argv``) under torchrun, in ``n``
    processes on this machine."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={n}",
        "-m",
        "napari_segrep.cli",
        *sys.argv[1:],
    ]


# --- a rank started by --devices N ----------------------------------------------------------------
def run_as_rank(work: Callable[[], int]) -> int:
    """Under ``--devices N`` (:data:`STATUS_ENV` set): run ``work`` as this rank, its stderr to
    its file, stop signals handled; write its exit status for the process that started
    torchrun and return 0."""
    status_file = os.environ[STATUS_ENV]
    rank = os.environ.get("RANK", "0")
    _redirect_stderr(rank)
    _handle_stop_signals()
    try:
        try:
            rc = work()
        finally:  # from here on a stop changes nothing: this rank says how it ended, and exits
            _stop_signals_raise[0] = False
    except (CLIError, ValueError, OSError) as exc:
        print(f"napari-segrep: error: {exc}", file=sys.stderr)
        rc = 2
    except KeyboardInterrupt:  # the process that started torchrun says what is kept
        rc = 130
    except _Stopped:
        rc = _STOPPED
    sys.stderr.flush()
    Path(f"{status_file}.{rank}").write_text(f"{rc}\n")
    return 0


def _redirect_stderr(rank: str) -> None:
    """Under ``--devices N``: this rank's stderr (fd 2) to its file in :data:`_STDERR_ENV`."""
    folder = os.environ.get(_STDERR_ENV)
    if not folder:
        return
    sys.stderr.flush()
    fd = os.open(Path(folder) / f"rank{rank}.err", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 2)
    os.close(fd)


#: Whether a stop signal still stops this rank's work (False once the work has ended: a
#: signal then, during the status write or an exit handler, must not print a traceback).
_stop_signals_raise = [True]


def _handle_stop_signals() -> None:
    """Under ``--devices N``: the first Ctrl-C stops this rank (later ones, from torchrun
    passing it on, are ignored: no second traceback); SIGTERM (torchrun stopping the others
    after a rank failed) stops it quietly.  Once the rank's work has ended, both are ignored."""

    def on_interrupt(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if _stop_signals_raise[0]:
            raise KeyboardInterrupt

    def on_terminate(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if _stop_signals_raise[0]:
            raise _Stopped("stopped by torchrun")

    signal.signal(signal.SIGINT, on_interrupt)
    signal.signal(signal.SIGTERM, on_terminate)


# --- the ranks together (under --devices N or torchrun) -------------------------------------------
def join_process_group(world: int):
    """``torch.distributed`` with the default group joined (gloo: only small messages and
    barriers travel, the embeddings go through files), or None for one process."""
    if world <= 1:
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return dist


def share(dist, value) -> list:
    """Every rank's ``value``, in rank order (``[value]`` for one process); :class:`_Stopped`
    when another rank has vanished (killed)."""
    if dist is None:
        return [value]
    out = [None] * dist.get_world_size()
    try:
        dist.all_gather_object(out, value)
    except RuntimeError as exc:  # gloo: a peer closed the connection
        raise _Stopped(str(exc)) from None
    return out


# --- the process that starts torchrun -------------------------------------------------------------
def relaunch_under_torchrun(n: int, kept: Callable[[], str]) -> int:
    """``--devices N`` outside torchrun: run this same command under torchrun, each process
    with its share of the CPU threads.  Rank 0's messages and progress are shown as they come;
    torchrun's own output (its warnings, its tracebacks when a process fails or is
    interrupted) is kept out of the way and shown only when a process fails unexpectedly.
    Returns rank 0's exit status, or says in one line what happened to a process that was
    interrupted or killed, ending with ``kept()`` (what is kept and how to continue)."""
    import subprocess
    import tempfile

    cmd = torchrun_command(n)
    threads = max(1, (os.cpu_count() or 1) // n)
    with tempfile.TemporaryDirectory(prefix="napari-segrep-") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, STATUS_ENV: str(tmp / "status"), _STDERR_ENV: str(tmp)}
        env.setdefault("OMP_NUM_THREADS", str(threads))
        print(f"napari-segrep: starting {n} processes: {' '.join(cmd[1:])}", file=sys.stderr)
        sys.stderr.flush()
        interrupted = threading.Event()
        relay = _Relay(tmp / "rank0.err")
        relay.start()
        # Ctrl-C reaches every process of the terminal's group: the ranks stop, this one
        # waits for them and says what is kept (a handler, not SIG_IGN: exec resets it)
        previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
        try:
            with open(tmp / "torchrun.log", "wb") as log:
                process = subprocess.Popen(
                    cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
                )
                rc = process.wait()
        finally:
            signal.signal(signal.SIGINT, previous)
            relay.stop()
        codes = {}
        for path in tmp.glob("status.*"):
            try:
                codes[int(path.name.split(".")[1])] = int(path.read_text())
            except ValueError:
                continue
        return _outcome(n, rc, codes, interrupted.is_set(), tmp, kept)


def _outcome(
    n: int, rc: int, codes: dict, interrupted: bool, tmp: Path, kept: Callable[[], str]
) -> int:
    """The exit status of ``--devices N`` and, where no rank has said it, one line on what
    happened."""
    if 130 in codes.values() or (interrupted and rc != 0):
        print(f"napari-segrep: interrupted; {kept()}", file=sys.stderr)
        return 130
    missing = [r for r in range(n) if r not in codes]
    if missing:
        log = _read_text(tmp / "torchrun.log")
        how = [f"rank {r} {_how_it_ended(log, r)}" for r in missing]
        unknown = [r for r, h in zip(missing, how, strict=True) if h.endswith("unexpectedly")]
        for r in unknown:  # a bug, not a signal: what it and torchrun said
            for name in (f"rank{r}.err", "torchrun.log"):
                text = _read_text(tmp / name).strip()
                if text:
                    lines = text.splitlines()[-20:]
                    print(f"--- {name} (last lines) ---", *lines, sep="\n", file=sys.stderr)
        print(
            f"napari-segrep: error: the process of {' and '.join(how)}; the others were "
            f"stopped; {kept()}",
            file=sys.stderr,
        )
        return 2
    if codes.get(0) == _STOPPED:  # another rank failed on its own: its one line
        for r, code in sorted(codes.items()):
            if code not in (0, _STOPPED):
                for line in _read_text(tmp / f"rank{r}.err").splitlines():
                    if line.startswith("napari-segrep: error:"):
                        print(line, file=sys.stderr)
                return code
        print(f"napari-segrep: error: a process stopped unexpectedly; {kept()}", file=sys.stderr)
        return 2
    return codes.get(0, 2)


def _how_it_ended(log: str, rank: int) -> str:
    """What torchrun's report says about ``rank``: ``was killed by SIGKILL``, or ``ended
    unexpectedly``."""
    import re

    for block in re.finditer(r"rank\s*:\s*(\d+)[^\n]*\n\s*exitcode\s*:\s*(-?\d+)", log):
        if int(block.group(1)) == rank and int(block.group(2)) < 0:
            try:
                name = signal.Signals(-int(block.group(2))).name
            except ValueError:
                name = f"signal {-int(block.group(2))}"
            return f"was killed by {name}"
    return "ended unexpectedly"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


class _Relay(threading.Thread):
    """Copies a file to this process's stderr as it grows (rank 0's messages and progress
    bars), until :meth:`stop` (which copies the rest first)."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self._stop_event = threading.Event()

    def run(self) -> None:
        import codecs

        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        fh = None
        try:
            while True:
                last = self._stop_event.is_set()
                if fh is None:
                    try:
                        fh = open(self.path, "rb")  # kept open while it grows
                    except FileNotFoundError:
                        fh = None
                data = fh.read() if fh is not None else b""
                if data:
                    sys.stderr.write(decoder.decode(data))
                    sys.stderr.flush()
                elif last:
                    break
                else:
                    self._stop_event.wait(0.05)
        finally:
            if fh is not None:
                fh.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
