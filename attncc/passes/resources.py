"""Memory the compiler's own tables need, checked before they are allocated: a shape whose
tables cannot fit fails at once with the size asked and what to do, instead of the machine
swapping or the process dying in the allocator."""
import os


def available_bytes():
    """The memory this machine can still give (Linux: MemAvailable), else its physical memory,
    else None (unknown: nothing is refused)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def reserve(nbytes, what, fix):
    """Raise MemoryError when `nbytes` (for `what`) exceed the memory available."""
    avail = available_bytes()
    if avail is not None and nbytes > avail:
        raise MemoryError(f"attncc: {what} needs {nbytes / 2**30:.1f} GiB, more than the {avail / 2**30:.1f} GiB "
                          f"of memory available; {fix}")
