"""Stream segment files: the append-only log behind every durable stream of the file stores.

``<root>/<vhost>/<stream>/<partition>/<base offset>.seg`` holds framed records (see
``encode_record``); only the writer thread of the store appends, trims and deletes. See
docs/storage.md for the layout and the recovery rules.
"""

from __future__ import annotations

import bisect
import errno
import hashlib
import json
import os
import shutil
import struct
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from crc32c import crc32c
from twisted.logger import Logger

log = Logger(namespace="polymq.store.segments")


class SegmentWriteError(OSError):
    """Writing or syncing a stream segment failed (not retried: appends are not idempotent)."""


STREAMS_DIR = "streams"
_TRASH = ".trash"
_CLEAN = ".clean"  # partition ends at the last clean close (see StreamLog.close)
_NAME_FILE = ".name"
SEGMENT_SUFFIX = ".seg"
_OFFSET_DIGITS = 20
# A directory name longer than this (after escaping) is replaced by a hash of the name.
_MAX_DIR_NAME = 120

# Record header, little endian: crc32c (of the rest of the header, the format name and the
# payload), payload length, offset, count, timestamp, format name length; then the format name
# (utf-8) and the payload.
_REC = struct.Struct("<IIqIqH")
_REC_CRC = struct.Struct("<I")
_MAX_PAYLOAD = 0xFFFFFFFF
# one sparse index entry per this many bytes of log (Kafka's index.interval.bytes)
INDEX_INTERVAL = 4096
_SCAN_CHUNK = 1 << 20


def _scan_chunk() -> int:
    return _SCAN_CHUNK


def escape_name(name: str) -> str:
    """A safe, bounded directory name for a vhost or stream name (never ``.``/``..``, no ``/``).

    ``=`` followed by the percent-encoded UTF-8 name (every byte but letters, digits and
    ``-_.~`` encoded, so ``/`` and NUL cannot occur), or, when that is longer than
    ``_MAX_DIR_NAME``, ``#`` followed by the SHA-256 of the name (the name is then kept in a
    ``.name`` file in the directory).
    """
    esc = "=" + urllib.parse.quote(name, safe="", encoding="utf-8", errors="surrogatepass")
    if len(esc) <= _MAX_DIR_NAME:
        return esc
    return "#" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()


def _unescape_dir(parent: str, entry: str) -> str | None:
    """The name a directory entry stands for, or None for anything else."""
    if entry.startswith("="):
        return urllib.parse.unquote(entry[1:], encoding="utf-8", errors="surrogatepass")
    if entry.startswith("#"):
        try:
            with open(os.path.join(parent, entry, _NAME_FILE), "rb") as f:
                return f.read().decode("utf-8", "surrogatepass")
        except OSError:
            return None
    return None


def encode_record(offset: int, count: int, timestamp: int, fmt: str, data: bytes) -> bytes:
    """The framed header (with its crc32c) of one stream entry; the payload follows it."""
    f = fmt.encode("utf-8", "surrogatepass")
    rest = _REC.pack(0, len(data), offset, count, timestamp, len(f))[4:] + f
    return _REC_CRC.pack(crc32c(rest, crc32c(data))) + rest


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _SegmentIndex:
    """The sparse index of one segment: an entry every ``INDEX_INTERVAL`` bytes of log.

    Built the first time the segment is read (a walk over the record headers, no payload
    checksums), then extended when the segment grew.
    """

    __slots__ = ("offsets", "positions", "end", "max_ts")

    def __init__(self) -> None:
        self.offsets: list[int] = []  # base offset of an indexed entry
        self.positions: list[int] = []  # its byte position in the segment
        self.end = 0  # bytes of the segment walked so far
        self.max_ts = -1  # newest entry timestamp seen (time retention)

    def position_for(self, offset: int) -> int:
        i = bisect.bisect_right(self.offsets, offset) - 1
        return self.positions[i] if i >= 0 else 0


class _Partition:
    __slots__ = ("dir", "segments", "fd", "size", "next", "start", "index")

    def __init__(self, path: str) -> None:
        self.dir = path
        self.segments: list[int] = []  # base offsets, ascending
        self.fd: int | None = None  # the last segment, open for appending
        self.size = 0  # bytes in the last segment
        self.next = 0  # offset after the last entry written
        self.start = 0  # log start: entries below it are skipped at load
        self.index: dict[int, _SegmentIndex] = {}  # base offset -> sparse index (paging)


