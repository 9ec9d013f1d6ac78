"""Carry a data set's ``.npz`` to a machine in calls of a bounded size, and put it back together there.

A lent GPU machine takes at most 64 MiB a call (at most 8 paths), and CIFAR-100's npz is 160 MiB: ``split`` cuts
its arrays into ``.npy`` chunks and packs them into folders ``carry.0``, ``carry.1``, ... of at most ``--max-mb``
each, filling every folder before the next (CIFAR-100 at 56 MB: four folders, so four calls; a call's 64 MiB
counts the project's tracked files too). Send one folder a call, copying its files into one folder there, then
``join`` and train in the next call.

    python scripts/npz_chunks.py split ../shared/data/cifar100.npz .devdata/cifar100 --max-mb 56
    # each call, K = 0, 1, 2, 3 (carry: .devdata/cifar100/carry.K):
    mkdir -p ~/data/cifar100 && cp .devdata/cifar100/carry.K/* ~/data/cifar100/
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
NPY_HEADER = 128  # bytes numpy writes before a chunk's data (a version 1.0 header, padded to 64-byte alignment)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class _Folders:
    """Carry folders of at most ``max_bytes`` each, filled in order."""

    def __init__(self, out: Path, max_bytes: int) -> None:
        self.out, self.max_bytes = out, max_bytes
        self.index, self.used = 0, 0

    def room(self) -> int:
        return self.max_bytes - self.used - NPY_HEADER

    def next(self) -> None:
        self.index, self.used = self.index + 1, 0

    def write(self, name: str, piece: np.ndarray) -> dict:
        folder = self.out / f"carry.{self.index}"
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / name, piece, allow_pickle=False)
        self.used += (folder / name).stat().st_size
        return {"file": name, "carry": self.index, "sha256": _sha256(folder / name)}


def split(npz: Path, out: Path, max_bytes: int) -> dict:
    """Write each array of ``npz`` as ``.npy`` chunks packed into carry folders of at most ``max_bytes`` each (the
    manifest goes into ``carry.0``); returns the manifest."""
    manifest = {"source": npz.name, "arrays": {}}
    folders = _Folders(out, max_bytes)
    with np.load(npz, allow_pickle=False) as data:
        for key in data.files:
            array = data[key]
            rows = len(array) if array.ndim else 1
            row_bytes = max(1, array[:1].nbytes if array.ndim else array.nbytes)
            if row_bytes > max_bytes - NPY_HEADER:
                raise SystemExit(f"npz_chunks: one row of {key} takes {row_bytes} bytes, more than --max-mb allows")
            parts, start = [], 0
            while start < rows:
                take = min(rows - start, folders.room() // row_bytes)
                if take <= 0:
                    folders.next()
                    continue
                piece = array[start:start + take] if array.ndim else array
                parts.append(folders.write(f"{key}.{len(parts):03d}.npy", piece))
                start += take
            manifest["arrays"][key] = {"shape": list(array.shape), "dtype": array.dtype.str, "parts": parts}
    manifest["carry_folders"] = folders.index + 1
    (out / "carry.0").mkdir(parents=True, exist_ok=True)
    (out / "carry.0" / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
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
        if not pieces:  # an empty array has no rows to cut: the manifest alone rebuilds it
            array = np.empty(spec["shape"], np.dtype(spec["dtype"]))
        else:
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
    p.add_argument("--max-mb", type=float, default=62.0, help="bytes a carry folder may hold, in MB (1e6)")
    p = sub.add_parser("join")
    p.add_argument("folder", type=Path)
    p.add_argument("npz", type=Path)
    args = parser.parse_args(argv)
    if args.command == "split" and not args.npz.is_file():
        parser.error(f"split: {args.npz} is not a file: give the .npz to split")
    if args.command == "join" and not (args.folder / MANIFEST).is_file():
        parser.error(f"join: {args.folder} holds no {MANIFEST} (split writes it into carry.0): give the folder "
                     "the carry folders' files were copied into")
    if args.command == "split":
        manifest = split(args.npz, args.out, int(args.max_mb * 1e6))
        for k in range(manifest["carry_folders"]):
            files = [p["file"] for a in manifest["arrays"].values() for p in a["parts"] if p["carry"] == k]
            size = sum((args.out / f"carry.{k}" / f).stat().st_size for f in files) / 1e6
            print(f"{args.out / f'carry.{k}'}: {size:.1f} MB: " + ", ".join(files))
    else:
        print(f"wrote {join(args.folder, args.npz)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
