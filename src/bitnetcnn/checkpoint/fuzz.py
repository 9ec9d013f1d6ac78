"""Checkpoint fuzzing, shared by the test suite and ``benchmarks/fuzz_checkpoint.py``.

Three modes: ``file`` mutates the zip's bytes as they are (the zip CRCs catch most of it); ``header`` mutates the
JSON header and re-zips it (valid CRCs, so the header checks and the architecture checks do the work);
``tensors`` mutates ``tensors.safetensors`` and re-zips it with a matching sha256 in the header (so the safetensors
parser, the ternary decoder and the state_dict checks do the work).
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import zipfile
from typing import Dict

from bitnetcnn.checkpoint.errors import CheckpointError
from bitnetcnn.checkpoint.format import HEADER_NAME, TENSORS_NAME, load_checkpoint

FUZZ_MODES = ("file", "header", "tensors")


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One random damage: flip bits, overwrite, insert or delete bytes, or truncate."""
    b = bytearray(data)
    kind = rng.randrange(6)
    if not b:
        return bytes([rng.randrange(256)])
    if kind == 0:
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif kind == 1:
        b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == 2:
        at = rng.randrange(len(b) + 1)
        b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    elif kind == 3:
        at = rng.randrange(len(b))
        del b[at : at + rng.randint(1, 16)]
    elif kind == 4:
        del b[rng.randrange(len(b)) :]
    else:  # overwrite a run with a "magic" value
        at = rng.randrange(len(b))
        b[at : at + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff", b"9999"])
    return bytes(b)


def _zip(header: bytes, tensors: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr(HEADER_NAME, header)
        z.writestr(TENSORS_NAME, tensors)
    return out.getvalue()


def fuzz(data: bytes, mode: str, iterations: int, seed: int = 0) -> Dict[str, object]:
    """Load ``iterations`` damaged copies of the checkpoint ``data``; count what came out."""
    if mode not in FUZZ_MODES:
        raise ValueError(f"unknown fuzz mode {mode!r}: {FUZZ_MODES}")
    rng = random.Random(seed)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        header, tensors = z.read(HEADER_NAME), z.read(TENSORS_NAME)
    stats: Dict[str, object] = {"checkpoint_error": 0, "loaded": 0, "other": []}
    for i in range(iterations):
        if mode == "file":
            damaged = mutate(data, rng)
        elif mode == "header":
            damaged = _zip(mutate(header, rng), tensors)
        else:
            bad = mutate(tensors, rng)
            head = json.loads(header)
            head["tensors"].update(bytes=len(bad), sha256=hashlib.sha256(bad).hexdigest())
            damaged = _zip(json.dumps(head).encode(), bad)
        try:
            load_checkpoint(damaged)
            stats["loaded"] += 1
        except CheckpointError:
            stats["checkpoint_error"] += 1
        except Exception as e:  # noqa: BLE001 - this is what the fuzzer looks for
            stats["other"].append(f"{mode} #{i}: {type(e).__name__}: {e}")
    return stats
