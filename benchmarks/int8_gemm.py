"""How much faster is integer arithmetic than float on this CPU, in onnxruntime's own kernels?

The deployment path (``bitnetcnn.deploy.compile``) spends almost all its time in onnxruntime's QLinearConv, which
runs on the same MLAS u8 x s8 GEMM as ``MatMulInteger``. Its speed-up over float therefore cannot exceed the ratio
this script prints: u8 x s8 ``MatMulInteger`` against float32 ``MatMul``, one square product, same sizes, same
threads. Where the CPU (or the hypervisor's view of it) gives MLAS no fast int8 kernel, the ratio is about 1.

    python benchmarks/int8_gemm.py --size 1024 --threads 1 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bitnetcnn.cli import positive_int


def _session(op: str, x_type, w: np.ndarray, out_type, n: int, threads: int):
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node(op, ["x", "w"], ["y"])], "gemm",
        [helper.make_tensor_value_info("x", x_type, [n, n])],
        [helper.make_tensor_value_info("y", out_type, [n, n])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _ops_per_s(session, x: np.ndarray, n: int, repeat: int) -> float:
    session.run(None, {"x": x})
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        session.run(None, {"x": x})
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def main() -> None:
    from onnx import TensorProto

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=positive_int, default=1024)
    p.add_argument("--threads", type=positive_int, nargs="+", default=[1, 2])
    p.add_argument("--repeat", type=positive_int, default=5)
    args = p.parse_args()
    n, rng = args.size, np.random.default_rng(0)
    w_float = rng.standard_normal((n, n), dtype=np.float32)
    w_codes = (rng.integers(-1, 2, (n, n)) * 64).astype(np.int8)  # ternary codes as the deploy path stores them
    x_float = rng.standard_normal((n, n), dtype=np.float32)
    x_u8 = rng.integers(0, 256, (n, n)).astype(np.uint8)
    print(f"square products of {n}: onnxruntime MatMul (float32) against MatMulInteger (u8 x s8 -> int32)")
    for threads in args.threads:
        f = _ops_per_s(_session("MatMul", TensorProto.FLOAT, w_float, TensorProto.FLOAT, n, threads), x_float, n,
                       args.repeat)
        i = _ops_per_s(_session("MatMulInteger", TensorProto.UINT8, w_codes, TensorProto.INT32, n, threads), x_u8,
                       n, args.repeat)
        print(f"threads {threads}: float32 {f:7.1f} GFLOP/s   int8 {i:7.1f} GOP/s   int8 / float32 {i / f:5.2f}x")


if __name__ == "__main__":
    main()
