"""Files replaced in one step: whoever reads one, or a process killed while writing it (a SIGKILL, a full disk),
finds the old file or the new one, never a part of either."""

from __future__ import annotations

import contextlib
import glob
import os
import socket
import uuid
import zlib
from pathlib import Path
from typing import Iterator, Union


# who writes a temporary file: this machine (a short hash of its name, for folders other machines share) and process
_WRITER = f"{zlib.crc32(socket.gethostname().encode()):08x}-{os.getpid()}"


def _remove_parts_of_the_dead(path: Path) -> None:
    """Temporary files of ``path`` left by writers on this machine that were killed (their process is gone)."""
    host = _WRITER.split("-")[0]
    for part in path.parent.glob(f".{glob.escape(path.name)}.{host}-*.part*"):
        pid = part.name[len(path.name) + len(host) + 3:].split(".")[0]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                part.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextlib.contextmanager
def replacing(path: Union[str, os.PathLike]) -> Iterator[Path]:
    """A temporary path beside ``path`` (the same file system, so the final rename is atomic) to write the new
    content to; it replaces ``path`` when the block ends, and is removed if the block raises.

    A symbolic link's target is replaced, the link kept; an existing file keeps its permissions, a new one gets
    the umask's (the kernel applies it: the process-wide umask is never changed, which would race other threads).
    The temporary name keeps the suffix (writers that pick the format by it: matplotlib) behind a dot, and names its
    machine and process: one a kill leaves behind is removed by the next write of the same file, before it writes.
    """
    path = Path(os.path.realpath(path))
    _remove_parts_of_the_dead(path)  # first: on a full disk, a killed save's part holds the room this write needs
    tmp = path.with_name(f".{path.name}.{_WRITER}.{uuid.uuid4().hex[:12]}.part{path.suffix}")
    mode = path.stat().st_mode & 0o7777 if path.exists() else None
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as e:  # named after the file asked for, not the temporary name the caller never gave
        raise type(e)(e.errno, f"{e.strerror}: cannot write {path}") from None
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        _flush_to_disk(tmp)
        os.replace(tmp, path)
        _flush_to_disk(path.parent)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None and e.filename is None:  # "No space left" names no file
            raise type(e)(e.errno, f"{e.strerror} (writing {path})") from None
        raise


def _flush_to_disk(path: Path) -> None:
    """``fsync``: the rename is atomic against a killed process, but only what is on the disk survives a host crash
    (a preempted VM): on file systems that do not flush on rename (XFS), an unflushed file renamed over the old one can
    come back empty, both versions lost. The folder is flushed too, for the rename itself."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a folder cannot be opened on Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # a file system that cannot flush a folder
        pass
    finally:
        os.close(fd)


def write_atomically(path: Union[str, os.PathLike], data: Union[str, bytes, memoryview]) -> Path:
    """``data`` as the whole new content of ``path`` (its folder made where missing), replaced in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        tmp.write_text(data) if isinstance(data, str) else tmp.write_bytes(data)
    return path
