"""The threshold logic of back-pressure (orderflow_ingest/diskspace.py), without any disk:
statvfs and the clock are stand-ins here; tests/test_backpressure_stack.py fills real ones."""

from __future__ import annotations

import errno
import os
from typing import Any

import pytest

from orderflow_ingest import diskspace
from orderflow_ingest.diskspace import MIB, Headroom, HeadroomGuard


class FakeStat:
    def __init__(self, free: int, size: int = 100 * MIB, block: int = 4096):
        self.f_bavail = free // block
        self.f_blocks = size // block
        self.f_frsize = block


class FakeDisks:
    """statvfs by path; a path mapped to an exception raises it. Counts calls."""

    def __init__(self, **free: Any):
        self.free = free
        self.calls = 0

    def __call__(self, path: str) -> Any:
        self.calls += 1
        value = self.free[path]
        if isinstance(value, BaseException):
            raise value
        return FakeStat(value)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_min_free_is_mebibytes_and_zero_turns_it_off() -> None:
    assert diskspace.min_free_bytes(16) == 16 * 1024 * 1024
    assert diskspace.min_free_bytes(0) == 0
    assert not diskspace.is_short(Headroom("spool", "/s", 0), 0)


def test_short_means_strictly_under_the_threshold() -> None:
    assert diskspace.is_short(Headroom("spool", "/s", MIB - 1), MIB)
    assert not diskspace.is_short(Headroom("spool", "/s", MIB), MIB)


def test_unknown_free_space_is_never_short() -> None:
    assert not diskspace.is_short(Headroom("spool", "/s", None, error="EIO"), MIB)


def test_first_short_names_the_file_system() -> None:
    rooms = [Headroom("spool", "/s", 10 * MIB), Headroom("postfix_queue", "/q", MIB)]
    short = diskspace.first_short(rooms, 4 * MIB)
    assert short is not None and short.purpose == "postfix_queue"
    assert diskspace.first_short(rooms, MIB) is None


def test_postfix_floor_is_queue_minfree_or_one_and_a_half_size_limits() -> None:
    assert diskspace.postfix_floor(100 * MIB, 25 * MIB) == 100 * MIB
    assert diskspace.postfix_floor(10 * MIB, 25 * MIB) == 25 * MIB * 3 // 2


def test_out_of_space_errors() -> None:
    assert diskspace.is_out_of_space(OSError(errno.ENOSPC, "full"))
    assert diskspace.is_out_of_space(OSError(errno.EDQUOT, "quota"))
    assert not diskspace.is_out_of_space(OSError(errno.EIO, "io"))
    assert not diskspace.is_out_of_space(ValueError("x"))


def test_measure_never_raises() -> None:
    broken = FakeDisks(s=PermissionError(errno.EACCES, "denied"))
    headroom = diskspace.measure("spool", "s", broken)
    assert headroom.free_bytes is None and headroom.error and "PermissionError" in headroom.error


def test_measure_uses_what_an_unprivileged_writer_may_use(tmp_path: Any) -> None:
    stat = os.statvfs(tmp_path)
    headroom = diskspace.measure("spool", str(tmp_path))
    assert headroom.size_bytes == stat.f_blocks * stat.f_frsize
    assert headroom.free_bytes is not None and headroom.free_bytes <= headroom.size_bytes


def test_guard_caches_for_its_ttl_then_looks_again() -> None:
    disks = FakeDisks(s=10 * MIB, q=10 * MIB)
    clock = Clock()
    guard = HeadroomGuard({"spool": "s", "postfix_queue": "q"}, 4 * MIB, 1.0, clock, disks)
    assert guard.short() is None
    assert disks.calls == 2
    disks.free["q"] = MIB
    clock.now = 0.5
    assert guard.short() is None  # cached: no statvfs within the second
    assert disks.calls == 2
    clock.now = 1.0
    short = guard.short()
    assert short is not None and short.purpose == "postfix_queue" and short.free_bytes == MIB
    disks.free["q"] = 10 * MIB
    clock.now = 2.5
    assert guard.short() is None


def test_guard_accepts_when_statvfs_fails() -> None:
    disks = FakeDisks(s=OSError(errno.EIO, "I/O error"), q=10 * MIB)
    guard = HeadroomGuard({"spool": "s", "postfix_queue": "q"}, 4 * MIB, 1.0, Clock(), disks)
    assert guard.short() is None


def test_guard_survives_a_bug_in_its_own_code() -> None:
    def explode(_path: str) -> Any:
        raise AssertionError("not an OSError")

    guard = HeadroomGuard({"spool": "s"}, 4 * MIB, 1.0, Clock(), explode)
    assert guard.short() is None


def test_guard_off_does_not_even_look() -> None:
    disks = FakeDisks(s=0)
    assert HeadroomGuard({"spool": "s"}, 0, 1.0, Clock(), disks).short() is None
    assert disks.calls == 0


