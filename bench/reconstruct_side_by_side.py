#!/usr/bin/env python3
"""Side-by-side timing of key reconstruction on one GPU, in one run:

  torch   : (A @ B) then HF-style rotate_half RoPE (cos/sin from position ids, as a model computes them)
  cuBLAS  : torch.matmul(A, B) alone (no RoPE) -- the lower bound a fused kernel is measured against
  xkv     : the fused reconstruct+RoPE kernel, timed by the xkv_reconstruct_cli executable

Every timing is the median of CUDA-event timings after warm-up, with L2 evicted before each launch.
Gathered shapes time torch's index_select + matmul + RoPE against xkv's gathered kernel.

  python3 bench/reconstruct_side_by_side.py --cli build/bench/xkv_reconstruct_cli
"""
import argparse
import re
import statistics
import subprocess

import torch

PEAK_BF16_TFLOPS = 785.0  # measured bf16 matrix rate of the H200 (8192^3, random data)


def median_us(fn, iters, flush):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        flush.zero_()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) * 1000.0)
    return statistics.median(times)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def torch_path(a, b, positions, heads, d, inv_freq):
    k = (a @ b).view(a.shape[0], heads, d)
    freqs = positions[:, None].float() * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(k.dtype)[:, None, :], emb.sin().to(k.dtype)[:, None, :]
    return k * cos + rotate_half(k) * sin


def run_cli(cli, n, r, heads, d, dtype, gather, iters):
    cmd = [cli, "--n", str(n), "--r", str(r), "--heads", str(heads), "--d", str(d), "--dtype", dtype,
           "--gather", str(gather), "--iters", str(iters)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return {k: float(v) for k, v in re.findall(r"(\w+_us|\w+_tflops)=([0-9.]+)", out)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True, help="path of the xkv_reconstruct_cli executable")
    ap.add_argument("--iters", type=int, default=30)
    args = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.device("cuda")
    flush = torch.empty(4 * torch.cuda.get_device_properties(0).L2_cache_size, dtype=torch.uint8, device=dev)

    # (n, r, heads, d, dtype, gathered tokens)
    shapes = [
        (131072, 512, 8, 128, "bf16", 0),
        (8192, 512, 8, 128, "bf16", 0),
        (32768, 512, 8, 128, "bf16", 0),
        (131072, 128, 8, 128, "bf16", 0),
        (131072, 256, 8, 128, "bf16", 0),
        (131072, 768, 8, 128, "bf16", 0),
        (131072, 512, 16, 64, "bf16", 0),
        (131072, 512, 3, 64, "bf16", 0),
        (131072, 512, 8, 128, "fp16", 0),
        (131072, 512, 8, 128, "bf16", 2048),
    ]
    rows = []
    for n, r, heads, d, dtype, gather in shapes:
        tdtype = torch.bfloat16 if dtype == "bf16" else torch.float16
        a = torch.randn(n, r, device=dev, dtype=tdtype)
        b = torch.randn(r, heads * d, device=dev, dtype=tdtype) / r ** 0.5
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, d, 2, device=dev, dtype=torch.float32) / d))
        if gather:
            idx = torch.randint(0, n, (gather,), device=dev)
            t_torch = median_us(lambda: torch_path(a.index_select(0, idx), b, idx, heads, d, inv_freq), args.iters, flush)
            t_mm = median_us(lambda: torch.matmul(a.index_select(0, idx), b), args.iters, flush)
            m = gather
        else:
            pos = torch.arange(n, device=dev)
            t_torch = median_us(lambda: torch_path(a, b, pos, heads, d, inv_freq), args.iters, flush)
            out = torch.empty(n, heads * d, device=dev, dtype=tdtype)
            t_mm = median_us(lambda: torch.matmul(a, b, out=out), args.iters, flush)
            m = n
        del a, b
        torch.cuda.empty_cache()
        ours = run_cli(args.cli, n, r, heads, d, dtype, gather, args.iters)
        flops = 2.0 * m * r * heads * d
        rows.append((n, gather, r, heads, d, dtype, t_torch, t_mm, ours["xkv_us"], ours.get("cublas_us", 0.0), flops))

    print()
    print("| n | gathered | r | H x d | dtype | torch A@B+RoPE (us) | torch.matmul alone (us) | xkv fused (us) "
          "| xkv / matmul | xkv TFLOP/s | % of 785 | torch / xkv | cuBLAS in CLI (us) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n, gather, r, heads, d, dtype, t_torch, t_mm, t_xkv, t_cli_cublas, flops in rows:
        tflops = flops / t_xkv * 1e-6
        print(f"| {n} | {gather or '-'} | {r} | {heads}x{d} | {dtype} | {t_torch:.1f} | {t_mm:.1f} | {t_xkv:.1f} "
              f"| {t_xkv / t_mm:.3f} | {tflops:.0f} | {100 * tflops / PEAK_BF16_TFLOPS:.0f}% | {t_torch / t_xkv:.1f}x "
              f"| {t_cli_cublas:.1f} |")


if __name__ == "__main__":
    main()