class StreamLog:
    """Stream entries in append-only per-partition segment files (writer thread only).

    ``<root>/<vhost>/<stream>/<partition>/<base offset>.seg``; see docs/storage.md.
    """

    def __init__(self, root: str, segment_bytes: int, sync: bool) -> None:
        self.root = root
        self.segment_bytes = max(1, segment_bytes)
        self.sync_enabled = sync
        self.parts: dict[tuple[str, str, int], _Partition] = {}
        self.fsyncs = 0  # fdatasync of segment files and fsync of directories
        self.writes = 0  # os.writev calls
        self.truncated = 0  # torn tails cut at open
        self._touched: dict[int, None] = {}  # fds written since the last sync (ordered)
        self._dirs: dict[str, None] = {}  # directories whose entries changed since the last sync
        self._pending: dict[tuple[str, str, int], list] = {}
        self.parallel_sync = True
        self.clean = False  # set by the store once every write is done: close() records ends
        self._pool: ThreadPoolExecutor | None = None
        try:
            self._iov_max = max(16, os.sysconf("SC_IOV_MAX"))
        except (ValueError, OSError):
            self._iov_max = 1024

    # -- paths

    def _stream_dir(self, vhost: str, stream: str) -> str:
        return os.path.join(self.root, escape_name(vhost), escape_name(stream))

    def _mkdirs(self, vhost: str, stream: str, partition: int) -> str:
        """Create the partition directory (and named parents); schedule the directory fsyncs."""
        path = self.root
        for name in (vhost, stream):
            esc = escape_name(name)
            child = os.path.join(path, esc)
            if not os.path.isdir(child):
                os.makedirs(child, exist_ok=True)
                if esc.startswith("#"):
                    tmp = os.path.join(child, _NAME_FILE + ".tmp")
                    with open(tmp, "wb") as f:
                        f.write(name.encode("utf-8", "surrogatepass"))
                        f.flush()
                        os.fsync(f.fileno())
                    os.replace(tmp, os.path.join(child, _NAME_FILE))
                    self._dirs[child] = None
                self._dirs[path] = None
            path = child
        child = os.path.join(path, str(partition))
        if not os.path.isdir(child):
            os.makedirs(child, exist_ok=True)
            self._dirs[path] = None
        return child

    # -- open

    def load(self, starts: dict[tuple[str, str, int], int]) -> dict:
        """Read every segment; cut torn tails; return ``StoreSnapshot.stream_entries``."""
        os.makedirs(self.root, exist_ok=True)
        trash = os.path.join(self.root, _TRASH)
        if os.path.isdir(trash):
            shutil.rmtree(trash, ignore_errors=True)
        out: dict[tuple[str, str, int], list[tuple[int, int, int, str, bytes]]] = {}
        for ve in sorted(os.listdir(self.root)):
            vhost = _unescape_dir(self.root, ve)
            vdir = os.path.join(self.root, ve)
            if vhost is None or not os.path.isdir(vdir):
                continue
            for se in sorted(os.listdir(vdir)):
                stream = _unescape_dir(vdir, se)
                sdir = os.path.join(vdir, se)
                if stream is None or not os.path.isdir(sdir):
                    continue
                for pe in os.listdir(sdir):
                    if not pe.isdigit():
                        continue
                    key = (vhost, stream, int(pe))
                    part = _Partition(os.path.join(sdir, pe))
                    part.start = starts.get(key, 0)
                    entries = self._load_partition(part)
                    self.parts[key] = part
                    if entries:
                        out[key] = entries
        return out

    def _load_partition(self, part: _Partition) -> list:
        bases = sorted(
            int(n[: -len(SEGMENT_SUFFIX)])
            for n in os.listdir(part.dir)
            if n.endswith(SEGMENT_SUFFIX) and n[: -len(SEGMENT_SUFFIX)].isdigit()
        )
        entries: list[tuple[int, int, int, str, bytes]] = []
        start = part.start
        for i, base in enumerate(bases):
            path = self._segment_path(part.dir, base)
            with open(path, "rb") as f:
                buf = f.read()
            good = self._parse(buf, entries, start)
            if good < len(buf):
                # A torn or corrupt tail: nothing from here on was ever reported durable (a
                # callback runs only after every segment written in its commit is synced).
                log.warn(
                    "stream segment {path}: torn tail at byte {at} of {size}, truncated",
                    path=path,
                    at=good,
                    size=len(buf),
                )
                self.truncated += 1
                with open(path, "r+b") as f:
                    f.truncate(good)
                    f.flush()
                    os.fsync(f.fileno())
                for later in bases[i + 1 :]:
                    os.unlink(self._segment_path(part.dir, later))
                _fsync_path(part.dir)
                bases = bases[: i + 1]
                break
        if (
            bases
            and os.path.getsize(self._segment_path(part.dir, bases[-1])) == 0
            and len(bases) > 1
        ):
            os.unlink(self._segment_path(part.dir, bases.pop()))
        part.segments = bases
        if bases:
            path = self._segment_path(part.dir, bases[-1])
            part.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            part.size = os.fstat(part.fd).st_size
        part.next = max(part.start, entries[-1][0] + entries[-1][1] if entries else 0)
        if entries and entries[0][0] < start:
            entries = [e for e in entries if e[0] >= start]
        return entries

    # -- paging: extents at open, positional reads, retention by whole segments

    def open_extents(self, starts: dict[tuple[str, str, int], int]) -> dict:
        """Open every partition reading only its last segment (to cut a torn tail).

        Returns ``StoreSnapshot.stream_partitions``: (log start, next offset, bytes on disk).
        """
        os.makedirs(self.root, exist_ok=True)
        trash = os.path.join(self.root, _TRASH)
        if os.path.isdir(trash):
            shutil.rmtree(trash, ignore_errors=True)
        out: dict[tuple[str, str, int], tuple[int, int, int]] = {}
        ends: dict = {}
        marker = os.path.join(self.root, _CLEAN)
        try:
            with open(marker) as f:
                ends = json.load(f)
            os.unlink(marker)
        except (OSError, ValueError):
            ends = {}
        for ve in sorted(os.listdir(self.root)):
            vhost = _unescape_dir(self.root, ve)
            vdir = os.path.join(self.root, ve)
            if vhost is None or not os.path.isdir(vdir):
                continue
            for se in sorted(os.listdir(vdir)):
                stream = _unescape_dir(vdir, se)
                sdir = os.path.join(vdir, se)
                if stream is None or not os.path.isdir(sdir):
                    continue
                for pe in os.listdir(sdir):
                    if not pe.isdigit():
                        continue
                    key = (vhost, stream, int(pe))
                    part = _Partition(os.path.join(sdir, pe))
                    part.start = starts.get(key, 0)
                    self.parts[key] = part
                    end = ends.get(os.path.relpath(part.dir, self.root))
                    out[key] = self._open_partition(part, end)
        return out

    def _open_partition(self, part: _Partition, end: list | None) -> tuple[int, int, int]:
        bases = sorted(
            int(n[: -len(SEGMENT_SUFFIX)])
            for n in os.listdir(part.dir)
            if n.endswith(SEGMENT_SUFFIX) and n[: -len(SEGMENT_SUFFIX)].isdigit()
        )
        while len(bases) > 1 and os.path.getsize(self._segment_path(part.dir, bases[-1])) == 0:
            os.unlink(self._segment_path(part.dir, bases.pop()))
        part.segments = bases
        if not bases:
            part.next = part.start
            return (part.start, part.start, 0)
        last = self._segment_path(part.dir, bases[-1])
        entries: list = []
        if end is not None and end[0] == bases[-1] and end[1] == os.path.getsize(last):
            # closed cleanly and untouched since: its end is known without reading it
            buf = b""
            good = end[1]
            entries = [(end[2] - 1, 1)] if end[2] > bases[-1] else []
        else:
            with open(last, "rb") as f:
                buf = f.read()
            good = self._parse(buf, entries, 0)
        if buf and good < len(buf):
            log.warn(
                "stream segment {path}: torn tail at byte {at} of {size}, truncated",
                path=last,
                at=good,
                size=len(buf),
            )
            self.truncated += 1
            with open(last, "r+b") as f:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())
        del buf
        part.fd = os.open(last, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        part.size = good
        nxt = entries[-1][0] + entries[-1][1] if entries else bases[-1]
        part.next = max(part.start, nxt)
        total = sum(os.path.getsize(self._segment_path(part.dir, b)) for b in bases[:-1]) + good
        start = max(part.start, bases[0])
        return (min(start, part.next), part.next, total)

    def _index(self, part: _Partition, base: int, fd: int, size: int) -> _SegmentIndex:
        """The sparse index of a segment, walked up to ``size`` (record headers only)."""
        idx = part.index.get(base)
        if idx is None:
            idx = part.index[base] = _SegmentIndex()
        pos = idx.end
        last = idx.positions[-1] if idx.positions else -INDEX_INTERVAL
        hsize = _REC.size
        unpack = _REC.unpack_from
        while pos + hsize <= size:
            buf = os.pread(fd, min(_SCAN_CHUNK, size - pos), pos)
            at, n = 0, len(buf)
            while at + hsize <= n:
                _crc, length, offset, _count, ts, flen = unpack(buf, at)
                rec = hsize + flen + length
                if pos + at + rec > size:
                    n = at  # the segment ends inside this record (being written): stop
                    break
                if pos + at - last >= INDEX_INTERVAL:
                    last = pos + at
                    idx.offsets.append(offset)
                    idx.positions.append(last)
                if ts > idx.max_ts:
                    idx.max_ts = ts
                at += rec
            if at == 0:
                break
            pos += at
        idx.end = pos
        return idx

    def _record_chunks(
        self, fd: int, pos: int, size: int, chunk: Callable[[], int]
    ) -> Iterator[list[tuple[int, int, int, str, bytes]]]:
        """The intact records of a segment from byte ``pos`` on, a list per read.

        Each read asks ``chunk()`` how many bytes to read (called again before every read, so a
        caller can shrink it to what it still wants); a record larger than that is read whole
        by a second read. Stops at the end of what is written (or at a torn record).
        """
        while pos < size:
            buf = os.pread(fd, min(size - pos, chunk()), pos)
            got: list = []
            end = self._parse(buf, got, 0)
            if not got and len(buf) >= _REC.size:
                # one record larger than what was read: read exactly that record
                _c, length, _o, _n, _t, flen = _REC.unpack_from(buf, 0)
                need = _REC.size + flen + length
                if need > len(buf) and pos + need <= size:
                    buf = os.pread(fd, need, pos)
                    end = self._parse(buf, got, 0)
            if not got:
                return
            pos += end
            yield got

    def read(
        self, vhost: str, stream: str, partition: int, offset: int, max_bytes: int
    ) -> list[tuple[int, int, int, str, bytes]]:
        """Entries from the one containing ``offset``: at least one, then up to ``max_bytes``."""
        part = self.parts.get((vhost, stream, partition))
        if part is None or not part.segments:
            return []
        segs = list(part.segments)
        i = max(0, bisect.bisect_right(segs, offset) - 1)
        out: list[tuple[int, int, int, str, bytes]] = []
        total = 0

        def chunk() -> int:  # what is still wanted, and a margin for the record that ends it
            return max(max_bytes - total, 0) + 65536

        while i < len(segs) and (not out or total < max_bytes):
            try:
                fd = os.open(self._segment_path(part.dir, segs[i]), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:  # removed by retention meanwhile
                i += 1
                continue
            try:
                size = os.fstat(fd).st_size
                pos = 0 if out else self._index(part, segs[i], fd, size).position_for(offset)
                for got in self._record_chunks(fd, pos, size, chunk):
                    for e in got:
                        if e[0] + e[1] <= offset:
                            continue
                        if out and total + len(e[4]) > max_bytes:
                            return out
                        out.append(e)
                        total += len(e[4])
                    if out and total >= max_bytes:
                        break
            finally:
                os.close(fd)
            i += 1
        return out

    def find_timestamp(
        self, vhost: str, stream: str, partition: int, timestamp: int
    ) -> tuple[int, int, int, str, bytes] | None:
        """The first entry (in offset order) whose timestamp is >= ``timestamp``, or None.

        Segments whose newest entry is older are skipped by their sparse index (walked once,
        then kept); the one segment that holds the answer is read from its start.
        """
        key = (vhost, stream, partition)
        part = self.parts.get(key)
        if part is None or not part.segments:
            return None
        if key in self._pending:
            self._write_partition(key, self._pending.pop(key))
        for base in list(part.segments):
            try:
                fd = os.open(self._segment_path(part.dir, base), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:  # removed by retention meanwhile
                continue
            try:
                size = os.fstat(fd).st_size
                if self._index(part, base, fd, size).max_ts < timestamp:
                    continue
                for got in self._record_chunks(fd, 0, size, _scan_chunk):
                    for e in got:
                        if e[0] + e[1] > part.start and e[2] >= timestamp:
                            return e
            finally:
                os.close(fd)
        return None

    def retain(
        self,
        vhost: str,
        stream: str,
        partition: int,
        max_bytes: int | None,
        min_timestamp: int | None,
    ) -> tuple[int, int, int]:
        """Delete whole old segments (never the last); return (log start, bytes, segments gone).

        By size as Kafka does: a segment goes while the partition would still hold at least
        ``max_bytes`` without it; by time when its newest entry is older than ``min_timestamp``.
        """
        key = (vhost, stream, partition)
        part = self.parts.get(key)
        if part is None or not part.segments:
            return (part.start if part else 0, 0, 0)
        if key in self._pending:
            self._write_partition(key, self._pending.pop(key))
        segs = part.segments
        sizes = [os.path.getsize(self._segment_path(part.dir, b)) for b in segs]
        total = sum(sizes)
        drop = 0
        while drop < len(segs) - 1:
            if max_bytes is not None and total - sizes[drop] >= max_bytes:
                pass
            elif min_timestamp is not None:
                path = self._segment_path(part.dir, segs[drop])
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    idx = self._index(part, segs[drop], fd, sizes[drop])
                finally:
                    os.close(fd)
                if idx.max_ts >= min_timestamp:
                    break
            else:
                break
            total -= sizes[drop]
            drop += 1
        if not drop:
            return (max(part.start, segs[0]), total, 0)
        start = segs[drop]
        self.trim(vhost, stream, partition, start)
        return (part.start, total, drop)

    @staticmethod
    def _parse(buf: bytes, entries: list, start: int) -> int:
        """Append the intact records of ``buf`` to ``entries``; return the end of the last one."""
        pos, n = 0, len(buf)
        hsize = _REC.size
        mv = memoryview(buf)
        unpack = _REC.unpack_from
        while pos + hsize <= n:
            crc, length, offset, count, ts, flen = unpack(buf, pos)
            end = pos + hsize + flen + length
            if end > n:
                break
            body = pos + hsize + flen
            if crc32c(mv[pos + 4 : body], crc32c(mv[body:end])) != crc:
                break
            fmt = bytes(mv[pos + hsize : pos + hsize + flen]).decode("utf-8", "surrogatepass")
            entries.append((offset, count, ts, fmt, bytes(mv[pos + hsize + flen : end])))
            pos = end
        return pos

    @staticmethod
    def _segment_path(pdir: str, base: int) -> str:
        return os.path.join(pdir, f"{base:0{_OFFSET_DIGITS}d}{SEGMENT_SUFFIX}")

    # -- writes (one group commit: append/trim/delete in order, then sync)

    def append(self, params: tuple) -> None:
        vhost, stream, partition = params[0], params[1], params[2]
        key = (vhost, stream, partition)
        lst = self._pending.get(key)
        if lst is None:
            self._pending[key] = [params]
        else:
            lst.append(params)

    def trim(self, vhost: str, stream: str, partition: int, before: int) -> None:
        key = (vhost, stream, partition)
        if key in self._pending:
            self._write_partition(key, self._pending.pop(key))
        part = self.parts.get(key)
        if part is None:
            return
        part.start = max(part.start, before)
        segs = part.segments
        drop = 0
        while drop < len(segs):
            later = segs[drop + 1] if drop + 1 < len(segs) else None
            if later is not None and later <= before:
                drop += 1
            elif later is None and part.next <= before and part.size > 0:
                drop += 1  # the last one, every entry below the log start
            else:
                break
        if not drop:
            return
        for base in segs[:drop]:
            if base == segs[-1] and part.fd is not None:
                self._touched.pop(part.fd, None)
                os.close(part.fd)
                part.fd = None
                part.size = 0
            os.unlink(self._segment_path(part.dir, base))
            part.index.pop(base, None)
        del segs[:drop]
        self._dirs[part.dir] = None

    def delete(self, vhost: str, stream: str) -> None:
        for key in [k for k in self._pending if k[0] == vhost and k[1] == stream]:
            del self._pending[key]
        for key in [k for k in self.parts if k[0] == vhost and k[1] == stream]:
            part = self.parts.pop(key)
            if part.fd is not None:
                self._touched.pop(part.fd, None)
                os.close(part.fd)
        sdir = self._stream_dir(vhost, stream)
        if not os.path.isdir(sdir):
            return
        trash = os.path.join(self.root, _TRASH)
        os.makedirs(trash, exist_ok=True)
        dest = os.path.join(trash, f"{time.monotonic_ns()}-{os.getpid()}")
        os.rename(sdir, dest)  # atomic: the stream is gone as a whole or not at all
        self._dirs[os.path.dirname(sdir)] = None
        shutil.rmtree(dest, ignore_errors=True)

    def write_pending(self) -> None:
        pending, self._pending = self._pending, {}
        for key, items in pending.items():
            self._write_partition(key, items)

    def _write_partition(self, key: tuple[str, str, int], items: list) -> None:
        part = self.parts.get(key)
        if part is None:
            part = _Partition(self._mkdirs(*key))
            self.parts[key] = part
        bufs: list[bytes] = []
        limit = self.segment_bytes
        size = part.size
        fd = part.fd
        for _v, _s, _p, offset, count, ts, fmt, data in items:
            if len(data) > _MAX_PAYLOAD:
                raise ValueError(f"stream entry of {len(data)} bytes is too large")
            hdr = encode_record(offset, count, ts, fmt, data)
            rec = len(hdr) + len(data)
            if fd is None or (size and size + rec > limit):
                if bufs:
                    self._writev(fd, bufs)
                    bufs = []
                part.size = size
                fd = self._roll(part, offset)
                size = part.size
            bufs.append(hdr)
            bufs.append(data)
            size += rec
            part.next = offset + count
        if bufs:
            self._writev(fd, bufs)
        part.size = size

    def _roll(self, part: _Partition, base: int) -> int:
        """Start a new segment at ``base`` (the old one is synced and closed)."""
        if part.fd is not None:
            if self.sync_enabled:
                os.fdatasync(part.fd)
                self.fsyncs += 1
            self._touched.pop(part.fd, None)
            os.close(part.fd)
            part.fd = None
        if part.segments and part.segments[-1] >= base:
            # offsets did not grow (the core never does this): go on appending to the last
            # segment rather than create one whose name does not sort after it
            base = part.segments[-1]
            flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_CREAT
        else:
            part.segments.append(base)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_CREAT | os.O_EXCL
        part.fd = os.open(self._segment_path(part.dir, base), flags, 0o644)
        part.size = os.fstat(part.fd).st_size
        self._dirs[part.dir] = None
        return part.fd

    def _writev(self, fd: int, bufs: list[bytes]) -> None:
        self._touched[fd] = None
        step = self._iov_max
        for i in range(0, len(bufs), step):
            chunk = bufs[i : i + step]
            total = sum(map(len, chunk))
            done = os.writev(fd, chunk)
            self.writes += 1
            if done < total:  # short write (rare: signals, nearly full disk): write the rest
                rest = b"".join(chunk)[done:]
                while rest:
                    n = os.write(fd, rest)
                    if n <= 0:
                        raise OSError(errno.EIO, "short write to a stream segment")
                    rest = rest[n:]

    def sync(self) -> None:
        """fdatasync every segment written and fsync every changed directory."""
        touched, self._touched = self._touched, {}
        dirs, self._dirs = self._dirs, {}
        if not self.sync_enabled:
            return
        if len(touched) > 1 and self.parallel_sync:
            # Several files: sync them at once, so the filesystem can fold their journal
            # commits (and device cache flushes) into one instead of one after the other.
            if self._pool is None:
                self._pool = ThreadPoolExecutor(4, thread_name_prefix="polymq-segment-sync")
            list(self._pool.map(os.fdatasync, touched))
            self.fsyncs += len(touched)
        else:
            for fd in touched:
                os.fdatasync(fd)
                self.fsyncs += 1
        for d in dirs:
            try:
                _fsync_path(d)
                self.fsyncs += 1
            except FileNotFoundError:
                pass

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for part in self.parts.values():
            if part.fd is not None:
                try:
                    os.close(part.fd)
                except OSError:
                    pass
                part.fd = None
        if self.clean:
            self._write_clean_marker()

    def _write_clean_marker(self) -> None:
        """Record where every partition ends, so the next open need not read last segments.

        Trusted at open only for a last segment whose size is still the recorded one (a later
        append, torn or not, changes it), so a marker that outlived a crash is harmless.
        """
        ends = {
            os.path.relpath(part.dir, self.root): [part.segments[-1], part.size, part.next]
            for part in self.parts.values()
            if part.segments
        }
        path = os.path.join(self.root, _CLEAN)
        try:
            with open(path + ".tmp", "w") as f:
                json.dump(ends, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(path + ".tmp", path)
            _fsync_path(self.root)
        except OSError as e:
            log.warn("stream log: cannot write {path}: {e}", path=path, e=e)
