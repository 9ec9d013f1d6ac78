"""Entropy coding of ternary weights: 3-weight symbols, per-layer context statistics, interleaved rANS in numpy.

How it codes (see docs/checkpoints.md for the measurements that chose it):

- Each layer's codes are laid out as kernel rows: a ``k x k`` convolution gives ``O * I`` kernels of ``k`` rows of
  ``k`` weights; a 1x1 convolution or a linear layer gives ``O`` rows of ``I`` weights. A row is cut into chunks
  of 3 weights, and a chunk is one symbol of a 27-letter alphabet (shorter last chunks are padded with a fixed
  digit and get a context of their own, so the padding costs nothing).
- Model ``"row"``: a symbol's probabilities depend on the symbol right above it in the same kernel (the previous
  kernel row); model ``"order0"``: one distribution a layer (and one for its short last chunks). The encoder keeps,
  for each layer, whichever costs fewer bytes counting its frequency table.
- The frequency tables (12-bit, summing to 4096) are stored; symbols are coded with ``N`` interleaved rANS
  streams (32-bit states, 16-bit words) so that decoding is a loop of whole-array numpy operations over ``N``
  streams: one step decodes ``N`` symbols with one table look-up. Row ``r`` of every kernel is decoded in round
  ``r``, after the rows above it, so each round knows all its contexts before it starts.

The decoder checks everything it reads (table sums, word counts, final states) and raises ``ValueError`` on any
inconsistency; the checkpoint reader turns that into :class:`~bitnetcnn.checkpoint.CheckpointError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np

CODER = "rans12-chunk3-rowctx"
PRECISION = 12
M = 1 << PRECISION  # frequencies of one context sum to M
L = 1 << 16  # rANS state lower bound: states live in [L, L << 16)
ALPHABET = 27  # 3 ternary digits a symbol
CHUNK = 3
PAD_CTX = 0  # global context 0: the round padding, a single symbol of frequency M (costs no bits)
MODELS = ("order0", "row")
MAX_STREAMS = 4096
# Decoding budget: at most this many weights a coded byte (0.25 bits a weight; trained layers code at 0.9-1.6
# bits, an all-zero layer at ~0), so a crafted file cannot decode a few kilobytes into gigabytes of weights; beyond
# the first BUDGET_SLACK weights, which any file may hold (16 M: 16 MiB of codes, a ResNet-18 and a half), so that
# a real model of mostly zero codes (a pruned one) loads whatever its size coded (64 K refused one of 90,000).
MAX_WEIGHTS_PER_BYTE = 32
BUDGET_SLACK = 1 << 24
_ARANGE27 = np.arange(ALPHABET)
# symbol -> its three codes as the first three bytes of a little-endian uint32 (one 1-D gather decodes a chunk)
_SYMBOL_CODES = (
    (np.stack([_ARANGE27 % 3, (_ARANGE27 // 3) % 3, _ARANGE27 // 9, np.ones(ALPHABET, np.int64)], axis=1) - 1)
    .astype(np.int8)
    .view("<u4")
    .ravel()
)


@dataclass(frozen=True)
class _Layout:
    """How one layer's codes are cut into symbols: ``kernels x rows x chunks``."""

    shape: Tuple[int, ...]
    kernels: int
    rows: int
    cols: int

    @property
    def chunks(self) -> int:
        return -(-self.cols // CHUNK)

    @property
    def numel(self) -> int:
        return self.kernels * self.rows * self.cols

    def contexts(self, model: str) -> int:
        """Number of (layer-local) contexts ``model`` uses: two chunk classes (full, short last) times rows."""
        if model == "order0" or self.rows == 1:
            return 2
        return 2 * (1 + (self.rows - 1) * ALPHABET)


def layout(shape: Sequence[int]) -> _Layout:
    shape = tuple(int(d) for d in shape)
    numel = math.prod(shape)
    if len(shape) >= 3 and math.prod(shape[2:]) > 1:
        return _Layout(shape, shape[0] * shape[1], math.prod(shape[2:-1]), shape[-1])
    if len(shape) >= 2:
        return _Layout(shape, shape[0], 1, numel // shape[0] if shape[0] else 0)
    return _Layout(shape, 1 if numel else 0, 1, numel)


def _symbols(codes: np.ndarray, lay: _Layout) -> np.ndarray:
    """int8 codes -> uint8 symbols ``[kernels, rows, chunks]`` (digit = code + 1, little-endian base 3)."""
    digits = (codes.reshape(lay.kernels, lay.rows, lay.cols).astype(np.int16) + 1).astype(np.uint8)
    pad = lay.chunks * CHUNK - lay.cols
    if pad:
        digits = np.concatenate([digits, np.zeros((lay.kernels, lay.rows, pad), np.uint8)], axis=2)
    d = digits.reshape(lay.kernels, lay.rows, lay.chunks, CHUNK)
    return d[..., 0] + 3 * d[..., 1] + 9 * d[..., 2]


def _codes(symbols: np.ndarray, lay: _Layout) -> np.ndarray:
    """Inverse of :func:`_symbols`: int8 codes in the layer's shape."""
    d = np.take(_SYMBOL_CODES, symbols).view(np.int8).reshape(lay.kernels, lay.rows, lay.chunks, 4)[..., :CHUNK]
    d = d.reshape(lay.kernels, lay.rows, lay.chunks * CHUNK)
    return np.ascontiguousarray(d[:, :, : lay.cols]).reshape(lay.shape)


def _local_context(lay: _Layout, model: str, row: int, above: np.ndarray | None) -> np.ndarray:
    """Layer-local context of every symbol of ``row``: ``[kernels, chunks]`` int64."""
    cls = np.zeros(lay.chunks, np.int64)
    if lay.cols % CHUNK:
        cls[-1] = 1
    if model == "order0" or lay.rows == 1:
        return np.broadcast_to(cls, (lay.kernels, lay.chunks))
    per_class = 1 + (lay.rows - 1) * ALPHABET
    if row == 0:
        return np.broadcast_to(cls * per_class, (lay.kernels, lay.chunks))
    return cls * per_class + 1 + (row - 1) * ALPHABET + above.astype(np.int64)


def quantize_frequencies(counts: np.ndarray) -> np.ndarray:
    """Counts ``[n, 27]`` -> frequencies summing to ``M`` per row, nonzero exactly where the count is nonzero."""
    counts = counts.astype(np.float64)
    total = counts.sum(axis=1, keepdims=True)
    freq = np.where(counts > 0, np.maximum(1, np.round(counts * M / np.maximum(total, 1))), 0).astype(np.int64)
    empty = total[:, 0] == 0
    freq[empty, 0] = M
    diff = M - freq.sum(axis=1)
    top = freq.argmax(axis=1)
    freq[np.arange(len(freq)), top] += diff
    return freq


def _table_bytes(freq: np.ndarray) -> float:
    """A rough size of a frequency table after the container's compression (for the model choice only)."""
    return 1.5 * np.count_nonzero(freq) + 0.1 * freq.size + 4


def _cost_bytes(counts: np.ndarray) -> float:
    used = counts.sum(axis=1) > 0
    freq = quantize_frequencies(counts[used])
    c = counts[used]
    with np.errstate(divide="ignore"):
        bits = -(c * np.where(c > 0, np.log2(np.maximum(freq, 1) / M), 0)).sum()
    return bits / 8 + _table_bytes(freq)


def _choose_streams(total_symbols: int) -> int:
    n = 1
    while n * 2 <= MAX_STREAMS and n * 2 * 512 <= total_symbols:
        n *= 2
    return n


def encode_ternary(layers: Sequence[Tuple[str, np.ndarray]], streams: int | None = None,
                   model: str | None = None) -> Tuple[Dict[str, np.ndarray], dict]:
    """Code ``[(name, int8 codes)]``; return the byte arrays to store and the JSON-able description to keep.

    ``streams`` (rANS streams, default: by size, at most 4096) and ``model`` (force ``"order0"`` or ``"row"``
    for every layer instead of choosing by cost) are for measurements.
    """
    lays = [layout(c.shape) for _, c in layers]
    syms = [_symbols(np.asarray(c), lay) for (_, c), lay in zip(layers, lays)]
    # Choose each layer's model by its cost (data + table).
    models = []
    for lay, sym in zip(lays, syms):
        best, best_cost = "order0", None
        for candidate in MODELS if model is None else (model,):
            if candidate == "row" and lay.rows == 1:
                continue
            n_ctx = lay.contexts(candidate)
            counts = np.zeros((n_ctx, ALPHABET), np.int64)
            for r in range(lay.rows):
                ctx = _local_context(lay, candidate, r, sym[:, r - 1] if r else None)
                counts += np.bincount((ctx * ALPHABET + sym[:, r]).ravel(), minlength=n_ctx * ALPHABET).reshape(
                    n_ctx, ALPHABET
                )
            cost = _cost_bytes(counts)
            if best_cost is None or cost < best_cost:
                best, best_cost = candidate, cost
        models.append(best)
    offsets = _offsets(lays, models)
    n_ctx_total = offsets[-1]
    total_symbols = sum(lay.kernels * lay.rows * lay.chunks for lay in lays)
    n = int(streams) if streams else _choose_streams(total_symbols)
    # Global contexts and symbols, round by round (row r of every kernel), each round padded to a multiple of n.
    ctx_rounds, sym_rounds = [], []
    for r in range(max((lay.rows for lay in lays), default=0)):
        cs, ss = [], []
        for i, (lay, sym) in enumerate(zip(lays, syms)):
            if r < lay.rows and lay.kernels:
                cs.append((offsets[i] + _local_context(lay, models[i], r, sym[:, r - 1] if r else None)).ravel())
                ss.append(sym[:, r].ravel())
        c, s = np.concatenate(cs), np.concatenate(ss).astype(np.int64)
        pad = (-len(c)) % n
        ctx_rounds.append(np.concatenate([c, np.full(pad, PAD_CTX, np.int64)]))
        sym_rounds.append(np.concatenate([s, np.zeros(pad, np.int64)]))
    ctx_all = np.concatenate(ctx_rounds) if ctx_rounds else np.zeros(0, np.int64)
    sym_all = np.concatenate(sym_rounds) if sym_rounds else np.zeros(0, np.int64)
    counts = np.bincount(ctx_all * ALPHABET + sym_all, minlength=n_ctx_total * ALPHABET).reshape(n_ctx_total, ALPHABET)
    used = counts.sum(axis=1) > 0
    used[PAD_CTX] = False  # implicit
    freq = np.zeros((n_ctx_total, ALPHABET), np.int64)
    freq[PAD_CTX, 0] = M
    freq[used] = quantize_frequencies(counts[used])
    start = np.concatenate([np.zeros((n_ctx_total, 1), np.int64), np.cumsum(freq, axis=1)[:, :-1]], axis=1)
    idx = ctx_all * ALPHABET + sym_all
    words, states = _rans_encode(start.ravel()[idx].reshape(-1, n), freq.ravel()[idx].reshape(-1, n), n)
    arrays = {
        "words": words.astype("<u2").view(np.uint8),
        "states": states.astype("<u4").view(np.uint8),
        "contexts": np.packbits(used[1:]),
        "freqs": freq[used].astype("<u2").view(np.uint8).ravel(),
    }
    meta = {
        "coder": CODER,
        "streams": n,
        "layers": [{"name": name, "shape": list(lay.shape), "model": m} for (name, _), lay, m in zip(layers, lays, models)],
    }
    return arrays, meta


def _offsets(lays: Sequence[_Layout], models: Sequence[str]) -> List[int]:
    """Global context offset of each layer (global context 0 is the padding); the last entry is the total."""
    out = [1]
    for lay, model in zip(lays, models):
        out.append(out[-1] + lay.contexts(model))
    return out


def _rans_encode(start: np.ndarray, freq: np.ndarray, n: int) -> Tuple[np.ndarray, np.ndarray]:
    """Encode ``[T, n]`` symbols given as (start, frequency) in reverse; words come out in decoding order."""
    x = np.full(n, L, np.uint64)
    out: List[np.ndarray] = [np.zeros(0, np.uint16)] * len(start)
    shift = np.uint64(PRECISION)
    for t in range(len(start) - 1, -1, -1):
        f = freq[t].astype(np.uint64)
        idx = np.flatnonzero(x >= (f << np.uint64(32 - PRECISION)))
        if idx.size:
            out[t] = (x[idx] & np.uint64(0xFFFF)).astype(np.uint16)
            x[idx] >>= np.uint64(16)
        q = x // f
        x = (q << shift) + (x - q * f) + start[t].astype(np.uint64)
    words = np.concatenate(out) if out else np.zeros(0, np.uint16)
    return words, x.astype(np.uint32)


def check_budget(weights: int, coded_bytes: int) -> None:
    """Refuse to decode more weights than ``coded_bytes`` can plausibly hold (``ValueError``)."""
    if weights > coded_bytes * MAX_WEIGHTS_PER_BYTE + BUDGET_SLACK:
        raise ValueError(f"the coded layers declare {weights:,} weights in {coded_bytes:,} coded bytes, over "
                         f"{MAX_WEIGHTS_PER_BYTE} a byte (real layers: 5-9): not decoded")


def _check_streams(symbols: int, n: int) -> None:
    """Refuse a stream count far below the encoder's (one decoding step a symbol would take minutes)."""
    if n < MAX_STREAMS and symbols > n * 4096:
        raise ValueError(f"{symbols:,} symbols in {n} rANS streams (the encoder uses {_choose_streams(symbols)}): "
                         "not decoded")


def _as_dtype(raw: np.ndarray, dtype: str, what: str) -> np.ndarray:
    raw = np.ascontiguousarray(raw, dtype=np.uint8).ravel()
    size = np.dtype(dtype).itemsize
    if raw.size % size:
        raise ValueError(f"ternary {what}: {raw.size} bytes is not a whole number of {dtype} items")
    return raw.view(dtype)


def decode_ternary(arrays: Dict[str, np.ndarray], meta: dict) -> Dict[str, np.ndarray]:
    """Inverse of :func:`encode_ternary`: ``{name: int8 codes}``. Raises ``ValueError`` on inconsistent data."""
    if not isinstance(meta, dict) or meta.get("coder") != CODER:
        raise ValueError(f"unknown ternary coder {meta.get('coder') if isinstance(meta, dict) else meta!r}")
    n = meta.get("streams")
    specs = meta.get("layers")
    if not isinstance(n, int) or not 1 <= n <= 1 << 20 or not isinstance(specs, list):
        raise ValueError("bad ternary coder description")
    names, lays, models = [], [], []
    for spec in specs:
        if not isinstance(spec, dict) or spec.get("model") not in MODELS or not isinstance(spec.get("name"), str):
            raise ValueError("bad ternary layer description")
        shape = spec.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and 0 <= d < 1 << 31 for d in shape):
            raise ValueError(f"bad shape for ternary layer {spec['name']!r}")
        lay = layout(shape)
        if lay.numel > 1 << 34:
            raise ValueError(f"ternary layer {spec['name']!r} is implausibly large")
        names.append(spec["name"])
        lays.append(lay)
        models.append(spec["model"])
    for key in ("words", "states", "contexts", "freqs"):
        if key not in arrays:
            raise ValueError(f"ternary data lacks {key!r}")
    check_budget(sum(lay.numel for lay in lays), sum(np.asarray(a).nbytes for a in arrays.values()))
    _check_streams(sum(lay.kernels * lay.rows * lay.chunks for lay in lays), n)
    words = _as_dtype(arrays["words"], "<u2", "words").astype(np.uint32)
    states = _as_dtype(arrays["states"], "<u4", "states").astype(np.uint32)
    offsets = _offsets(lays, models)
    n_ctx_total = offsets[-1]
    used = np.unpackbits(np.ascontiguousarray(arrays["contexts"], dtype=np.uint8).ravel())
    if used.size < n_ctx_total - 1 or used[n_ctx_total - 1 :].any():
        raise ValueError("ternary context mask does not match the layers")
    used = np.concatenate([[False], used[: n_ctx_total - 1].astype(bool)])
    freqs = _as_dtype(arrays["freqs"], "<u2", "freqs").astype(np.int64)
    if freqs.size != int(used.sum()) * ALPHABET:
        raise ValueError("ternary frequency table does not match the context mask")
    freqs = freqs.reshape(-1, ALPHABET)
    if freqs.size and ((freqs.sum(axis=1) != M).any() or (freqs > M).any()):
        raise ValueError("ternary frequency table is corrupt (a context does not sum to 4096)")
    if states.size != n:
        raise ValueError(f"ternary data holds {states.size} stream states, expected {n}")
    if n and ((states < L).any()):
        raise ValueError("ternary stream state out of range")
    lut = _lookup_table(freqs)
    remap = np.zeros(n_ctx_total, np.uint32)  # global context -> row of the look-up table (0: padding)
    remap[used] = np.arange(1, len(freqs) + 1, dtype=np.uint32)
    symbols = [np.empty((lay.kernels, lay.rows, lay.chunks), np.uint8) for lay in lays]
    x = states.copy()
    ptr = 0
    for r in range(max((lay.rows for lay in lays), default=0)):
        parts = []
        for i, lay in enumerate(lays):
            if r < lay.rows and lay.kernels:
                ctx = offsets[i] + _local_context(lay, models[i], r, symbols[i][:, r - 1] if r else None)
                parts.append((i, ctx.ravel()))
        if not parts:
            continue
        ctx = np.concatenate([c for _, c in parts])
        pad = (-len(ctx)) % n
        base = remap[np.concatenate([ctx, np.full(pad, PAD_CTX, np.int64)])] << np.uint32(PRECISION)
        out, x, ptr = _rans_decode(base.reshape(-1, n), lut, words, x, ptr)
        out = out.ravel()
        pos = 0
        for i, c in parts:
            symbols[i][:, r] = out[pos : pos + len(c)].reshape(lays[i].kernels, lays[i].chunks)
            pos += len(c)
    if ptr != len(words) or (n and (x != L).any()):
        raise ValueError("ternary data is corrupt (the rANS streams do not end where they began)")
    return {name: _codes(sym, lay) for name, sym, lay in zip(names, symbols, lays)}


def _lookup_table(freqs: np.ndarray) -> np.ndarray:
    """``lut[row * M + slot] = symbol << 25 | freq << 12 | (slot - start)``; row 0 is the padding context."""
    lut = np.empty((len(freqs) + 1, M), np.uint32)
    slot = np.arange(M, dtype=np.uint32)
    lut[0] = (np.uint32(M) << np.uint32(PRECISION)) | slot  # symbol 0 with frequency M: x stays as it is
    if len(freqs):
        flat = freqs.ravel()
        start = (np.cumsum(freqs, axis=1) - freqs).astype(np.uint32).ravel()
        head = (_ARANGE27.astype(np.uint32) << np.uint32(25)) | (freqs.astype(np.uint32) << np.uint32(PRECISION))
        lut[1:] = (np.repeat(head.ravel(), flat) | (np.tile(slot, len(freqs)) - np.repeat(start, flat))).reshape(
            len(freqs), M
        )
    return lut.ravel()


def _rans_decode(base: np.ndarray, lut: np.ndarray, words: np.ndarray, x: np.ndarray, ptr: int):
    """Decode ``base.shape`` symbols (``base`` = context * M) from the streams in state ``x``."""
    steps, n = base.shape
    out = np.empty((steps, n), np.uint8)
    mask, shift, low = np.uint32(M - 1), np.uint32(PRECISION), np.uint32(L)
    fmask, smask, s16, s25 = np.uint32(0x1FFF), np.uint32(M - 1), np.uint32(16), np.uint32(25)
    n_words = len(words)
    for t in range(steps):
        v = lut[base[t] + (x & mask)]
        x = (x >> shift) * ((v >> shift) & fmask) + (v & smask)
        idx = np.flatnonzero(x < low)
        k = idx.size
        if k:
            if ptr + k > n_words:
                raise ValueError("ternary data is truncated (the rANS streams ask for more words than stored)")
            x[idx] = (x[idx] << s16) | words[ptr : ptr + k]
            ptr += k
        out[t] = v >> s25
    return out, x, ptr
