"""Files replaced in one step: whoever reads one, or a process killed while writing it (a SIGKILL, a full disk),
finds the old file or the new one, never a part of either."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Union


@contextlib.contextmanager
def replacing(path: Union[str, os.PathLike]) -> Iterator[Path]:
    """A temporary path beside ``path`` (the same file system, so the final rename is atomic) to write the new
    content to; it replaces ``path`` when the block ends, and is removed if the block raises. Its name keeps the
    suffix (writers that pick the format by it: matplotlib) behind a dot (hidden where a kill leaves it)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; the result is an ordinary file
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None and e.filename is None:  # "No space left on device" names no file
            raise type(e)(e.errno, f"{e.strerror} (writing {path})") from None
        raise
