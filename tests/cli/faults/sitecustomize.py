"""Fault injection for the CLI tests that stop a real run at a known point with a real signal.

Python imports ``sitecustomize`` at start-up from its path: the tests put this folder first on
``PYTHONPATH`` of the processes they start (torchrun's ranks inherit it), with
``SEGREP_TEST_FAULT`` set to a JSON object; without it nothing happens.  The object says which
signal (``"signal": "SIGINT"``) goes where (``"to": "self"``, or ``"group"``: the whole process
group, as Ctrl-C in a terminal), in which process (``"rank"``: torchrun's ``RANK``, default
``"0"``, which is also a process outside torchrun), and when:

- ``"after_parts": N``: once this process has written N parts (``PartsFolder.write``);
- ``"before_replacing": NAME``: just before a file called NAME is moved into place
  (``os.replace``: the renames of ``io.atomic_write_files``);
- ``"before_removing": NAME``: just before a file called NAME is deleted (``os.unlink``);
- ``"at_exit": true``: when a process started by torchrun exits (an ``atexit`` handler), as
  torchrun's SIGTERM may reach a rank whose work has ended.
"""

import json
import os
import signal
import sys

_SPEC = json.loads(os.environ.get("SEGREP_TEST_FAULT") or "null")


def _send() -> None:
    sig = getattr(signal, _SPEC["signal"])
    if _SPEC.get("to") == "group":
        os.killpg(os.getpgrp(), sig)
    else:
        os.kill(os.getpid(), sig)


def _on_file(function, key):
    def wrapped(*args, **kwargs):
        target = args[1] if function.__name__ == "replace" else args[0]
        if os.path.basename(os.fspath(target)) == _SPEC[key]:
            _send()
        return function(*args, **kwargs)

    return wrapped


def _count_parts(folder_class) -> None:
    write, written = folder_class.write, []

    def counted(self, *args, **kwargs):
        out = write(self, *args, **kwargs)
        written.append(out)
        if len(written) == _SPEC["after_parts"]:
            _send()
        return out

    folder_class.write = counted


class _PatchOnImport:
    """Wraps ``PartsFolder.write`` once ``napari_segrep.analysis.parts`` is imported."""

    name = "napari_segrep.analysis.parts"

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        import importlib.util

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _count_parts(module.PartsFolder)

        spec.loader.exec_module = exec_module
        return spec


if _SPEC and _SPEC.get("rank", "0") == os.environ.get("RANK", "0"):
    if "before_replacing" in _SPEC:
        os.replace = _on_file(os.replace, "before_replacing")
    if "before_removing" in _SPEC:
        os.unlink = _on_file(os.unlink, "before_removing")
    if "after_parts" in _SPEC:
        sys.meta_path.insert(0, _PatchOnImport())
    if _SPEC.get("at_exit") and "RANK" in os.environ:
        import atexit

        atexit.register(_send)
