"""Where ids come from: the config's `ids` lists and `ids_file` globs (re-read live).

A watcher remembers, per file, how far it has read; a file that only grew is read from there on
(one stat and a short read per scan), anything else is read again in full and compared with what
the state holds for that file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from exporter.api.ids import BadLine, is_uuid4, parse_id_lines

log = logging.getLogger("distribute.sources")

_TAIL = 64  # bytes before the read offset remembered to tell an append from a rewrite


@dataclass(slots=True)
class FileMark:
    inode: int
    size: int
    mtime_ns: int
    offset: int  # bytes consumed: up to the last complete line
    lines: int  # lines consumed
    tail: bytes  # the _TAIL bytes before `offset`
    mode: int = 0  # a changed mode (chmod) is tried again: the file may have become unreadable or readable


@dataclass(slots=True)
class FileChange:
    """What one scan of a file found."""

    path: Path
    ids: list[str] = field(default_factory=list)
    bad: list[BadLine] = field(default_factory=list)
    complete: bool = False  # True: `ids` is the whole file (compare and forget); False: only appended


def source_name(path: Path) -> str:
    return f"file:{path}"


class IdsFileWatcher:
    """Follows the files one `ids_file` glob matches."""

    def __init__(self) -> None:
        self.marks: dict[Path, FileMark] = {}
        # Files that could not be read at the last scan, with why: warned about once, when they
        # became unreadable, not at every scan (once a second).
        self.unreadable: dict[Path, str] = {}

    def scan(self, paths: list[Path]) -> tuple[list[FileChange], list[Path]]:
        """Changes in the files now matched, and the files that no longer exist or match."""
        changes = []
        for path in paths:
            try:
                change = self._scan_file(path)
            except OSError as exc:
                self._unreadable(path, str(exc.strerror or exc))
                continue
            if self.unreadable.pop(path, None) is not None:
                log.info("ids file readable again file=%s", path)
            if change is not None:
                changes.append(change)
        matched = set(paths)
        gone = [p for p in self.marks if p not in matched]
        for path in gone:
            del self.marks[path]
        for path in [p for p in self.unreadable if p not in matched]:
            del self.unreadable[path]
        return changes, gone

    def _unreadable(self, path: Path, reason: str) -> None:
        if path not in self.unreadable:
            log.warning("cannot read ids file file=%s: %s (said once; the file is tried again every scan)",
                        path, reason)
        self.unreadable[path] = reason

    def _scan_file(self, path: Path) -> FileChange | None:
        info = os.stat(path)
        mark = self.marks.get(path)
        if mark and mark.inode == info.st_ino and mark.size == info.st_size and mark.mtime_ns == info.st_mtime_ns \
                and mark.mode == info.st_mode:
            return None
        with open(path, "rb") as handle:
            if mark and mark.inode == info.st_ino and info.st_size >= mark.offset and self._same_tail(handle, mark):
                handle.seek(mark.offset)
                return self._consume(path, handle, info, mark.offset, mark.lines, complete=False)
            return self._consume(path, handle, info, 0, 0, complete=True)

    @staticmethod
    def _same_tail(handle, mark: FileMark) -> bool:
        start = max(0, mark.offset - _TAIL)
        handle.seek(start)
        return handle.read(mark.offset - start) == mark.tail

    def _consume(self, path: Path, handle, info: os.stat_result, offset: int, lines: int,
                 complete: bool) -> FileChange:
        data = handle.read()
        end = data.rfind(b"\n") + 1
        # An unterminated last line is taken when it is a whole id (a hand-edited file without a
        # final newline); anything shorter may be a line still being written and waits.
        if end < len(data) and is_uuid4(data[end:].split(b"#")[0].strip().decode("utf-8", "replace")):
            end = len(data)
        text = data[:end].decode("utf-8", errors="replace").splitlines()
        ids, bad = parse_id_lines(text, first_line_no=lines + 1)
        change = FileChange(path, ids, bad, complete)
        new_offset = offset + end
        handle.seek(max(0, new_offset - _TAIL))
        tail = handle.read(new_offset - max(0, new_offset - _TAIL))
        pending = end < len(data)  # re-read next scan even if the file does not change
        self.marks[path] = FileMark(info.st_ino, info.st_size, 0 if pending else info.st_mtime_ns,
                                    new_offset, lines + len(text), tail, info.st_mode)
        return change
