"""The proxy's create journal: every job created through the proxy is appended here, on the event
loop, before its answer goes back; the periodic flush then writes its row into the state file.

Why a journal beside the state file rather than a commit into it: one `write()` of one line takes
microseconds on the event loop, where a commit to SQLite needs a hop to the state thread and may wait
behind the flush's own transaction (milliseconds, which the application would feel on every create).
A `write()` is in the kernel once it returns, so a `kill -9` right after the answer loses nothing;
the line is on the disk itself once the next flush has fsynced the state file (`state.
flush_interval_seconds`), or before the answer with `proxy.fsync_creates`.

Segments: `<state.path>-creates.<n>`. A flush starts a new segment when it takes its batch
(`rotate`), and deletes the older ones once that batch is durable (`retire`): every line in them
belongs to a job whose row that batch (or an earlier one) wrote. At start-up `recover` reads what is
left (a crash between an answer and the next flush) and the caller stores it before anything else.
"""

from __future__ import annotations

import errno
import glob
import json
import logging
import os
from dataclasses import dataclass
from typing import Callable

from exporter.tracking.job import Job
from exporter.tracking.store import StateStore

log = logging.getLogger("distribute.state")

SUFFIX = "-creates."


@dataclass(frozen=True, slots=True)
class Entry:
    """What a create through the proxy told: enough to track the job again after a crash."""

    id: str
    kind: str
    group: str
    source: str
    model: str
    first_tracked: float
    next_due: float


class CreateJournal:
    """Append-only segments of create entries beside the state file (none for ":memory:")."""

    def __init__(self, state_path: str) -> None:
        self.enabled = state_path != ":memory:"
        self.prefix = state_path + SUFFIX
        self._number = 0  # the segment appended to; 0: none open yet
        self._fd: int | None = None
        self._open_fds: dict[int, int] = {}  # segment number -> descriptor, until retired
        self._new_segment = False  # a segment was created since the last sync (its directory entry)

    # -- start-up --------------------------------------------------------------------------------
    def segments(self) -> list[tuple[int, str]]:
        found = []
        for path in glob.glob(glob.escape(self.prefix) + "*"):
            tail = path[len(self.prefix):]
            if tail.isdigit():
                found.append((int(tail), path))
        return sorted(found)

    def recover(self) -> list[Entry]:
        """Entries of the segments a crash left behind, oldest first, one per id. A line cut short
        (a power loss while it was written) is skipped and said."""
        entries: dict[str, Entry] = {}
        for number, path in self.segments():
            self._number = max(self._number, number)
            with open(path, "rb") as segment:
                for line in segment:
                    entry = _decode(line)
                    if entry is None:
                        log.warning("create journal %s: an unreadable line skipped", path)
                    elif entry.id not in entries:
                        entries[entry.id] = entry
        return list(entries.values())

    def recover_into(self, store: StateStore) -> int:
        """Store the jobs of what a crash left behind that the file lacks (an id retired meanwhile
        stays retired), durably, then delete the segments; answer how many. On the state thread."""
        entries = self.recover()
        known = store.known([e.id for e in entries]) if entries else set()
        rows = [Job(e.id, e.kind, e.group, e.source, model=e.model, first_tracked=e.first_tracked,
                    next_due=e.next_due).row() for e in entries if e.id not in known]
        if rows:
            store.insert_new(rows, True)
            log.warning("%d job(s) created through the proxy before a crash were taken from the create "
                        "journal into the state file", len(rows))
        for _, path in self.segments():
            os.unlink(path)
        return len(rows)

    # -- appending -----------------------------------------------------------------------------------
    def append(self, entry: Entry) -> None:
        """Write one line; in the kernel (safe against a crash of this process) when this returns."""
        if not self.enabled:
            return
        if self._fd is None:
            self._start_segment()
        line = json.dumps([entry.id, entry.kind, entry.group, entry.source, entry.model, entry.first_tracked,
                           entry.next_due], separators=(",", ":")).encode() + b"\n"
        assert self._fd is not None
        written = os.write(self._fd, line)
        if written != len(line):  # a full disk mid-line: cut the segment, so that later lines stay whole
            self._fd = None
            raise OSError(errno.ENOSPC, f"create journal: {written} of {len(line)} bytes written")

    def _start_segment(self) -> None:
        self._number += 1
        fd = os.open(f"{self.prefix}{self._number}", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._fd = fd
        self._open_fds[self._number] = fd
        self._new_segment = True

    def syncer(self) -> Callable[[], None]:
        """What fsyncs everything appended so far (proxy.fsync_creates), and the directory entry of a
        new segment: taken on the event loop, run on a thread. It works on duplicates of the
        descriptors, so a segment retired (closed) meanwhile cannot turn into another file."""
        fds = [os.dup(fd) for fd in self._open_fds.values()]
        directory, self._new_segment = self._new_segment, False

        def run() -> None:
            try:
                for fd in fds:
                    os.fdatasync(fd)
                if directory:
                    handle = os.open(os.path.dirname(os.path.abspath(self.prefix)), os.O_RDONLY)
                    try:
                        os.fsync(handle)
                    finally:
                        os.close(handle)
            except OSError:
                self._new_segment = self._new_segment or directory  # the next fsync tries again
                raise
            finally:
                for fd in fds:
                    os.close(fd)
        return run

    # -- the flush's two steps -------------------------------------------------------------------------
    def rotate(self) -> int:
        """Close the segment for appends (the flush has just taken the batch holding its jobs);
        answer the newest segment number the batch covers (0: nothing to retire)."""
        if self._fd is not None:
            self._fd = None  # the next append starts a new segment
        return self._number if self._open_fds else 0

    def retire(self, upto: int) -> None:
        """Delete the segments up to `upto`: the batch that covers them is durable."""
        for number in [n for n in self._open_fds if n <= upto]:
            fd = self._open_fds.pop(number)
            if fd == self._fd:
                self._fd = None
            os.close(fd)
            try:
                os.unlink(f"{self.prefix}{number}")
            except FileNotFoundError:
                pass

    def close(self) -> None:
        for fd in self._open_fds.values():
            os.close(fd)
        self._open_fds.clear()
        self._fd = None


def _decode(line: bytes) -> Entry | None:
    try:
        job_id, kind, group, source, model, first_tracked, next_due = json.loads(line)
        return Entry(str(job_id), str(kind), str(group), str(source), str(model), float(first_tracked),
                     float(next_due))
    except (ValueError, TypeError, UnicodeDecodeError):
        return None


__all__ = ["CreateJournal", "Entry"]
