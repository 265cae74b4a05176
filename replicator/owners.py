"""Who holds a claim, and whether that worker still runs.

A claim names its worker as `host@machine:pid:thread`. `machine` is the boot and
the PID namespace the worker runs in, so a process on this machine can tell a
claim of its own kind whose process is gone (killed, crashed) from one held by a
process elsewhere: the former's copies are taken over at once, instead of after a
whole lease (a restarted `vna replicate --once` would otherwise wait it out). A
claim from another machine, another container or another boot is never judged
here; its lease decides. A reused PID only makes a dead worker look alive, which
is the safe side.
"""

from __future__ import annotations

import os
import socket
import threading
from functools import cache
from pathlib import Path


@cache
def _machine() -> str | None:
    """This boot and PID namespace; None where the system does not tell them."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
        namespace = os.readlink("/proc/self/ns/pid")  # pid:[4026531836]
    except OSError:
        return None
    return f"{boot[:12]}.{namespace.removeprefix('pid:[').removesuffix(']')}"


def worker_name() -> str:
    """The name this thread's claims carry."""
    return f"{socket.gethostname()}@{_machine() or '-'}:{os.getpid()}:{threading.get_ident()}"


def is_gone(worker: str) -> bool:
    """True only for a worker of this machine whose process no longer exists."""
    machine = _machine()
    place, _, rest = worker.partition(":")
    if machine is None or place != f"{socket.gethostname()}@{machine}":
        return False
    pid, _, _ = rest.partition(":")
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False
