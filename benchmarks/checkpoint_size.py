"""How to store ternary weights: sizes and load times of the options, measured on real trained weights.

    BITNETCNN_DATA=/path/to/shared/data python benchmarks/checkpoint_size.py [--repeat 5] [--only resnet]

For each seed checkpoint in ``$BITNETCNN_DATA/seed-checkpoints`` (and each shipped pretrained model in
``bitnetcnn/pretrained/``) it prints one table: the ternary codes packed 2 bits a weight and 5 a byte (base 3),
each raw and through zlib / bz2 / LZMA, their order-0 entropy per layer, and bitnetcnn's coder (3-weight symbols,
per-layer statistics, optional previous-row context, interleaved rANS), with bits per ternary weight and the time to
decode back to int8 codes. Then the whole checkpoint: the seed's zip, a float32 state_dict, and bitnetcnn's file,
with the time from file to ready model (median of ``--repeat`` runs) next to ``torch.load`` of the float state_dict.
"""

from __future__ import annotations

import argparse
import bz2
import lzma
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import bitnetcnn  # noqa: E402
from bitnetcnn.checkpoint import checkpoint_size_report, ternary_codec  # noqa: E402
from bitnetcnn.checkpoint.seed import _read_foreign, load_seed_checkpoint  # noqa: E402
from bitnetcnn.cli import positive_int  # noqa: E402
from bitnetcnn.quant import pack_2bit, pack_base3, unpack_2bit, unpack_base3  # noqa: E402
from bitnetcnn.settings import data_root  # noqa: E402

COMPRESSORS = {
    "raw": (lambda b: b, lambda b: b),
    "zlib-9": (lambda b: zlib.compress(b, 9), zlib.decompress),
    "bz2-9": (lambda b: bz2.compress(b, 9), bz2.decompress),
    "lzma-9e": (lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME), lzma.decompress),
}


def _timed(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def _entropy_bits(codes: np.ndarray) -> float:
    counts = np.bincount(codes.ravel().astype(np.int64) + 1, minlength=3).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(counts[counts > 0] * np.log2(p)).sum())


def measure(label: str, layers, repeat: int) -> list[tuple[str, int, float, float]]:
    """Rows ``(option, bytes, bits per weight, decode seconds)`` for the ternary codes of one model."""
    n = sum(c.size for _, c in layers)
    flat = torch.from_numpy(np.concatenate([c.ravel() for _, c in layers]))
    rows = []
    for packing, pack, unpack in (("2-bit", pack_2bit, unpack_2bit), ("base-3 (5/byte)", pack_base3, unpack_base3)):
        packed = pack(flat).numpy().tobytes()
        for cname, (compress, decompress) in COMPRESSORS.items():
            blob = compress(packed)

            def decode(blob=blob, decompress=decompress, unpack=unpack):
                return unpack(torch.frombuffer(bytearray(decompress(blob)), dtype=torch.uint8), n)

            _, t = _timed(decode, repeat)
            rows.append((f"{packing} + {cname}", len(blob), len(blob) * 8 / n, t))
    entropy = sum(_entropy_bits(c) for _, c in layers) / 8
    rows.append(("order-0 entropy per layer (bound, no table)", int(entropy), entropy * 8 / n, float("nan")))
    for name, kwargs in (("bitnetcnn coder, order-0 only", dict(model="order0")),
                         ("bitnetcnn coder, previous-row context only", dict(model="row")),
                         ("bitnetcnn coder (per-layer choice) [used]", {})):
        arrays, meta = ternary_codec.encode_ternary(layers, **kwargs)
        size = sum(a.nbytes for a in arrays.values())
        _, t = _timed(lambda: ternary_codec.decode_ternary(arrays, meta), repeat)
        rows.append((name, size, size * 8 / n, t))
    print(f"\n## {label}: {n:,} ternary weights in {len(layers)} layers\n")
    print("| ternary weights stored as | bytes | bits/weight | decode s |")
    print("|---|---:|---:|---:|")
    for option, size, bits, t in rows:
        print(f"| {option} | {size:,} | {bits:.3f} | {t:.3f} |")
    return rows


