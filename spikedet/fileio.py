"""Atomic output: write to a temporary file beside the target, then rename over it.

Readers of our outputs therefore see either the previous complete file or the new complete
file, never half of one. The temporary name is ``.NAME.tmp-<pid>-<random><suffix>``: an exception
removes it at once, and a file left by a killed process is removed by the next ``atomic_path``
on the same target once its pid no longer exists (so killed runs do not pile up temp files).

Test hook: with ``SPIKEDET_TEST_KILL_BEFORE_RENAME=<file name>`` in the environment the process
SIGKILLs itself right before renaming a finished temporary file onto a target of that name
(simulates a crash at the worst moment; used by tests/test_interrupted.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Test hook: SIGKILL this process right before renaming a temp file onto a target of this name.
KILL_BEFORE_RENAME_ENV = "SPIKEDET_TEST_KILL_BEFORE_RENAME"


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success rename it to ``target``.

    ``suffix`` lets writers that insist on an extension (h5py does not, np.save does) get one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    prefix = f".{target.name}.tmp-{os.getpid()}-"
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the result the permissions a plain open() would have.
        os.chmod(tmp_path, 0o666 & ~_umask())
        if os.environ.get(KILL_BEFORE_RENAME_ENV) == target.name:
            os.kill(os.getpid(), signal.SIGKILL)
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def remove_stale_temps(target: str | os.PathLike) -> list[Path]:
    """Delete ``.NAME.tmp-<pid>-*`` siblings of ``target`` whose process ``pid`` is gone.

    Files of live processes (another writer of the same target, or this one) and names without
    a pid (written before pids were encoded) are left alone; returns the removed paths.
    """
    target = Path(target)
    prefix = f".{target.name}.tmp-"
    removed = []
    try:
        siblings = list(target.parent.iterdir())
    except OSError:  # an unreadable folder: mkstemp below reports the real problem
        return removed
    for path in siblings:
        if not path.name.startswith(prefix):
            continue
        pid_text = path.name[len(prefix) :].split("-", 1)[0]
        if not pid_text.isdigit() or _process_exists(int(pid_text)):
            continue
        with contextlib.suppress(FileNotFoundError):  # a concurrent cleaner got there first
            path.unlink()
            removed.append(path)
    return removed


def _process_exists(pid: int) -> bool:
    """Signal 0 checks existence only; EPERM means the pid belongs to another user's process."""
    if pid <= 0:
        return True  # 0 / negative address process groups: never treat as gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | os.PathLike, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")
