"""Benchmark: fir's generated CUDA kernels against PyTorch (cuBLAS and torch's own kernels) on one GPU.

Cases, each a small .fir program compiled by the whole pipeline (fuse, schedule, plan-memory, codegen) and run
by the CUDA backend with its inputs already in the arena (the host copies are left out of the timing):
- matmul 4096^3 in f32 and bf16, against torch.matmul (cuBLAS; TF32 off for f32);
- a fused elementwise chain (bias, scale, tanh-GELU) and, against a device-to-device copy of the same bytes, its
  bandwidth; softmax and layernorm over 8192 x 8192 f32 against torch.softmax and torch.nn.functional.layer_norm,
  with their bandwidth against the copy too;
- the GPT block forward of examples/gpt_block.fir against the same program run op by op in torch eager.
Times are medians of --repeat runs bracketed by CUDA events on the legacy default stream (which orders every
stream fir uses), after --warmup runs. The JSON has the GPU, driver, torch and CUDA versions.

With --compile-only (no GPU needed) every case is compiled and its kernels built with nvcc for sm_90, which
checks the code paths and reports registers and spills.

Usage: python bench/cuda_bench.py [--out bench/results/cuda_bench.json] [--repeat 50] [--warmup 5] [--compile-only]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fir.codegen.cuda_program import module_code  # noqa: E402
from fir.codegen.nvcc import ARCH, compile_cuda, find_nvcc  # noqa: E402
from fir.compile import compile_plan  # noqa: E402
from fir.syntax.frontend import parse_source  # noqa: E402
from fir.runtime.inputs import random_inputs  # noqa: E402
from fir.runtime.interpreter import find_function  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def matmul_program(n: int, dt: str) -> str:
    """C = A @ B, n x n x n."""
    t = f"tensor<{n}x{n}x{dt}>"
    return f"func.func @mm(%a: {t}, %b: {t}) -> {t} {{\n  %c = flow.matmul %a, %b\n  func.return %c\n}}\n"


def chain_program(rows: int, cols: int) -> str:
    """gelu(x * 0.5 + b): three elementwise ops that fuse into one kernel."""
    t = f"tensor<{rows}x{cols}xf32>"
    return (f"func.func @chain(%x: {t}, %b: tensor<{cols}xf32>) -> {t} {{\n"
            "  %half = flow.fill {value = 0.5} : tensor<f32>\n"
            "  %s = flow.mul %x, %half\n  %h = flow.add %s, %b\n  %y = flow.gelu %h {approximate = \"tanh\"}\n"
            "  func.return %y\n}\n")


def softmax_program(rows: int, cols: int) -> str:
    t = f"tensor<{rows}x{cols}xf32>"
    return f"func.func @sm(%x: {t}) -> {t} {{\n  %y = flow.softmax %x\n  func.return %y\n}}\n"


def layernorm_program(rows: int, cols: int) -> str:
    t, v = f"tensor<{rows}x{cols}xf32>", f"tensor<{cols}xf32>"
    return (f"func.func @ln(%x: {t}, %g: {v}, %b: {v}) -> {t} {{\n  %y = flow.layernorm %x, %g, %b\n"
            "  func.return %y\n}\n")


def gpt_block_program() -> str:
    with open(os.path.join(ROOT, "examples", "gpt_block.fir"), encoding="utf-8") as f:
        return f.read()


CASES: dict[str, Callable[[], str]] = {
    "matmul_f32_4096": lambda: matmul_program(4096, "f32"),
    "matmul_bf16_4096": lambda: matmul_program(4096, "bf16"),
    "fused_chain_8192x8192": lambda: chain_program(8192, 8192),
    "softmax_8192x8192": lambda: softmax_program(8192, 8192),
    "layernorm_8192x8192": lambda: layernorm_program(8192, 8192),
    "gpt_block_forward": gpt_block_program,
}


def compile_case(text: str, name: str):
    """(module, its plans, entry function)."""
    module = parse_source(text, f"{name}.fir")
    func = find_function(module, None)
    return module, compile_plan(module), func


def compile_only() -> dict[str, Any]:
    """Build every case's kernels with nvcc: kernel count and the largest register count, and spills."""
    out = {}
    for name, make in CASES.items():
        _, planned, _ = compile_case(make(), name)
        for _, code in module_code(planned):
            reports = compile_cuda(code.source())
            out[name] = {"kernels": len(code.kernels),
                         "max_registers": max(r.registers for r in reports.values()),
                         "spill_bytes": sum(r.spill_stores + r.spill_loads for r in reports.values())}
    return out


