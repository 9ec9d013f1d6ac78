"""Files replaced in one step: whoever reads one, or a process killed while writing it (a SIGKILL, a full disk),
finds the old file or the new one, never a part of either."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Iterator, Union


@contextlib.contextmanager
def replacing(path: Union[str, os.PathLike]) -> Iterator[Path]:
    """A temporary path beside ``path`` (the same file system, so the final rename is atomic) to write the new
    content to; it replaces ``path`` when the block ends, and is removed if the block raises.

    A symbolic link's target is replaced, the link kept; an existing file keeps its permissions, a new one gets
    the umask's (the kernel applies it: the process-wide umask is never changed, which would race other threads).
    The temporary name keeps the suffix (writers that pick the format by it: matplotlib) behind a dot (hidden where
    a kill leaves it)."""
    path = Path(os.path.realpath(path))
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.part{path.suffix}")
    mode = path.stat().st_mode & 0o7777 if path.exists() else None
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None and e.filename is None:  # "No space left" names no file
            raise type(e)(e.errno, f"{e.strerror} (writing {path})") from None
        raise


def write_atomically(path: Union[str, os.PathLike], data: Union[str, bytes, memoryview]) -> Path:
    """``data`` as the whole new content of ``path`` (its folder made where missing), replaced in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        tmp.write_text(data) if isinstance(data, str) else tmp.write_bytes(data)
    return path
