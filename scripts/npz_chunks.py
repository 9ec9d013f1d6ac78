"""Carry a data set's ``.npz`` to a machine in pieces of a bounded size, and put it back together there.

A lent GPU machine takes at most 64 MiB a call, and CIFAR-100's npz is 160 MiB: split it here into ``.npy`` chunks
(each array cut along its first axis), send one chunk a call, join them there, then train in one call.

    python scripts/npz_chunks.py split ../shared/data/cifar100.npz .devdata/cifar100 --max-mb 60
    python scripts/npz_chunks.py join ~/data/cifar100 ~/data/cifar100.npz   # on the other machine

``join`` checks every chunk against the manifest (shapes, dtypes, sha256) and writes the npz atomically.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def split(npz: Path, out: Path, max_bytes: int) -> dict:
    """Write each array of ``npz`` as ``.npy`` chunks of at most ``max_bytes`` (plus the .npy header) and a
    manifest; returns the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"source": npz.name, "arrays": {}}
    with np.load(npz, allow_pickle=False) as data:
        for key in data.files:
            array = data[key]
            row = max(1, array[:1].nbytes if array.ndim else array.nbytes)
            per_chunk = max(1, max_bytes // row) if array.ndim else 1
            parts = []
            for i, start in enumerate(range(0, max(1, len(array) if array.ndim else 1), per_chunk)):
                piece = array[start:start + per_chunk] if array.ndim else array
                name = f"{key}.{i:03d}.npy"
                np.save(out / name, piece, allow_pickle=False)
                parts.append({"file": name, "sha256": _sha256(out / name)})
            manifest["arrays"][key] = {"shape": list(array.shape), "dtype": array.dtype.str, "parts": parts}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def join(folder: Path, npz: Path) -> Path:
    """The npz that ``split`` cut into ``folder``, every chunk checked first."""
    manifest = json.loads((folder / MANIFEST).read_text())
    arrays = {}
    for key, spec in manifest["arrays"].items():
        pieces = []
        for part in spec["parts"]:
            path = folder / part["file"]
            if not path.is_file():
                raise SystemExit(f"npz_chunks: {path} is missing; send it before joining")
            if _sha256(path) != part["sha256"]:
                raise SystemExit(f"npz_chunks: {path} is damaged (sha256 differs from {MANIFEST}); send it again")
            pieces.append(np.load(path, allow_pickle=False))
        array = np.concatenate(pieces) if spec["shape"] else pieces[0]
        if list(array.shape) != spec["shape"] or array.dtype.str != spec["dtype"]:
            raise SystemExit(f"npz_chunks: {key} joined to {array.shape} {array.dtype.str}, not {spec}")
        arrays[key] = array
    npz.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=npz.parent)
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, npz)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return npz


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("split")
    p.add_argument("npz", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--max-mb", type=float, default=60.0)
    p = sub.add_parser("join")
    p.add_argument("folder", type=Path)
    p.add_argument("npz", type=Path)
    args = parser.parse_args(argv)
    if args.command == "split":
        manifest = split(args.npz, args.out, int(args.max_mb * 1e6))
        files = [p["file"] for a in manifest["arrays"].values() for p in a["parts"]]
        print(f"{len(files)} chunks in {args.out}: " + ", ".join(files))
    else:
        print(f"wrote {join(args.folder, args.npz)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
