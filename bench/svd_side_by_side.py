#!/usr/bin/env python3
"""Side-by-side timing of truncated SVDs of one layer group on the GPU, on the same bf16 matrices.

  python3 bench/svd_side_by_side.py --cli build/bench/xkv_svd_cli [--n 32768 131072] [--d 4096] [--rank 512]

For each shape it makes one seeded matrix X = Z diag(s) M (Z, M Gaussian, s_j = (1+j)^-decay) in
bf16, computes the Eckart-Young optimum from the fp64 Gram spectrum, and times (CUDA events,
median after warm-up):
  torch.linalg.svd       (fp32, what the xKV reference code calls)
  torch.svd_lowrank      (fp32, q = r + oversampling, niter = power iterations)
  torch Gram + eigh      (fp32 X^T X, torch.linalg.eigh = cuSOLVER syevd)
  xkv exact              (xkv_svd_cli --method exact: bf16 Gram + cusolverDnXsyevd)
  xkv fast               (xkv_svd_cli --method subspace: subspace iteration at rank r, the default)
  xkv randomized         (xkv_svd_cli --method randomized: oversampled, with a Rayleigh-Ritz eigensolve)
and prints time, ratio to xkv fast, and err/opt = ||X - A B||_F / sqrt(sum_{i>r} s_i^2).
--variants adds more subspace runs with other flags ('q4=--power-iterations 4').
"""
import argparse
import os
import subprocess
import sys
import tempfile

import torch


def timed(fn, reps, warmup=1):
    for _ in range(warmup):
        out = fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    times.sort()
    return times[len(times) // 2], out


def make_matrix(n, d, decay, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    s = (torch.arange(d, device="cuda", dtype=torch.float32) + 1.0) ** (-decay)
    z = torch.randn(n, d, device="cuda", generator=g) * s
    m = torch.randn(d, d, device="cuda", generator=g) / d**0.5
    return (z @ m).to(torch.bfloat16)


def squared_error(x, a, b, chunk=8192):
    """||X - A B||^2 in fp32 chunks (A: n x r, B: r x D)."""
    total = 0.0
    for t in range(0, x.shape[0], chunk):
        diff = x[t:t + chunk].float() - a[t:t + chunk].float() @ b.float()
        total += float(diff.double().pow(2).sum())
    return total


def run_cli(cli, path, n, d, layers, heads, head_dim, rank, method, iters, workdir, extra):
    a_path, b_path = os.path.join(workdir, "a.bin"), os.path.join(workdir, "b.bin")
    cmd = [cli, "--in", path, "--n", str(n), "--layers", str(layers), "--heads", str(heads), "--head-dim",
           str(head_dim), "--rank", str(rank), "--method", method, "--iters", str(iters), "--out-a", a_path,
           "--out-b", b_path] + extra
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()
    fields = dict(kv.split("=") for kv in out.split())
    a = torch.from_file(a_path, dtype=torch.bfloat16, size=n * rank).view(n, rank).cuda()
    bl = torch.from_file(b_path, dtype=torch.bfloat16, size=d * rank).view(layers, rank, heads * head_dim).cuda()
    b = torch.cat(list(bl), dim=1)  # [B_1 | ... | B_G]
    return float(fields["median_ms"]), a, b, out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cli", required=True)
    p.add_argument("--n", type=int, nargs="+", default=[32768, 131072])
    p.add_argument("--d", type=int, default=4096)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--rank", type=int, default=512)
    p.add_argument("--oversampling", type=int, default=64)
    p.add_argument("--power-iterations", type=int, default=2, help="torch.svd_lowrank and xkv randomized")
    p.add_argument("--fast-power-iterations", type=int, default=4,
                   help="q of xkv fast over the sketches or with plain Gram rounds (the library default)")
    p.add_argument("--decay", type=float, default=0.6)
    p.add_argument("--seed", type=int, default=20261129)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--skip-full-svd", action="store_true")
    p.add_argument("--cli-extra", default="", help="extra arguments for the randomized run, e.g. '--ritz syevj'")
    p.add_argument("--variants", default="", help="more fast runs: 'label=--ritz syevj;label2=--oversampling 32'")
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    heads = args.d // (args.layers * args.head_dim)
    r = args.rank
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  D={args.d} (G={args.layers} x "
          f"{heads} heads x {args.head_dim})  r={r}  p={args.oversampling}  q={args.power_iterations}  "
          f"decay={args.decay}  seed={args.seed}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for n in args.n:
            x = make_matrix(n, args.d, args.decay, args.seed + n)
            path = os.path.join(workdir, "x.bin")
            x.cpu().contiguous().view(torch.int16).numpy().tofile(path)
            xd = x.double()
            gram = xd.T @ xd
            evals = torch.linalg.eigvalsh(gram).flip(0).clamp_min(0)
            total = float(evals.sum())
            opt2 = float(evals[r:].sum())
            del xd, gram
            torch.cuda.empty_cache()
            results = {}

            def record(name, ms, a, b):
                results[name] = (ms, (squared_error(x, a, b) / opt2) ** 0.5)
                print(f"  n={n:>6} {name:<22} {ms:9.2f} ms  err/opt {results[name][1]:.5f}", flush=True)

            xf = x.float()
            if not args.skip_full_svd:
                ms, (u, s, vh) = timed(lambda: torch.linalg.svd(xf, full_matrices=False), max(2, args.reps // 2))
                record("torch.linalg.svd", ms, u[:, :r] * s[:r], vh[:r])
                del u, s, vh
            ms, (u, s, v) = timed(lambda: torch.svd_lowrank(xf, q=r + args.oversampling, niter=args.power_iterations),
                                  args.reps)
            record("torch.svd_lowrank", ms, u[:, :r] * s[:r], v[:, :r].T)
            del u, s, v

            def gram_eigh():
                w, vec = torch.linalg.eigh(xf.T @ xf)
                vr = vec[:, -r:].flip(1)
                return xf @ vr, vr.T
            ms, (a, b) = timed(gram_eigh, args.reps)
            record("torch Gram+eigh fp32", ms, a, b)
            del a, b, xf
            torch.cuda.empty_cache()
            base = ["--oversampling", str(args.oversampling), "--power-iterations", str(args.power_iterations)]
            fast = ["--power-iterations", str(args.fast_power_iterations)]
            runs = [("xkv exact", "exact", 3, []), ("xkv fast", "subspace", 20, fast),
                    (f"xkv randomized p={args.oversampling} q={args.power_iterations}", "randomized", 20,
                     base + args.cli_extra.split())]
            for variant in filter(None, args.variants.split(";")):
                label, extra = variant.split("=", 1)
                runs.append((f"xkv fast {label}", "subspace", 20, fast + extra.split()))
            for name, method, iters, extra in runs:
                ms, a, b, line = run_cli(args.cli, path, n, args.d, args.layers, heads, args.head_dim, r, method,
                                         iters, workdir, extra)
                record(name, ms, a, b)
                print(f"    {line}", flush=True)
            rows.append((n, results))
            del x
            torch.cuda.empty_cache()
    print("\n| n | method | median ms | xkv fast speed-up | err/opt |")
    print("|---|---|---|---|---|")
    for n, results in rows:
        fast = results["xkv fast"][0]
        for name, (ms, ratio) in results.items():
            print(f"| {n} | {name} | {ms:.2f} | {ms / fast:.1f}x | {ratio:.5f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
