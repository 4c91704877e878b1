"""Every Triton kernel of the worker compiled for an H100/H200 (sm_90) without a GPU, with the
pinned triton's own LLVM and ptxas, in every shape a Llama-2-7B (MHA, 32 heads) or a
Llama-3-8B (GQA, 32/8 heads) step launches: each attention tile shape `launch_shape` gives for
float32 and bfloat16, unsplit and split 16 ways, the fused elementwise kernels, and the LoRA
shrink and expand of each of Llama-3-8B's projections at both tile heights (max rank 64).

`python -m tests.worker.hopper_compile` (TRITON_INTERPRET unset) prints one JSON line per
variant with its registers per thread and stack frame (cuobjdump on the cubin Triton built):
a stack frame means local memory, which is where spilled registers go.
tests/worker/test_triton_attention.py runs it and asserts every frame is empty.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

import torch

HEAD_DIM = 128
DTYPES = {  # name: (torch dtype, Triton pointer type, dot precision)
    "bfloat16": (torch.bfloat16, "*bf16", "tf32"),
    "float32": (torch.float32, "*fp32", "ieee"),
}
POINTER_TYPES = {
    "slot_mapping_ptr": "*i64", "block_tables_ptr": "*i32", "seq_lens_ptr": "*i32",
    "query_start_loc_ptr": "*i32", "counters_ptr": "*i32", "part_acc_ptr": "*fp32",
    "part_max_ptr": "*fp32", "part_sum_ptr": "*fp32", "cos_sin_ptr": "*fp32",
    "slots_ptr": "*i64", "ranks_ptr": "*i32", "bounds_ptr": "*i32", "u_ptr": "*fp32",
}  # fmt: skip
FLOATS = {"scale_log2", "eps"}


def variants() -> list[tuple[str, str, str, dict]]:
    """(kernel module, kernel, dtype, constants and launch options) for every shape."""
    from worker.attention.triton_backend import MAX_SPLITS, TILE_N, launch_shape, store_warps
    from worker.fused_ops import SILU_BLOCK, row_warps

    found = []
    for dtype, (torch_dtype, _, precision) in DTYPES.items():
        for group in (1, 4):  # 7B (MHA); 8B (32 query heads over 8 KV heads)
            shapes = {launch_shape(1 << i, group, HEAD_DIM, torch_dtype) for i in range(8)}
            decode = launch_shape(1, group, HEAD_DIM, torch_dtype)
            for group_pad, block_q, head_dim_pad, num_warps in sorted(shapes):
                for splits in (1, MAX_SPLITS) if (group_pad, block_q) == decode[:2] else (1,):
                    found.append(("worker.attention.triton_kernels", "paged_attention_kernel",
                                  dtype, dict(GROUP=group, GROUP_PAD=group_pad,
                                  HEAD_DIM=HEAD_DIM, HEAD_DIM_PAD=head_dim_pad, BLOCK_SIZE=16,
                                  BLOCK_Q=block_q, TILE_N=TILE_N, PRECISION=precision,
                                  NUM_SPLITS=splits, num_warps=num_warps)))  # fmt: skip
        found.append(("worker.attention.triton_kernels", "store_kv_kernel", dtype,
                      dict(NUM_KV_HEADS=32, KV_HEADS_PAD=32, HEAD_DIM=HEAD_DIM,
                           HEAD_DIM_PAD=HEAD_DIM, BLOCK_SIZE=16,
                           num_warps=store_warps(32, HEAD_DIM))))  # fmt: skip
        for has_delta in (True, False):
            found.append(("worker.fused_kernels", "add_rms_norm_kernel", dtype,
                          dict(DIM=4096, BLOCK=4096, HAS_DELTA=has_delta,
                               num_warps=row_warps(4096))))  # fmt: skip
        for n_kv_heads in (32, 8):
            found.append(("worker.fused_kernels", "rope_store_kernel", dtype,
                          dict(N_HEADS=32, N_KV_HEADS=n_kv_heads, ROTATED_PAD=64,
                               KV_HEADS_PAD=n_kv_heads, HALF=64, HALF_PAD=64,
                               BLOCK_SIZE=16)))  # fmt: skip
        found.append(("worker.fused_kernels", "silu_mul_kernel", dtype,
                      dict(HIDDEN=11008, BLOCK=SILU_BLOCK)))  # fmt: skip
        found += lora_variants(dtype, precision)
    return found


def lora_variants(dtype: str, precision: str) -> list[tuple[str, str, str, dict]]:
    """The adapter kernels at both tile heights, max rank 64, 4 slots, Llama-3-8B's
    in_features 4,096 (wqkv, wo, w13; their slices are no compile-time constant) split as
    the worker splits it; 14,336 (w2) differs only in a loop bound."""
    from worker.lora_triton import BLOCK_K, BLOCK_M_HEIGHTS, BLOCK_N, lora_warps, split_k

    splits = split_k(4096)
    k_per_split = -(-(4096 // BLOCK_K) // splits) * BLOCK_K
    found = []
    for rows in BLOCK_M_HEIGHTS:
        found.append(("worker.lora_kernels", "lora_shrink_kernel", dtype,
                      dict(IN_FEATURES=4096, MAX_RANK=64, NUM_SLOTS=4, NUM_R_BLOCKS=1,
                           K_PER_SPLIT=k_per_split, BLOCK_M=rows, BLOCK_R=64, BLOCK_K=BLOCK_K,
                           PRECISION=precision, num_warps=lora_warps(rows))))  # fmt: skip
        found.append(("worker.lora_kernels", "lora_expand_kernel", dtype,
                      dict(NUM_SLOTS=4, SPLIT_K=splits, BLOCK_M=rows, BLOCK_N=BLOCK_N,
                           BLOCK_R=64, PRECISION=precision,
                           num_warps=lora_warps(rows))))  # fmt: skip
    return found


def compile_one(variant: tuple[str, str, str, dict]) -> dict:
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    module, name, dtype, constants = variant
    fn = getattr(importlib.import_module(module), name)
    options = {key: constants[key] for key in ("num_warps", "num_stages") if key in constants}
    constants = {key: value for key, value in constants.items() if key not in options}
    pointer = DTYPES[dtype][1]
    signature = {
        arg: "constexpr" if arg in constants
        else POINTER_TYPES.get(arg, pointer) if arg.endswith("_ptr")
        else "fp32" if arg in FLOATS else "i32"
        for arg in fn.arg_names
    }  # fmt: skip
    built = compile(ASTSource(fn, signature, constants), target=GPUTarget("cuda", 90, 32),
                    options=options)  # fmt: skip
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(built.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([cuobjdump, "-res-usage", cubin.name], capture_output=True,
                               text=True, check=True).stdout  # fmt: skip
    fields = dict(item.split(":") for item in usage.strip().splitlines()[-1].split())
    shown = {k: v for k, v in constants.items() if k in ("GROUP", "BLOCK_Q", "NUM_SPLITS",
                                                          "N_KV_HEADS", "HAS_DELTA", "BLOCK_M",
                                                          "IN_FEATURES", "SPLIT_K")}
    return {"kernel": name, "dtype": dtype, **shown, "num_warps": built.metadata.num_warps,
            "registers": int(fields["REG"]), "stack": int(fields["STACK"])}  # fmt: skip


def main() -> None:
    with ProcessPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        for result in pool.map(compile_one, variants()):
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