def whole_file(label: str, seed_zip: Path | None, model, repeat: int, shipped: Path | None = None) -> None:
    """The whole checkpoint's sizes and load times; ``shipped``: the published file itself, whose size (its header
    carries the training record) is the one the README quotes, besides the model saved again here."""
    with tempfile.TemporaryDirectory() as tmp:
        path = bitnetcnn.save_checkpoint(model, Path(tmp) / "model.bnc")
        report = checkpoint_size_report(path)
        loaded, t_load = _timed(lambda: bitnetcnn.load_checkpoint(path), repeat)
        bit = bitnetcnn.convert_to_bit(model)
        float_state = {k: v.float() if v.is_floating_point() else v for k, v in bit.state_dict().items()}
        fpath = Path(tmp) / "float.pt"
        torch.save(float_state, fpath)
        _, t_float = _timed(lambda: torch.load(fpath, weights_only=True), repeat)
        x = torch.randn(2, *model.model_config.input_size)
        with torch.no_grad():
            same = torch.equal(model(x), loaded(x))
        print(f"\n### {label}: whole checkpoint\n")
        print("| file | bytes | load s (file to ready model) |")
        print("|---|---:|---:|")
        if seed_zip is not None:
            print(f"| seed zip (int8 weights, DEFLATE) | {seed_zip.stat().st_size:,} | |")
        print(f"| float32 state_dict (torch.save) | {fpath.stat().st_size:,} | {t_float:.3f} (torch.load only) |")
        print(f"| **bitnetcnn checkpoint**{' (saved again here)' if shipped else ''} | **{report['file_bytes']:,}** "
              f"| **{t_load:.3f}** |")
        if shipped is not None:
            size = shipped.stat().st_size
            print(f"| {shipped.name} as published | {size:,} | |")
            print(f"\nfloat32 state_dict / published file: {fpath.stat().st_size / size:.1f}x")
        print(f"\nternary part {report['ternary_coded_bytes']:,} bytes "
              f"({report['bits_per_ternary_weight']:.3f} bits/weight), other tensors {report['other_tensor_bytes']:,} "
              f"bytes before DEFLATE; outputs after the round trip bit-identical: {same}; "
              f"torch threads: {torch.get_num_threads()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=positive_int, default=5)
    parser.add_argument("--only", default="", help="substring of the checkpoint file names to measure")
    parser.add_argument("--threads", type=positive_int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = data_root(None) / "seed-checkpoints"
    files = sorted(root.glob("*.zip")) if root.is_dir() else []
    if not files:
        print(f"no seed checkpoints under {root}; set BITNETCNN_DATA", file=sys.stderr)
    from bitnetcnn.hub import PRETRAINED_DIR

    shipped = sorted(PRETRAINED_DIR.glob("*.bnc"))
    if not any(args.only in path.name for path in [*files, *shipped]):
        parser.error(f"--only {args.only!r} names none of {', '.join(p.name for p in [*files, *shipped])}")
    for path in files:
        if args.only not in path.name:
            continue
        state, _ = _read_foreign(str(path), path.read_bytes())
        layers = [(k[:-7], v.numpy()) for k, v in state.items() if k.endswith(".weight") and v.dtype == torch.int8]
        measure(path.name, layers, args.repeat)
        whole_file(path.name, path, load_seed_checkpoint(path), args.repeat)
    for path in shipped:
        if args.only not in path.name:
            continue
        model = bitnetcnn.load_checkpoint(path)
        layers = [(n, m.codes().numpy()) for n, m in model.named_modules() if hasattr(m, "codes")]
        measure(path.name, layers, args.repeat)
        whole_file(path.name, None, model, args.repeat, shipped=path)


if __name__ == "__main__":
    main()