# ----------------------------------------------------------------------------------------------- torch eager
def torch_eager(func, args: list) -> list:
    """Run a logical fir function op by op with torch (what PyTorch eager would do for the same program)."""
    import torch
    import torch.nn.functional as F

    from fir.dialects.base import to_tt

    dt = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16, "i32": torch.int32,
          "i64": torch.int64, "i1": torch.bool}
    env = dict(zip(func.body.block.args, args))
    for op in func.body.block.ops:
        if op.name == "func.return":
            return [env[v] for v in op.operands]
        ins = [env[v] for v in op.operands]
        a = op.attr_values()
        shape, odt = to_tt(op.results[0].type)
        n = op.name[5:]
        unary = {"neg": torch.neg, "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt, "rsqrt": torch.rsqrt,
                 "tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid}
        binary = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "max": torch.maximum,
                  "min": torch.minimum, "pow": torch.pow}
        if n in unary:
            y = unary[n](ins[0])
        elif n in binary:
            y = binary[n](*ins)
        elif n == "gelu":
            y = F.gelu(ins[0], approximate=a["approximate"])
        elif n == "cast":
            y = ins[0].to(dt[odt])
        elif n == "matmul":
            x, w = ins
            y = torch.matmul(x.transpose(-1, -2) if a["transpose_a"] else x,
                             w.transpose(-1, -2) if a["transpose_b"] else w)
        elif n in ("reduce_sum", "reduce_mean", "reduce_max"):
            fn = {"reduce_sum": torch.sum, "reduce_mean": torch.mean, "reduce_max": torch.amax}[n]
            y = fn(ins[0], dim=tuple(a["axes"]), keepdim=a["keepdims"])
        elif n == "softmax":
            y = torch.softmax(ins[0], dim=a["axis"])
        elif n == "layernorm":
            y = F.layer_norm(ins[0], ins[1].shape, ins[1], ins[2], a["eps"])
        elif n == "transpose":
            y = ins[0].permute(*a["perm"]).contiguous()
        elif n == "reshape":
            y = ins[0].reshape(shape)
        elif n == "broadcast_to":
            y = ins[0].expand(shape).contiguous()
        elif n == "concat":
            y = torch.cat(ins, dim=a["axis"])
        elif n == "slice":
            y = ins[0][tuple(slice(s, e, st) for s, e, st in zip(a["start"], a["limit"], a["stride"]))].contiguous()
        elif n == "fill":
            y = torch.full(shape, a["value"], dtype=dt[odt], device="cuda")
        elif n == "iota":
            ax = a["axis"] % len(shape)
            r = torch.arange(shape[ax], device="cuda").to(dt[odt])
            y = r.reshape([-1 if i == ax else 1 for i in range(len(shape))]).expand(shape).contiguous()
        elif n == "gather":
            t, idx = ins
            ax = a["axis"] % t.dim()
            y = torch.index_select(t, ax, idx.reshape(-1).long()).reshape(shape)
        elif n == "constant":
            y = torch.as_tensor(np.asarray(a["value"]), device="cuda").to(dt[odt]).expand(shape).contiguous()
        elif n == "cross_entropy":
            logits, labels = ins
            y = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1).long(),
                                reduction=a["reduction"]).reshape(shape).to(dt[odt])
        else:  # flow.fused and the comm/plan ops never appear in a logical program
            raise ValueError(f"torch_eager runs logical programs; '{op.name}' is not a logical flow op")
        env[op.results[0]] = y
    raise AssertionError("no func.return")


# ----------------------------------------------------------------------------------------------- timing
def time_cuda(fn: Callable[[], None], repeat: int, warmup: int) -> float:
    """Median seconds of fn() between two events on the legacy default stream (which waits for, and is waited
    for by, every blocking stream, so it brackets work on all of fir's streams)."""
    import pycuda.driver as drv

    for _ in range(warmup):
        fn()
    drv.Context.synchronize()
    times = []
    for _ in range(repeat):
        start, end = drv.Event(), drv.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(end.time_since(start) / 1e3)
    return statistics.median(times)


