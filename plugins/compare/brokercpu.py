"""Broker CPU time from /proc/<pid>/stat (utime + stime); the broker is found by its
listening port through /proc/net/tcp{,6} socket inodes when no pid is given."""

from __future__ import annotations

import os

from .workload import Target

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_of(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime/stime are fields 14/15 (1-based)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_name(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def listening_inodes(port: int) -> set[str]:
    inodes = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    local, state, inode = parts[1], parts[3], parts[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(inode)
        except (OSError, StopIteration, IndexError, ValueError):
            continue
    return inodes


def pid_listening_on(port: int) -> int | None:
    inodes = listening_inodes(port)
    if not inodes:
        return None
    wanted = {f"socket:[{i}]" for i in inodes}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fd_dir = f"/proc/{entry}/fd"
        try:
            for fd in os.listdir(fd_dir):
                try:
                    if os.readlink(f"{fd_dir}/{fd}") in wanted:
                        return int(entry)
                except OSError:
                    continue
        except OSError:
            continue
    return None


class BrokerCpu:
    def __init__(self, pid: int | None, how: str) -> None:
        self.pid = pid
        self.how = how
        self.start: float | None = None
        self.stop: float | None = None

    @classmethod
    def find(cls, target: Target, pid: int | None) -> BrokerCpu:
        if pid is not None:
            return cls(pid, "--broker-pid")
        if not target.local:
            return cls(None, "broker not local")
        found = pid_listening_on(target.port)
        return cls(found, "listening socket" if found else "listener not found")

    def begin(self) -> None:
        if self.pid is not None:
            self.start = cpu_of(self.pid)

    def end(self) -> None:
        if self.pid is not None:
            self.stop = cpu_of(self.pid)

    def result(self) -> dict | None:
        if self.pid is None or self.start is None or self.stop is None:
            return None
        return {
            "pid": self.pid,
            "process": process_name(self.pid),
            "found_by": self.how,
            "cpu_s": round(self.stop - self.start, 3),
        }
