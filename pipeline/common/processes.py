"""Worker processes that end with their parent: a killed stage leaves no worker training or writing."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

#: Linux ``prctl`` option: the signal the kernel sends this process when its parent dies.
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> str:
    """Make this process end when ``parent_pid`` (its parent) dies, even by SIGKILL; return how.

    On Linux the kernel does it: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``. Elsewhere a daemon thread
    polls the parent pid every 0.5 s and exits the process when it changes. Either way, a parent
    already gone when this runs ends the process at once.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        how = "prctl"
    else:

        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, name="parent-watch", daemon=True).start()
        how = "watch"
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)
    return how
