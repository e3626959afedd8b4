"""Per-thread CPU profiles of the delivery service, for bench/drain_vs_peer.py --profile.

Kept out of service.py: serving does not need it, and it is off unless the environment
names a file (a bench switch, not a setting of the product).
"""

from __future__ import annotations

import cProfile
import pstats
import threading
import time
from collections.abc import Callable

# A path: profile every delivery with cProfile and write the merged stats there on stop
# (bench/drain_vs_peer.py --profile). Unset in production.
PROFILE_ENV = "DELIVER_SERVICE_PROFILE"


class Profiles:
    """One cProfile per delivery thread (a profiler sees only its own thread), merged."""

    def __init__(self, path: str):
        self.path = path
        self.local = threading.local()
        self.profiles: list[cProfile.Profile] = []
        self.lock = threading.Lock()

    def run(self, call: Callable[[], None]) -> None:
        profile = getattr(self.local, "profile", None)
        if profile is None:
            # CPU time of this thread, not wall time: waits on the GIL or a backend are not
            # where the CPU goes.
            profile = self.local.profile = cProfile.Profile(time.thread_time)
            with self.lock:
                self.profiles.append(profile)
        profile.enable()
        try:
            call()
        finally:
            profile.disable()

    def dump(self) -> None:
        with self.lock:
            if self.profiles:
                stats = pstats.Stats(self.profiles[0])
                for profile in self.profiles[1:]:
                    stats.add(profile)
                stats.dump_stats(self.path)
