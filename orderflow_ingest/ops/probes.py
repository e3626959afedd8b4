"""Is a local daemon there? Probes shared by `doctor` and the exporter."""

from __future__ import annotations

# /proc/net/unix flag of a listening socket (__SO_ACCEPTCON).
SO_ACCEPTCON = 0x10000


def unix_socket_listening(path: str, proc_net_unix: str = "/proc/net/unix") -> bool:
    """Whether some process listens on this unix socket path (without connecting to it)."""
    with open(proc_net_unix, encoding="utf-8", errors="replace") as handle:
        next(handle, None)
        for line in handle:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == path and int(fields[3], 16) & SO_ACCEPTCON:
                return True
    return False
