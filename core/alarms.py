"""The broker-wide memory and disk alarm.

``broker.alarm`` (a :class:`ResourceAlarm`) compares, on a timer, the process's resident
anonymous memory (RSS without file-backed pages, from ``/proc/self/statm``) with
``limits.memory_high_watermark`` and the free space of the data directory's filesystem with
``limits.disk_free_limit``. While either is crossed the alarm is *blocked*: every adapter holds
its publishers back in its protocol's own way (it registers an observer) and consumers keep
draining, so the alarm clears again. Setting and clearing are logged.

The memory alarm clears only once usage is back under ``CLEAR_RATIO`` of the watermark: RSS
lags behind frees (the allocator keeps freed arenas for a while), and an alarm flapping at the
threshold would block and unblock publishers on every check. Near the watermark, glibc's
``malloc_trim`` first hands freed memory back to the system (at most every 10 s), so the alarm
judges what the broker holds, not what the allocator kept.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable
from typing import Any

from twisted.internet import threads
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

DEFAULT_MEMORY_HIGH_WATERMARK = 0.4  # of the machine's (or the cgroup's) memory
DEFAULT_DISK_FREE_LIMIT = 50 * 1000 * 1000
DEFAULT_CHECK_MS = 1000
CLEAR_RATIO = 0.9
_PAGE = os.sysconf("SC_PAGE_SIZE")
TRIM_EVERY_S = 10.0
TRIM_ABOVE = 128 * 1024 * 1024  # a process this large is trimmed every TRIM_EVERY_S


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``: gives the free pages of every malloc arena back to the
    system (freed message bodies stay resident otherwise); None elsewhere (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


def process_memory() -> int:
    """Resident anonymous memory of this process in bytes (statm: resident - shared).

    File-backed resident pages (the interpreter's code, mmapped files) are left out: they are
    the page cache's, not the broker's, to give back.
    """
    with open("/proc/self/statm", "rb") as f:
        fields = f.read().split()
    return (int(fields[1]) - int(fields[2])) * _PAGE


def machine_memory() -> int:
    """Physical memory in bytes, or the cgroup (v2 or v1) limit when that is lower."""
    total = os.sysconf("SC_PHYS_PAGES") * _PAGE
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path, "rb") as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return total


def memory_limit(watermark: float) -> int:
    """``limits.memory_high_watermark`` in bytes: a fraction (<= 1) of the machine's memory,
    or an absolute number of bytes (> 1)."""
    if watermark <= 1:
        return int(machine_memory() * watermark)
    return int(watermark)


def disk_free(path: str) -> int:
    """Bytes available to this process on the filesystem holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class ResourceAlarm:
    """Memory and disk alarm; ``blocked`` while either limit is crossed.

    ``add_observer(fn)``: ``fn(blocked, reason)`` is called (reactor thread) whenever the alarm
    sets or clears; ``reason`` names what is crossed ("memory", "disk" or "memory, disk"), or
    is empty when cleared. ``start()`` / ``stop()`` run the periodic check; ``check()`` runs
    one now (the disk part in a thread: statvfs may block on a slow filesystem).
    """

    def __init__(
        self,
        clock: Any,
        *,
        memory_high_watermark: float = DEFAULT_MEMORY_HIGH_WATERMARK,
        disk_free_limit: int = DEFAULT_DISK_FREE_LIMIT,
        data_dir: str | None = None,
        check_ms: float = DEFAULT_CHECK_MS,
        memory_probe: Callable[[], int] = process_memory,
    ) -> None:
        self.clock = clock
        self.memory_limit = memory_limit(memory_high_watermark)
        self.disk_free_limit = int(disk_free_limit)
        self.data_dir = data_dir
        self.check_s = max(0.01, check_ms / 1000.0)
        self._probe = memory_probe
        self.memory_used = 0
        self.disk_free: int | None = None
        self.memory_alarm = False
        self.disk_alarm = False
        self._observers: list[Callable[[bool, str], None]] = []
        self._loop: LoopingCall | None = None
        self._disk_pending = False
        self._trim = _malloc_trim()
        self._trimmed_at = -TRIM_EVERY_S

    @property
    def blocked(self) -> bool:
        return self.memory_alarm or self.disk_alarm

    @property
    def reason(self) -> str:
        return ", ".join(
            name for name, on in (("memory", self.memory_alarm), ("disk", self.disk_alarm)) if on
        )

    def add_observer(self, fn: Callable[[bool, str], None]) -> None:
        self._observers.append(fn)

    def remove_observer(self, fn: Callable[[bool, str], None]) -> None:
        try:
            self._observers.remove(fn)
        except ValueError:
            pass

    def start(self) -> None:
        if self._loop is None:
            self._loop = LoopingCall(self.check)
            self._loop.clock = self.clock
            self._loop.start(self.check_s, now=True)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def set_limits(
        self, *, memory_high_watermark: float | None = None, disk_free_limit: int | None = None
    ) -> None:
        """Change the thresholds while running (an operator through the management API, as
        ``rabbitmqctl set_vm_memory_high_watermark`` / ``set_disk_free_limit``) and judge them
        at once rather than at the next tick."""
        if memory_high_watermark is not None:
            self.memory_limit = memory_limit(memory_high_watermark)
            log.info("memory high watermark set to {limit} bytes", limit=self.memory_limit)
        if disk_free_limit is not None:
            self.disk_free_limit = int(disk_free_limit)
            log.info("disk free limit set to {limit} bytes", limit=self.disk_free_limit)
            if self.disk_free_limit <= 0 and self.disk_alarm:
                self._set("disk", False)
        self.check()

    # -- checks -------------------------------------------------------------------------------

    def check(self) -> None:
        self.check_memory()
        if self.data_dir is not None and self.disk_free_limit > 0 and not self._disk_pending:
            self._disk_pending = True
            d = threads.deferToThread(disk_free, self.data_dir)
            d.addCallbacks(self._disk_checked, self._disk_failed)

    def check_memory(self) -> None:
        try:
            used = self._probe()
        except OSError as e:  # no /proc: the memory alarm cannot work here
            log.warn("memory alarm: cannot read process memory: {e}", e=e)
            return
        if self._trim is not None and (used > self.memory_limit * CLEAR_RATIO or used > TRIM_ABOVE):
            # near or over the watermark, or simply large (a backlog that drained leaves its
            # pages with the allocator): give freed memory back, then judge (at most every
            # TRIM_EVERY_S: a trim walks every arena)
            now = self.clock.seconds()
            if now - self._trimmed_at >= TRIM_EVERY_S:
                self._trimmed_at = now
                self._trim()
                try:
                    used = self._probe()
                except OSError:
                    pass
        self.memory_used = used
        if self.memory_alarm:
            if used < self.memory_limit * CLEAR_RATIO:
                self._set("memory", False)
        elif used > self.memory_limit:
            self._set("memory", True)

    def set_disk_free(self, free: int) -> None:
        """Compare ``free`` bytes with the disk limit (what the threaded check reports)."""
        self.disk_free = free
        low = free < self.disk_free_limit
        if low != self.disk_alarm:
            self._set("disk", low)

    def _disk_checked(self, free: int) -> None:
        self._disk_pending = False
        self.set_disk_free(free)

    def _disk_failed(self, failure: Any) -> None:
        self._disk_pending = False
        log.warn("disk alarm: cannot check free space: {f}", f=failure.getErrorMessage())

    def _set(self, which: str, on: bool) -> None:
        was = self.blocked
        if which == "memory":
            self.memory_alarm = on
            log.warn(
                "memory alarm {state}: {used} MB in use, high watermark {limit} MB",
                state="set" if on else "cleared",
                used=self.memory_used // 1000000,
                limit=self.memory_limit // 1000000,
            )
        else:
            self.disk_alarm = on
            log.warn(
                "disk alarm {state}: {free} MB free on {dir}, limit {limit} MB",
                state="set" if on else "cleared",
                free=(self.disk_free or 0) // 1000000,
                dir=self.data_dir,
                limit=self.disk_free_limit // 1000000,
            )
        if self.blocked != was or self.blocked:
            blocked, reason = self.blocked, self.reason
            for fn in list(self._observers):
                try:
                    fn(blocked, reason)
                except Exception:
                    log.failure("resource alarm observer {fn!r} failed", fn=fn)
