"""What this machine lets the process have: the memory it can still allocate.

Read from the kernel (``/proc``, the cgroup files, ``RLIMIT_AS``), with nothing heavy
imported, so that both the data readers and the device's estimates can ask.
"""

from __future__ import annotations

import contextlib
import os


def available_memory() -> int | None:
    """Bytes this process could still allocate on the CPU; None where it cannot be told.

    The least of: the kernel's estimate of what can be allocated without swapping
    (``MemAvailable``, else the free pages), what the process's cgroup (a container's
    memory limit) has left, and the address space ``RLIMIT_AS`` leaves. A machine's whole
    memory would overstate all three.
    """
    limits = [_mem_available(), _cgroup_left(), _address_space_left()]
    known = [n for n in limits if n is not None]
    return max(0, min(known)) if known else None


def _proc_kib(path: str, field: str) -> int | None:
    """A ``kB`` field of a ``/proc`` file (``MemAvailable`` of ``/proc/meminfo``), in bytes."""
    with contextlib.suppress(OSError, ValueError), open(path) as lines:
        for line in lines:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None


def _mem_available() -> int | None:
    found = _proc_kib("/proc/meminfo", "MemAvailable")
    if found is not None:
        return found
    try:  # no /proc: free pages (less than what could be reclaimed, but a bound)
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _read_int(path: str) -> int | None:
    with contextlib.suppress(OSError, ValueError), open(path) as file:
        return int(file.read().strip())
    return None  # also "max": no limit


def _cgroup_left() -> int | None:
    """The memory limit of this process's cgroup less its usage (v2, else v1)."""
    paths: dict[str, str] = {}
    with contextlib.suppress(OSError), open("/proc/self/cgroup") as lines:
        for line in lines:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            paths[controllers] = path
    for root, limit, usage, key in (("/sys/fs/cgroup", "memory.max", "memory.current", ""),
                                    ("/sys/fs/cgroup/memory", "memory.limit_in_bytes",
                                     "memory.usage_in_bytes", "memory")):
        if key not in paths:
            continue
        # Inside a container the process's own path may not be mounted: its root is.
        for folder in (root + paths[key].rstrip("/"), root):
            most, used = _read_int(f"{folder}/{limit}"), _read_int(f"{folder}/{usage}")
            if most is not None and used is not None:
                return most - used if most < 1 << 60 else None  # v1 writes "none" as 2^63
    return None


def _address_space_left() -> int | None:
    """What ``RLIMIT_AS`` leaves of this process's address space (None: no limit)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    size = _proc_kib("/proc/self/status", "VmSize")
    return soft - (size or 0)