def test_guard_logs_transitions_not_every_check(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    disks = FakeDisks(s=MIB)
    clock = Clock()
    guard = HeadroomGuard({"spool": "s"}, 4 * MIB, 1.0, clock, disks)
    with caplog.at_level(logging.INFO, logger="orderflow"):
        for second in range(5):
            clock.now = float(second)
            assert guard.short() is not None
        disks.free["s"] = 10 * MIB
        clock.now = 10.0
        assert guard.short() is None
    events = [record.getMessage() for record in caplog.records]
    assert events.count("disk.low") == 1
    assert events.count("disk.recovered") == 1


def test_milter_answers_452_at_mail_from_only_when_short() -> None:
    """The handler's MAIL FROM path: the reply Postfix relays, and a replying callback."""
    import Milter

    from orderflow_ingest.milter import replies
    from orderflow_ingest.milter.handler import OrderflowMilter

    assert str(replies.INSUFFICIENT_STORAGE) == "452 4.3.1 Insufficient system storage"
    assert replies.INSUFFICIENT_STORAGE.temporary
    # MAIL is no longer observe-only: Postfix waits for the milter's answer there.
    assert OrderflowMilter.protocol_mask() & Milter.P_NR_MAIL


# --- doctor and the exporter --------------------------------------------------------------


def test_doctor_shows_the_headroom_above_the_threshold(tmp_path: Any) -> None:
    from orderflow_ingest.ops import doctor

    roomy = doctor.check_disk("spool disk", str(tmp_path), MIB)
    assert roomy.status == doctor.OK and "above the 1.0 MiB threshold" in roomy.detail
    short = doctor.check_disk("spool disk", str(tmp_path), 2**62)
    assert short.status == doctor.FAIL and "452 4.3.1" in short.detail


def _postfix_dir(tmp_path: Any, minfree: int, size_limit: int) -> Any:
    from orderflow_ingest.settings import Settings

    (tmp_path / "main.cf").write_text(
        f"queue_minfree = {minfree}\nmessage_size_limit = {size_limit}\n"
    )
    return Settings({"ORDERFLOW_POSTFIX_CONFIG_DIR": str(tmp_path)}, None)


@pytest.mark.skipif(not os.path.exists("/usr/sbin/postconf"), reason="needs postconf")
def test_doctor_checks_queue_minfree_against_the_size_limit_and_ours(tmp_path: Any) -> None:
    from orderflow_ingest.ops import doctor

    shipped = _postfix_dir(tmp_path, 100 * MIB, 25 * MIB)  # postfix-config/main.cf
    assert doctor.check_queue_minfree(shipped, 1024 * MIB).status == doctor.OK
    # Ours at or under Postfix's floor: Postfix's 452 would come first.
    assert doctor.check_queue_minfree(shipped, 100 * MIB).status == doctor.WARN
    small = _postfix_dir(tmp_path, 10 * MIB, 25 * MIB)  # under 1.5 x message_size_limit
    check = doctor.check_queue_minfree(small, 1024 * MIB)
    assert check.status == doctor.WARN and "1.5 x message_size_limit" in check.detail


def test_shipped_main_cf_keeps_queue_minfree_over_one_and_a_half_size_limits() -> None:
    from orderflow_ingest.devstack.templates import postfix_config_dir

    values = dict(
        line.split(" = ", 1)
        for line in (postfix_config_dir() / "main.cf").read_text().splitlines()
        if line.startswith(("queue_minfree =", "message_size_limit ="))
    )
    minfree, size_limit = int(values["queue_minfree"]), int(values["message_size_limit"])
    assert minfree >= 1.5 * size_limit
    # ORDERFLOW_MIN_FREE_MB's default sits above Postfix's floor, so ours trips first.
    from orderflow_ingest.settings import SETTINGS

    (default,) = [s.default for s in SETTINGS if s.name == "ORDERFLOW_MIN_FREE_MB"]
    assert default is not None
    assert diskspace.min_free_bytes(int(default)) > diskspace.postfix_floor(minfree, size_limit)


def test_exporter_exports_the_threshold_next_to_free_space() -> None:
    from prometheus_client import generate_latest
    from prometheus_client.registry import CollectorRegistry

    from orderflow_ingest.ops import collector

    usage = collector.DiskUsage("spool", "/s", 10, 100)
    families = collector.disk_families([usage], 4 * MIB)

    class Fixed:
        def collect(self) -> Any:
            return families

    registry = CollectorRegistry()
    registry.register(Fixed())  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert 'orderflow_disk_min_free_bytes{path="/s",purpose="spool"} 4.194304e+06' in text
    assert "orderflow_disk_min_free_bytes" not in str(collector.disk_families([usage], 0))
