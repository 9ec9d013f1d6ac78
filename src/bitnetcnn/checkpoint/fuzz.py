"""Checkpoint fuzzing, shared by the test suite and ``benchmarks/fuzz_checkpoint.py``.

Three modes: ``file`` mutates the zip's bytes as they are (the zip CRCs catch most of it); ``header`` mutates the
JSON header and re-zips it (valid CRCs, so the header checks and the architecture checks do the work);
``tensors`` mutates ``tensors.safetensors`` and re-zips it with a matching sha256 in the header (so the safetensors
parser, the ternary decoder and the state_dict checks do the work).

:func:`malicious` builds files made to cost a reader gigabytes or minutes (a deflate bomb, a huge architecture, a
decode bomb, ...; :data:`MALICIOUS_SHAPES`), for ``tests/test_checkpoint_fuzz.py`` and
``benchmarks/malicious_checkpoints.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import struct
import zipfile
import zlib
from typing import Dict

from bitnetcnn.checkpoint.errors import CheckpointError
from bitnetcnn.checkpoint.format import HEADER_NAME, TENSORS_NAME
from bitnetcnn.checkpoint.load import load_checkpoint

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


def damaged_copy(data: bytes, mode: str, rng: random.Random) -> bytes:
    """One damaged copy of the checkpoint ``data``: its bytes (``file``), its header re-zipped with valid CRCs
    (``header``), or its tensors re-zipped under a header whose size and sha256 match them (``tensors``), so that
    the damage reaches the checks behind the zip's and the hash's."""
    if mode not in FUZZ_MODES:
        raise ValueError(f"unknown fuzz mode {mode!r}: {FUZZ_MODES}")
    if mode == "file":
        return mutate(data, rng)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        header, tensors = z.read(HEADER_NAME), z.read(TENSORS_NAME)
    if mode == "header":
        return _zip(mutate(header, rng), tensors)
    bad = mutate(tensors, rng)
    head = json.loads(header)
    head["tensors"].update(bytes=len(bad), sha256=hashlib.sha256(bad).hexdigest())
    return _zip(json.dumps(head).encode(), bad)


def fuzz(data: bytes, mode: str, iterations: int, seed: int = 0) -> Dict[str, object]:
    """Load ``iterations`` damaged copies of the checkpoint ``data``; count what came out."""
    rng = random.Random(seed)
    stats: Dict[str, object] = {"checkpoint_error": 0, "loaded": 0, "other": []}
    for i in range(iterations):
        damaged = damaged_copy(data, mode, rng)
        try:
            load_checkpoint(damaged)
            stats["loaded"] += 1
        except CheckpointError:
            stats["checkpoint_error"] += 1
        except Exception as e:  # noqa: BLE001 - this is what the fuzzer looks for
            stats["other"].append(f"{mode} #{i}: {type(e).__name__}: {e}")
    return stats


# ------------------------------------------------------------------------------------------- malicious shapes
# Files made to cost a reader gigabytes or minutes (issue 18), each built from a small valid checkpoint. ``big``
# gives the sizes the issue measured (the benchmark); the default small ones cost the tests little to build.

MALICIOUS_SHAPES = ("deflate_bomb", "huge_zip_entry", "huge_header", "nested_header", "nested_args", "huge_depths",
                    "decode_bomb", "huge_safetensors_header", "many_zip_entries")


def _parts(data: bytes):
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return json.loads(z.read(HEADER_NAME)), z.read(TENSORS_NAME)


def _zip_deflated(entries) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, payload in entries:
            z.writestr(name, payload)
    return out.getvalue()


def _raw_zip(entries) -> bytes:
    """A zip from ``(name, method, crc, declared size, compressed bytes)``: sizes as given, true or not."""
    out, central = bytearray(), bytearray()
    for name, method, crc, size, payload in entries:
        name_b = name.encode()
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(payload), size, len(name_b), 0)
        out += name_b + payload
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc, len(payload), size,
                               len(name_b), 0, 0, 0, 0, 0o644 << 16, offset) + name_b
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), len(out), 0)
    return bytes(out + central + end)


def _deflate_zeros(prefix: bytes, zeros: int) -> bytes:
    """Raw deflate of ``prefix`` + ``zeros`` zero bytes at deflate's maximum ratio (about 1030:1), in O(output):
    once its window is all zeros, zlib codes each further 16 MiB of zeros (sync-flushed) to the same bytes."""
    chunk = 1 << 24
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = min(zeros, chunk)
    out = [c.compress(prefix + bytes(first)) + c.flush(zlib.Z_SYNC_FLUSH)]
    zeros -= first
    repeats, rest = divmod(zeros, chunk)
    if repeats:
        period = c.compress(bytes(chunk)) + c.flush(zlib.Z_SYNC_FLUSH)
        if repeats > 1:
            assert c.compress(bytes(chunk)) + c.flush(zlib.Z_SYNC_FLUSH) == period
        out.append(period * repeats)
    out.append(c.compress(bytes(rest)) + c.flush())
    return b"".join(out)


def _crc_zeros(prefix: bytes, zeros: int) -> int:
    crc, block = zlib.crc32(prefix), bytes(1 << 24)
    while zeros:
        crc = zlib.crc32(block[: min(zeros, len(block))], crc)
        zeros -= min(zeros, len(block))
    return crc


def malicious(shape: str, data: bytes, big: bool = False) -> bytes:
    """A file of kind ``shape`` (one of :data:`MALICIOUS_SHAPES`) made from the valid checkpoint ``data``."""
    header, tensors = _parts(data)
    if shape == "deflate_bomb":  # the tensors entry inflates to 3.9 GB (small: 256 MiB) from ~1/1000 of that
        size = 3_900_000_000 if big else 256 << 20
        rest = size - 8 - 128  # a valid safetensors header (padded to 128 bytes) declaring one tensor of zeros
        table = json.dumps({"x": {"dtype": "U8", "shape": [rest], "data_offsets": [0, rest]}}).encode().ljust(128)
        prefix = (128).to_bytes(8, "little") + table
        header["tensors"]["bytes"] = size
        head = json.dumps(header).encode()
        body = _deflate_zeros(prefix, size - len(prefix))
        return _raw_zip([(HEADER_NAME, 0, zlib.crc32(head), len(head), head),
                         (TENSORS_NAME, 8, _crc_zeros(prefix, size - len(prefix)), size, body)])
    if shape == "huge_zip_entry":  # the zip directory claims a 4 GB tensors entry for a few kilobytes
        head = json.dumps(header).encode()
        return _raw_zip([(HEADER_NAME, 0, zlib.crc32(head), len(head), head),
                         (TENSORS_NAME, 0, zlib.crc32(tensors), 0xFFFF0000, tensors)])
    if shape == "huge_header":  # a JSON header of 64 MiB (small: 5 MiB) of empty lists, deflated 1000:1
        n = (64 << 20 if big else 5 << 20) // 3
        header["metadata"]["junk"] = None
        text = json.dumps(header).replace('"junk": null', '"junk": [' + "[]," * (n - 1) + "[]]")
        return _zip_deflated([(HEADER_NAME, text.encode()), (TENSORS_NAME, tensors)])
    if shape == "nested_header":  # a JSON header nested a million levels deep (small: 100,000)
        depth = 1_000_000 if big else 100_000
        return _zip_deflated([(HEADER_NAME, b"[" * depth + b"]" * depth), (TENSORS_NAME, tensors)])
    if shape == "nested_args":  # architecture args nested 900 levels deep (JSON parses it; the model cannot)
        header["architecture"]["args"]["depths"] = json.loads("[" * 900 + "]" * 900)
        return _zip_deflated([(HEADER_NAME, json.dumps(header).encode()), (TENSORS_NAME, tensors)])
    if shape == "huge_depths":  # architecture args that build 20,000 blocks (the file holds a few)
        header["architecture"]["args"]["depths"] = [20000, 1, 1]
        return _zip_deflated([(HEADER_NAME, json.dumps(header).encode()), (TENSORS_NAME, tensors)])
    if shape == "decode_bomb":
        return _decode_bomb(header, 1760 if big else 400)  # 400: 20 M weights, over what any file may hold
    if shape == "huge_safetensors_header":  # tensors.safetensors says its own header is 1 TB
        bad = (1 << 40).to_bytes(8, "little") + tensors[8:]
        header["tensors"].update(bytes=len(bad), sha256=hashlib.sha256(bad).hexdigest())
        return _zip_deflated([(HEADER_NAME, json.dumps(header).encode()), (TENSORS_NAME, bad)])
    if shape == "many_zip_entries":  # 65,000 empty zip entries (small: 20,000) next to the real two
        count = 65_000 if big else 20_000
        head = json.dumps(header).encode()
        return _raw_zip([(HEADER_NAME, 0, zlib.crc32(head), len(head), head),
                         (TENSORS_NAME, 0, zlib.crc32(tensors), len(tensors), tensors)]
                        + [(f"{i}", 0, 0, 0, b"") for i in range(count)])
    raise ValueError(f"unknown malicious shape {shape!r}: {MALICIOUS_SHAPES}")


def _decode_bomb(header: dict, width: int) -> bytes:
    """A consistent converted ``bitnet_cnn(width=...)`` whose ternary weights are all zero: the coder needs no bits
    for them, so a few kilobytes declare about ``126 * width**2`` weights (width 1760: 391 M, 1.56 GB as float32)."""
    import numpy as np
    import torch
    from safetensors.torch import save

    from bitnetcnn.checkpoint import ternary_codec as tc
    from bitnetcnn.checkpoint.format import TERNARY_PREFIX
    from bitnetcnn.models import create_model

    args = dict(header["architecture"]["args"], width=width)
    with torch.device("meta"):
        model = create_model(**args)
    layers = [spec["name"] for spec in header["ternary_coding"]["layers"]]
    modules = dict(model.named_modules())
    tensors, lays = {}, []
    for key, value in model.state_dict().items():
        if key.rsplit(".", 1)[0] not in layers or not key.endswith(".weight"):
            # random (incompressible, as real BatchNorm statistics are), so the zip's ratio looks like a real file's
            tensors[key] = torch.rand(value.shape) if value.dtype.is_floating_point else torch.zeros(value.shape,
                                                                                                    dtype=value.dtype)
    for name in layers:
        shape = tuple(modules[name].weight.shape)
        tensors[name + ".scale"] = torch.rand(shape[0])
        lays.append(tc.layout(shape))
    used, freqs = [False], []  # global context 0: padding; each layer: order0's two contexts (full, short chunk)
    for lay in lays:
        for cls, present in ((0, lay.cols >= 3), (1, lay.cols % 3 != 0)):
            used.append(bool(present and lay.kernels))
            if used[-1]:
                row = np.zeros(tc.ALPHABET, np.uint16)
                row[13 if cls == 0 else (1 if lay.cols % 3 == 1 else 4)] = tc.M  # digits 1 = code 0; padding 0
                freqs.append(row)
    streams = tc.MAX_STREAMS
    arrays = {"words": np.zeros(0, np.uint8), "states": np.full(streams, tc.L, "<u4").view(np.uint8),
              "contexts": np.packbits(np.array(used[1:], bool)),
              "freqs": np.concatenate(freqs).astype("<u2").view(np.uint8)}
    for key, arr in arrays.items():
        tensors[TERNARY_PREFIX + key] = torch.from_numpy(arr.copy())
    blob = save(tensors)
    header["architecture"]["args"] = args
    header["ternary_coding"] = {"coder": tc.CODER, "streams": streams,
                                "layers": [{"name": n, "shape": list(l.shape), "model": "order0"}
                                           for n, l in zip(layers, lays)]}
    header["tensors"].update(bytes=len(blob), sha256=hashlib.sha256(blob).hexdigest())
    return _zip_deflated([(HEADER_NAME, json.dumps(header).encode()), (TENSORS_NAME, blob)])