def run_gpu(repeat: int, warmup: int) -> dict[str, Any]:
    import pycuda.autoprimaryctx  # noqa: F401
    import pycuda.driver as drv
    import torch

    from fir.runtime.cuda_backend import CudaExecutable

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    results: dict[str, Any] = {}
    copy_src = torch.empty(8192 * 8192, dtype=torch.float32, device="cuda")
    copy_dst = torch.empty_like(copy_src)
    t_copy = time_cuda(lambda: copy_dst.copy_(copy_src), repeat, warmup)
    copy_bw = 2 * copy_src.numel() * 4 / t_copy
    results["d2d_copy_256MiB"] = {"seconds": t_copy, "bandwidth_GBps": copy_bw / 1e9}
    tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    for name, make in CASES.items():
        module, planned, func = compile_case(make(), name)
        inputs = random_inputs(func, 0)
        exe = CudaExecutable(planned, func.sym_name.data, inputs)
        exe.step()
        exe.check_status()
        t_fir = time_cuda(lambda: exe.issue(copies=False), repeat, warmup)
        targs = [torch.from_numpy(np.asarray(x, np.float32)).to("cuda").to(tdt.get(str(x.dtype), torch.float32))
                 if x.dtype.kind == "f" or str(x.dtype) == "bfloat16"
                 else torch.from_numpy(x).to("cuda") for x in inputs]
        if name.startswith("matmul"):
            a, b = targs
            ref: Callable[[], Any] = lambda a=a, b=b: torch.matmul(a, b)  # noqa: E731
        elif name.startswith("softmax"):
            ref = lambda x=targs[0]: torch.softmax(x, dim=-1)  # noqa: E731
        elif name.startswith("layernorm"):
            x, g, b = targs
            ref = lambda x=x, g=g, b=b: torch.nn.functional.layer_norm(x, g.shape, g, b)  # noqa: E731
        else:
            ref = lambda targs=targs, func=func: torch_eager(func, targs)  # noqa: E731
        t_torch = time_cuda(ref, repeat, warmup)
        out = exe.outputs()[0]
        want = ref()
        want = want[0] if isinstance(want, list) else want
        err = float(np.max(np.abs(np.asarray(out, np.float64) - want.float().cpu().numpy().astype(np.float64))))
        entry: dict[str, Any] = {"fir_seconds": t_fir, "torch_seconds": t_torch, "fir_vs_torch": t_torch / t_fir,
                                 "max_abs_error_vs_torch": err, "kernels": sum(len(c.kernels) for c in
                                                                               exe.lowered.codes.values())}
        if name.startswith("matmul"):
            n = 4096
            entry["fir_TFLOPs"] = 2 * n**3 / t_fir / 1e12
            entry["torch_TFLOPs"] = 2 * n**3 / t_torch / 1e12
        elif not name.startswith("gpt"):
            moved = sum(x.nbytes for x in inputs) + out.nbytes
            entry["fir_bandwidth_GBps"] = moved / t_fir / 1e9
            entry["fir_vs_copy_bandwidth"] = moved / t_fir / copy_bw
        results[name] = entry
        print(name, json.dumps(entry))
    dev = drv.Context.get_device()
    results["machine"] = {"gpu": dev.name(), "driver": drv.get_driver_version(), "torch": torch.__version__,
                          "torch_cuda": torch.version.cuda}
    return results


def main() -> int:
    """Run the benchmark and write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "cuda_bench.json"))
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--compile-only", action="store_true", help="build the kernels with nvcc; needs no GPU")
    args = p.parse_args()
    record: dict[str, Any] = {"benchmark": "cuda_kernels", "date": datetime.datetime.now().astimezone().isoformat(),
                              "host": {"platform": platform.platform(), "python": platform.python_version()}}
    if args.compile_only:
        nvcc = find_nvcc()
        version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout if nvcc else ""
        record["host"].update({"gpu": None, "nvcc": version.strip().splitlines()[-1] if version else None,
                               "arch": ARCH, "cpus": os.cpu_count()})
        record["compile_only"] = compile_only()
    else:
        record["results"] = run_gpu(args.repeat, args.warmup)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
