"""The benchmark runner behind ``python -m fusednn bench``.

Each family module in this package registers a function with ``@register(name)``;
that function calls ``ctx.measure(...)`` once per (shape, mode, provider). The runner
times every call on the present device (GPU: ``triton.testing.do_bench`` median with
the 20th/80th percentiles; CPU: ``torch.utils.benchmark.Timer`` median), prints a table
with the ratio of each baseline to fusednn, and writes every measurement to
``<out>/<device>/<date>-<commit>.json``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from typing import Callable, Iterable

import torch

BENCHES: dict[str, Callable[["Context"], None]] = {}


def register(name: str):
    """Register ``fn(ctx)`` as the benchmark of op ``name``."""

    def wrap(fn):
        BENCHES[name] = fn
        return fn

    return wrap


@dataclasses.dataclass
class Row:
    op: str
    mode: str  # "fwd" | "bwd" | "fwd+bwd"
    dtype: str
    shape: dict
    provider: str
    ms: float
    ms_p20: float | None = None
    ms_p80: float | None = None
    tflops: float | None = None
    gbps: float | None = None
    pct_of_copy_bandwidth: float | None = None


class Context:
    """What a family's benchmark function sees: the device, the mode, and ``measure``."""

    def __init__(self, device: torch.device, quick: bool, copy_gbps: float | None):
        self.device = device
        self.quick = quick
        self.copy_gbps = copy_gbps
        self.rows: list[Row] = []
        self.skipped: list[str] = []
        self._started = time.time()

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def time(self, fn: Callable[[], object]) -> tuple[float, float | None, float | None]:
        """Median milliseconds of ``fn`` (with 20th/80th percentiles on a GPU)."""
        if self.is_cuda:
            import triton.testing

            p50, p20, p80 = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8], warmup=25 if self.quick else 100,
                                                     rep=50 if self.quick else 200)
            return p50, p20, p80
        from torch.utils import benchmark

        fn()  # warm-up (allocations, first-call set-up)
        timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
        measurement = timer.blocked_autorange(min_run_time=0.3 if self.quick else 1.0)
        return measurement.median * 1e3, None, None

    def measure(
        self,
        *,
        op: str,
        mode: str,
        dtype: torch.dtype,
        shape: dict,
        provider: str,
        fn: Callable[[], object],
        flops: float | None = None,
        nbytes: float | None = None,
    ) -> Row | None:
        """Time ``fn`` and record a row; a provider that fails is reported and skipped."""
        dtype_name = str(dtype).replace("torch.", "")
        label = f"{op:<10} {mode:<7} {dtype_name:<8} {_shape_str(shape):<28} {provider:<16}"
        try:
            ms, p20, p80 = self.time(fn)
        except Exception as exc:  # a baseline that cannot run this case (e.g. a backend missing)
            msg = f"{label} skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
            self.skipped.append(msg)
            print("  " + msg, flush=True)
            return None
        row = Row(op=op, mode=mode, dtype=dtype_name, shape=shape, provider=provider, ms=ms, ms_p20=p20, ms_p80=p80)
        if flops is not None:
            row.tflops = flops / (ms * 1e-3) / 1e12
        if nbytes is not None:
            row.gbps = nbytes / (ms * 1e-3) / 1e9
            if self.copy_gbps:
                row.pct_of_copy_bandwidth = 100.0 * row.gbps / self.copy_gbps
        self.rows.append(row)
        extra = f"  {row.tflops:8.2f} TFLOP/s" if row.tflops is not None else ""
        extra += f"  {row.gbps:8.1f} GB/s" if row.gbps is not None else ""
        elapsed = time.time() - self._started
        print(f"  [{len(self.rows):3d} | {elapsed:6.1f}s] {label} {ms:9.4f} ms{extra}", flush=True)
        return row

    def skip(self, op: str, why: str) -> None:
        msg = f"{op}: skipped on {self.device.type}: {why}"
        self.skipped.append(msg)
        print("  " + msg, flush=True)


def _shape_str(shape: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in shape.items())


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        raw = torch.cuda.get_device_name(device)
    else:
        raw = "cpu"
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        raw = "cpu " + line.split(":", 1)[1]
                        break
        except OSError:
            raw = "cpu " + platform.processor()
    return re.sub(r"[^a-z0-9]+", "-", raw.lower().replace("(r)", "").replace("(tm)", "")).strip("-")


def measure_copy_bandwidth(device: torch.device) -> float:
    """GB/s of a device-to-device copy (bytes read + written): the memory-bound ceiling."""
    n = (1 << 28) if device.type == "cuda" else (1 << 25)  # 1 GiB / 128 MiB of fp32
    src = torch.empty(n // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ctx = Context(device, quick=True, copy_gbps=None)
    ms, _, _ = ctx.time(lambda: dst.copy_(src))
    del src, dst
    return 2 * n / (ms * 1e-3) / 1e9


def _git_commit() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def print_table(rows: Iterable[Row]) -> None:
    """One line per case: each provider's time and its ratio to fusednn (> 1: fusednn faster)."""
    cases: dict[tuple, dict[str, Row]] = {}
    for r in rows:
        cases.setdefault((r.op, r.mode, r.dtype, _shape_str(r.shape)), {})[r.provider] = r
    print()
    print(f"{'op':<10} {'mode':<7} {'dtype':<8} {'shape':<30} {'fusednn ms':>10}  baselines (ms, time / fusednn time)")
    for (op, mode, dtype, shape), by_provider in cases.items():
        ours = by_provider.get("fusednn")
        ours_ms = f"{ours.ms:10.4f}" if ours else f"{'-':>10}"
        others = []
        for name, r in by_provider.items():
            if name == "fusednn":
                continue
            ratio = f" {r.ms / ours.ms:5.2f}x" if ours else ""
            others.append(f"{name} {r.ms:.4f}{ratio}")
        bw = f"  [{ours.pct_of_copy_bandwidth:.0f}% of copy bw]" if ours and ours.pct_of_copy_bandwidth else ""
        print(f"{op:<10} {mode:<7} {dtype:<8} {shape:<30} {ours_ms}  {'; '.join(others)}{bw}")


def run(ops: list[str] | None, quick: bool, out_dir: str, device: torch.device | None = None) -> str:
    """Run the benchmarks of ``ops`` (all when None); returns the JSON path."""
    from . import exact_attention, normalization, recurrent  # noqa: F401  (register their benchmarks)

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = ops or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        raise ValueError(f"--ops: unknown op(s) {unknown}; available: {', '.join(BENCHES)}")
    print(f"fusednn bench on {device_name(device)} ({'quick' if quick else 'full'}): {', '.join(names)}", flush=True)
    copy_gbps = measure_copy_bandwidth(device)
    print(f"  device copy bandwidth: {copy_gbps:.1f} GB/s (read + write)", flush=True)
    ctx = Context(device, quick, copy_gbps)
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name}", flush=True)
        BENCHES[name](ctx)
    print_table(ctx.rows)

    import fusednn

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    date = datetime.date.today().isoformat()
    commit = _git_commit()
    payload = {
        "device": device_name(device),
        "device_type": device.type,
        "date": date,
        "commit": commit,
        "quick": quick,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "build": fusednn.build_info(),
        "copy_gbps": copy_gbps,
        "results": [dataclasses.asdict(r) for r in ctx.rows],
        "skipped": ctx.skipped,
    }
    target_dir = os.path.join(out_dir, payload["device"])
    os.makedirs(target_dir, exist_ok=True)
    path = os.path.join(target_dir, f"{date}-{commit}.json")
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
    print(f"\nwrote {path}")
    return path
