"""Process checks for the tests (Linux /proc): a killed stage must leave no worker behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path


def children(pid: int) -> dict[int, str]:
    """pid -> command line of the live processes whose parent is ``pid`` (Linux /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found[int(entry.name)] = cmdline
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has finished: only its exit status is left to be read


def assert_workers_die_with_their_parent(command: list[str], workers: int, settle_s: float = 3.0) -> None:
    """Start ``command`` (a stage that spawns ``workers`` pool processes), wait for them and ``settle_s`` more
    (so they are mid-work), SIGKILL the stage's process, and assert every worker ends within 5 s."""
    main = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        found: dict[int, str] = {}
        while len(found) < workers and time.monotonic() < deadline and main.poll() is None:
            found = {pid: cmd for pid, cmd in children(main.pid).items() if "spawn_main" in cmd}
            time.sleep(0.2)
        assert len(found) == workers, f"expected {workers} spawned workers, found {found} (exit status {main.poll()})"
        time.sleep(settle_s)
        assert all(alive(pid) for pid in found)
        os.kill(main.pid, signal.SIGKILL)
        main.wait()
        deadline = time.monotonic() + 5.0
        while any(alive(pid) for pid in found) and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors = [pid for pid in found if alive(pid)]
        assert not survivors, f"workers {survivors} outlived the killed main process"
    finally:
        if main.poll() is None:
            main.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(main.pid, signal.SIGKILL)  # anything left of the session (only if the test failed)
