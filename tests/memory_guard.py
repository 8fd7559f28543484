"""A temporary address-space cap (RLIMIT_AS) so a test fails fast, instead of swapping the
machine, if code under test allocates what a hostile file merely claims."""
from __future__ import annotations

import contextlib
import os

HEADROOM_BYTES = 2 * 2**30  # far above what reading a small ticket needs, far below a bomb


def _current_vm_bytes() -> int | None:
    try:
        with open(f"/proc/{os.getpid()}/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@contextlib.contextmanager
def address_space_limit(headroom: int = HEADROOM_BYTES):
    """Cap this process's address space at its current size + headroom, then restore it.

    A no-op where RLIMIT_AS or /proc is unavailable (the assertions still run)."""
    try:
        import resource
    except ImportError:  # not POSIX
        yield
        return
    vm = _current_vm_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if vm is None:
        yield
        return
    cap = vm + headroom
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
