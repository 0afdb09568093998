"""The benchmark harness behind ``python -m fusednn bench``.

A family module of this package registers, per registry op, a function that turns one
benchmark shape into a ``Case``::

    @register("lstm")
    def lstm(shape: dict, device: torch.device) -> Case:
        x = torch.randn(shape["T"], shape["B"], shape["I"], device=device, requires_grad=True)
        ref = torch.nn.LSTM(shape["I"], shape["H"], device=device)
        return Case(torch.float32, inputs=(x,),
                    providers={"fusednn": lambda: fused_copy_of(ref), "torch": lambda: ref},
                    flops={"fwd": f, "bwd": 2 * f, "fwd+bwd": 3 * f})

The shapes come from the op registry (``fusednn.registry.get(op).bench.for_device(device
type, quick)``); the family modules are found by walking this package, so adding one needs no
other edit. The harness owns everything else:

* Providers. ``providers[name]()`` builds the function (or ``nn.Module``) that is called as
  ``fn(*inputs)``. Building and a first forward run inside a guard: a provider that fails
  to set up (a backend missing, a compile error) is listed in ``skipped`` with the reason
  and the run goes on; so is a mode that fails on its first call.
* Modes, built once here for every family: ``fwd`` calls the provider under
  ``torch.no_grad`` (an ``nn.Module`` in eval mode, as inference runs it); ``bwd`` is
  ``torch.autograd.grad`` through one graph built beforehand and retained; ``fwd+bwd`` is
  both. Gradients are taken with respect to every input that requires grad and, when the
  provider is an ``nn.Module``, its parameters; every floating output tensor that requires
  grad gets a random cotangent drawn once per provider.
* Interleaved timing. The providers of one shape and mode are timed in alternation:
  ``Timing.rounds`` rounds, each timing every provider once (the order rotated by one each
  round), so a slow spell of a shared machine falls on all of them alike. A provider's
  round is one ``triton.testing.do_bench`` on a GPU (the median and 20th/80th percentiles
  of its calls, L2 flushed before each) and, on the CPU, ``torch.utils.benchmark.Timer``
  blocks of calls for ``Timing.rep_ms`` (``blocked_autorange`` in the first round, its block
  size reused after), each block giving one raw per-call time. ``ms`` is the median of the
  rounds' medians. ``ms_p20``/``ms_p80`` are, on a GPU, the medians of the rounds'
  percentiles and, on the CPU, the percentiles of every round's raw times together (a round
  of a slow CPU case holds a sample or two); either way p20 <= ms <= p80.
* Throughput and peak. A FLOP count gives FLOP/s and the % of a matmul peak, measured once
  per run and dtype: the fastest round of the fastest large GEMM PyTorch offers in the
  case's dtype. A byte count gives B/s and the % of the device's copy bandwidth (the
  fastest round of a large copy, measured at the start).
* Output: a line per row as it is timed, then a table of each baseline's time over
  fusednn's, and every row in ``<out>/<device>/<date>-<HHMMSS>-<commit>.json``.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import json
import math
import os
import pkgutil
import platform
import re
import statistics
import subprocess
import sys
import time
from typing import Callable, Optional

import torch
from torch.utils import _pytree

MODES = ("fwd", "bwd", "fwd+bwd")


@dataclasses.dataclass
class Case:
    """One benchmark shape of one op: what every provider is called with, and its work."""

    dtype: torch.dtype
    # passed to every provider as fn(*inputs); tensors that require grad are differentiated
    inputs: tuple
    # name -> build(); build() returns fn (a function or nn.Module). "fusednn" is the op
    # under test; the others are baselines.
    providers: dict[str, Callable[[], Callable]]
    # mode -> FLOPs of one call (compute-bound ops) ...
    flops: Optional[dict[str, float]] = None
    # ... or mode -> bytes one call must move (memory-bound ops)
    nbytes: Optional[dict[str, float]] = None
    # sizes the family derives from the registry shape (e.g. batch and heads from tokens),
    # recorded in each row beside the shape
    derived: dict = dataclasses.field(default_factory=dict)
    modes: tuple[str, ...] = MODES


CaseFn = Callable[[dict, torch.device], Case]
BENCHES: dict[str, CaseFn] = {}


def register(op: str):
    """Registers ``fn(shape, device) -> Case`` as the benchmark of registry op ``op``."""

    def wrap(fn: CaseFn) -> CaseFn:
        BENCHES[op] = fn
        return fn

    return wrap


def compiled(fn: Callable, mode: Optional[str] = None) -> Callable:
    """``torch.compile(fn, dynamic=False, mode=mode)``: kernels specialised to each shape, as a
    model with fixed shapes gets. Each shape and grad mode is a recompile, so the limit is raised."""
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, 256)
    return torch.compile(fn, dynamic=False, mode=mode)


@dataclasses.dataclass(frozen=True)
class Timing:
    rounds: int
    warmup_ms: float  # GPU: do_bench's warm-up in the first round (later rounds follow a warm one)
    rep_ms: float  # per provider per round: do_bench's rep (GPU), Timer's min_run_time (CPU)


# (device type, quick) -> Timing. A quick GPU run (bench/gpu.sh) stays within minutes.
TIMING = {
    ("cuda", False): Timing(rounds=3, warmup_ms=25, rep_ms=100),
    ("cuda", True): Timing(rounds=3, warmup_ms=10, rep_ms=25),
    ("cpu", False): Timing(rounds=5, warmup_ms=0, rep_ms=300),
    ("cpu", True): Timing(rounds=3, warmup_ms=0, rep_ms=100),
}


@dataclasses.dataclass
class Row:
    op: str
    mode: str  # "fwd" | "bwd" | "fwd+bwd"
    dtype: str
    shape: dict  # the registry's benchmark shape
    provider: str
    ms: float
    ms_p20: float
    ms_p80: float
    tflops: Optional[float] = None
    gbps: Optional[float] = None
    pct_of_copy_bandwidth: Optional[float] = None
    pct_of_matmul_peak: Optional[float] = None
    flops: Optional[float] = None
    nbytes: Optional[float] = None
    derived: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Skip:
    op: str
    reason: str
    provider: Optional[str] = None
    mode: Optional[str] = None
    shape: Optional[dict] = None

    def __str__(self) -> str:
        where = " ".join(p for p in (self.op, self.provider, self.mode, shape_str(self.shape or {})) if p)
        return f"{where}: {self.reason}"


# --------------------------------------------------------------------------- formatting


def significant(x: float, digits: int = 3) -> str:
    """``x`` with ``digits`` significant digits and no exponent: 0.0123, 1.23, 123, 12346."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    return f"{x:.{decimals}f}"


_PREFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""))


def unit_scale(per_second: float) -> tuple[float, str]:
    """The SI scale and prefix under which ``per_second`` reads as 1..999."""
    return next(((s, p) for s, p in _PREFIXES if abs(per_second) >= s), _PREFIXES[-1])


def rate(per_second: float, unit: str) -> str:
    """e.g. rate(3.1e11, "FLOP") -> '310 GFLOP/s'."""
    scale, prefix = unit_scale(per_second)
    return f"{significant(per_second / scale)} {prefix}{unit}/s"


def shape_str(shape: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in shape.items())


def _why(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


# --------------------------------------------------------------------------- the device


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def device_label(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


def device_name(device: torch.device) -> str:
    """The results folder's name: e.g. nvidia-h100-80gb-hbm3, cpu-amd-epyc."""
    raw = device_label(device) if device.type == "cuda" else "cpu " + cpu_model()
    return re.sub(r"[^a-z0-9]+", "-", raw.lower().replace("(r)", "").replace("(tm)", "")).strip("-")


# --------------------------------------------------------------------------- timing


@dataclasses.dataclass
class _Samples:
    """What the rounds of one provider gave."""

    medians: list = dataclasses.field(default_factory=list)
    p20s: list = dataclasses.field(default_factory=list)
    p80s: list = dataclasses.field(default_factory=list)
    raw: list = dataclasses.field(default_factory=list)  # CPU: every per-call time
    calls_per_sample: int = 0  # CPU: the block size Timer chose in the first round

    def summary(self) -> tuple[float, float, float]:
        """(ms, p20, p80): the median of the round medians, and the spread (see the module doc)."""
        import numpy

        ms = statistics.median(self.medians)
        if self.raw:
            p20, p80 = (float(q) for q in numpy.quantile(self.raw, [0.2, 0.8]))
        else:
            p20, p80 = statistics.median(self.p20s), statistics.median(self.p80s)
        # Rounds of unequal length could put a pooled percentile past the median of medians.
        return ms, min(p20, ms), max(p80, ms)


def time_round(fn: Callable[[], object], device: torch.device, timing: Timing, first: bool, samples: _Samples):
    """One round of ``fn``: appends its median, percentiles and (CPU) raw times, in ms."""
    if device.type == "cuda":
        import triton.testing

        p20, p50, p80 = triton.testing.do_bench(fn, warmup=timing.warmup_ms if first else 1, rep=timing.rep_ms,
                                                quantiles=[0.2, 0.5, 0.8])
        samples.medians.append(p50)
        samples.p20s.append(p20)
        samples.p80s.append(p80)
        return
    from torch.utils import benchmark

    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    min_run_time = timing.rep_ms / 1e3
    if not samples.calls_per_sample:
        measurement = timer.blocked_autorange(min_run_time=min_run_time)
        samples.calls_per_sample = measurement.number_per_run
        times = list(measurement.times)
    else:  # blocked_autorange's loop with the block size it chose before (its estimate costs calls)
        times = []
        while not times or sum(times) * samples.calls_per_sample < min_run_time:
            times.extend(timer.timeit(samples.calls_per_sample).times)
    times = [t * 1e3 for t in times]
    samples.medians.append(statistics.median(times))
    samples.raw.extend(times)


def time_best(fn: Callable[[], object], device: torch.device, timing: Timing) -> float:
    """The fastest round's median ms of ``fn``: what a ceiling (a peak) takes, as other work on
    a shared machine only ever slows a round down."""
    fn()
    samples = _Samples()
    for r in range(timing.rounds):
        time_round(fn, device, timing, r == 0, samples)
    return min(samples.medians)


def measure_copy_bandwidth(device: torch.device, timing: Timing) -> float:
    """GB/s of a device-to-device copy (bytes read + written): the memory-bound ceiling."""
    n = (1 << 30) if device.type == "cuda" else (1 << 27)  # bytes: 1 GiB / 128 MiB, past the caches
    src = torch.empty(n // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = time_best(lambda: dst.copy_(src), device, timing)
    return 2 * n / (ms * 1e-3) / 1e9


def measure_matmul_peak(device: torch.device, dtype: torch.dtype, timing: Timing) -> tuple[float, str]:
    """(TFLOP/s, which GEMM) of the fastest large square GEMM in ``dtype`` PyTorch offers: the
    compute-bound ceiling. On the CPU both torch.mm (MKL, which takes a slow path on AMD
    CPUs) and oneDNN's linear (what ATen's LSTM and linear layers reach) are timed."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    gemms = {"torch.mm": (torch.mm, lambda t: t)}
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        gemms["oneDNN linear"] = (torch._C._nn.mkldnn_linear, lambda t: t.to_mkldnn())  # a @ b.T
    best, errors = {}, []
    for name, (gemm, layout) in gemms.items():
        try:
            x, y = layout(a), layout(b)
            best[name] = 2.0 * n**3 / (time_best(lambda: gemm(x, y), device, timing) * 1e-3) / 1e12
        except RuntimeError as exc:  # a GEMM path without this dtype
            errors.append(exc)
    if not best:
        raise errors[0]
    name = max(best, key=best.get)
    return best[name], f"{name} {n}x{n}x{n}"


# --------------------------------------------------------------------------- one run


def _differentiable(out) -> list[torch.Tensor]:
    return [t for t in _pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.requires_grad]


@dataclasses.dataclass
class _Provider:
    name: str
    fn: Callable
    leaves: list  # what the backward differentiates
    cotangents: list  # one per differentiable output


class Bench:
    """One ``python -m fusednn bench`` run: its device, timing, peaks, rows and skips."""

    def __init__(self, device: torch.device, quick: bool):
        self.device = device
        self.quick = quick
        self.timing = TIMING[(device.type, quick)]
        self.copy_gbps: Optional[float] = None
        self.matmul_peaks: dict[str, dict] = {}  # dtype -> {"tflops", "gemm"} ({} where not measured)
        self.rows: list[Row] = []
        self.skipped: list[Skip] = []
        self.fusednn_backends: dict[str, str] = {}  # op -> what its "fusednn" provider runs here
        self._started = time.time()

    def skip(self, skip: Skip) -> None:
        self.skipped.append(skip)
        print(f"  skipped: {skip}", flush=True)

    def matmul_peak(self, dtype: torch.dtype) -> Optional[float]:
        """TFLOP/s of the matmul peak in ``dtype``, measured on the first call."""
        key = _dtype_name(dtype)
        if key not in self.matmul_peaks:
            try:
                tflops, gemm = measure_matmul_peak(self.device, dtype, self.timing)
                self.matmul_peaks[key] = {"tflops": tflops, "gemm": gemm}
                print(f"  matmul peak ({key}): {rate(tflops * 1e12, 'FLOP')} ({gemm}, the fastest round)", flush=True)
            except Exception as exc:  # e.g. a dtype without a GEMM on this device
                self.matmul_peaks[key] = {}
                print(f"  matmul peak ({key}): not measured: {_why(exc)}", flush=True)
        return self.matmul_peaks[key].get("tflops")

    # ----------------------------------------------------------------- per op and shape

    def bench_op(self, op: str, shapes: tuple, case_fn: CaseFn) -> None:
        for shape in shapes:
            try:
                case = case_fn(dict(shape), self.device)
            except Exception as exc:
                self.skip(Skip(op, f"case set-up failed: {_why(exc)}", shape=dict(shape)))
                continue
            self.bench_case(op, dict(shape), case)
            del case
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def bench_case(self, op: str, shape: dict, case: Case) -> None:
        if case.flops:
            self.matmul_peak(case.dtype)
        providers = [p for p in (self._set_up(op, shape, case, name, build) for name, build in case.providers.items())
                     if p is not None]
        for mode in case.modes:
            closures = {}
            for p in providers:
                try:
                    fn = self._closure(p, mode, case.inputs)
                    fn()  # warm-up: first-call set-up, compiles; a mode that cannot run fails here
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                except Exception as exc:
                    self.skip(Skip(op, _why(exc), provider=p.name, mode=mode, shape=shape))
                    continue
                closures[p.name] = fn
            for name, samples in self._interleave(op, shape, mode, closures).items():
                self._record(op, shape, mode, case, name, samples)
            del closures

    def _set_up(self, op: str, shape: dict, case: Case, name: str, build) -> Optional[_Provider]:
        try:
            fn = build()
            out = fn(*case.inputs)
            leaves = [t for t in case.inputs if isinstance(t, torch.Tensor) and t.requires_grad]
            if isinstance(fn, torch.nn.Module):
                leaves += [p for p in fn.parameters() if p.requires_grad]
            cotangents = [torch.randn_like(t) for t in _differentiable(out)]
        except Exception as exc:
            self.skip(Skip(op, f"set-up failed: {_why(exc)}", provider=name, shape=shape))
            return None
        return _Provider(name, fn, leaves, cotangents)

    @staticmethod
    def _closure(p: _Provider, mode: str, inputs: tuple) -> Callable[[], object]:
        if isinstance(p.fn, torch.nn.Module):  # inference as a model runs it: eval mode (cuDNN keeps no workspace)
            p.fn.train(mode != "fwd")
        if mode == "fwd":
            def forward():
                with torch.no_grad():
                    return p.fn(*inputs)

            return forward
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
        if not p.leaves or not p.cotangents:
            raise ValueError("nothing to differentiate: no input or parameter requires grad, or no output does")
        if mode == "bwd":
            outs = _differentiable(p.fn(*inputs))  # the graph every call goes back through

            def backward():
                return torch.autograd.grad(outs, p.leaves, p.cotangents, retain_graph=True, allow_unused=True)

            return backward

        def forward_backward():
            return torch.autograd.grad(_differentiable(p.fn(*inputs)), p.leaves, p.cotangents, allow_unused=True)

        return forward_backward

    def _interleave(self, op: str, shape: dict, mode: str, closures: dict) -> dict[str, _Samples]:
        """Rounds over the providers in alternation (see the module doc)."""
        names = list(closures)
        samples = {name: _Samples() for name in names}
        for r in range(self.timing.rounds):
            k = r % len(names) if names else 0
            for name in names[k:] + names[:k]:
                if name not in samples:
                    continue
                try:
                    time_round(closures[name], self.device, self.timing, r == 0, samples[name])
                except Exception as exc:
                    del samples[name]
                    self.skip(Skip(op, f"timing failed: {_why(exc)}", provider=name, mode=mode, shape=shape))
        return samples

    def _record(self, op: str, shape: dict, mode: str, case: Case, provider: str, samples: _Samples) -> None:
        ms, p20, p80 = samples.summary()
        row = Row(op=op, mode=mode, dtype=_dtype_name(case.dtype), shape=shape, provider=provider, ms=ms,
                  ms_p20=p20, ms_p80=p80, derived=dict(case.derived))
        extra = ""
        if case.flops and mode in case.flops:
            row.flops = case.flops[mode]
            row.tflops = row.flops / (ms * 1e-3) / 1e12
            extra = f"  {rate(row.tflops * 1e12, 'FLOP')}"
            peak = self.matmul_peaks.get(row.dtype, {}).get("tflops")
            if peak:
                row.pct_of_matmul_peak = 100.0 * row.tflops / peak
                extra += f" ({significant(row.pct_of_matmul_peak, 2)}% of matmul peak)"
        if case.nbytes and mode in case.nbytes:
            row.nbytes = case.nbytes[mode]
            row.gbps = row.nbytes / (ms * 1e-3) / 1e9
            extra += f"  {rate(row.gbps * 1e9, 'B')}"
            if self.copy_gbps:
                row.pct_of_copy_bandwidth = 100.0 * row.gbps / self.copy_gbps
                extra += f" ({significant(row.pct_of_copy_bandwidth, 2)}% of copy bw)"
        self.rows.append(row)
        elapsed = time.time() - self._started
        label = f"{op:<10} {mode:<7} {row.dtype:<8} {shape_str(shape):<28} {provider:<16}"
        spread = f"({significant(p20)}-{significant(p80)})"
        print(f"  [{len(self.rows):3d} | {elapsed:6.1f}s] {label} {significant(ms):>8} ms {spread:<19}{extra}",
              flush=True)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# --------------------------------------------------------------------------- discovery and the run


def discover() -> list[Skip]:
    """Imports every module of this package, so each family registers its benchmarks; a module
    that fails to import is returned as a skip and the others still run."""
    package = __name__.rpartition(".")[0]
    failures = []
    for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
        if module.name.startswith("_"):
            continue
        try:
            importlib.import_module(f"{package}.{module.name}")
        except Exception as exc:
            failures.append(Skip(f"{package}.{module.name}", f"import failed: {_why(exc)}"))
    return failures


def _why_no_shapes(info, device: torch.device, quick: bool) -> str:
    which = f"{'quick ' if quick else ''}{device.type}"
    why = f"the registry gives no {which} benchmark shapes"
    if device.type == "cpu" and info.kernel("cpu") is None:
        backends = ", ".join(k.backend for k in info.kernels) or "none"
        why += f" (its kernels: {backends}; on the CPU it runs Triton's interpreter or the reference)"
    return why


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


def print_table(rows: list[Row]) -> None:
    """One line per case: fusednn's time, each baseline's time and its ratio to fusednn's."""
    cases: dict[tuple, dict[str, Row]] = {}
    for r in rows:
        cases.setdefault((r.op, r.mode, r.dtype, shape_str(r.shape)), {})[r.provider] = r
    print()
    print("ratio = baseline time / fusednn time; > 1 means fusednn is faster")
    print(f"{'op':<10} {'mode':<7} {'dtype':<8} {'shape':<30} {'fusednn ms':>10}  "
          f"{'% of peak':>9}  baselines: ms (ratio)")
    for (op, mode, dtype, shape), by_provider in cases.items():
        ours = by_provider.get("fusednn")
        others = [f"{name} {significant(r.ms)}" + (f" ({significant(r.ms / ours.ms)}x)" if ours else "")
                  for name, r in by_provider.items() if name != "fusednn"]
        ours_ms = significant(ours.ms) if ours else "-"
        pct = ours and (ours.pct_of_matmul_peak or ours.pct_of_copy_bandwidth)
        pct_str = f"{significant(pct, 2)}%" if pct else "-"
        print(f"{op:<10} {mode:<7} {dtype:<8} {shape:<30} {ours_ms:>10}  {pct_str:>9}  {'; '.join(others)}")


def _write_json(payload: dict, out_dir: str, stamp: str, path: Optional[str]) -> str:
    """``<out_dir>/<device>/<stamp>.json``, never over an earlier run's file; ``path``: this
    run's file, written before, to update."""
    if path is not None:
        with open(path, "w") as f:
            json.dump(payload, f, indent=1)
        return path
    target_dir = os.path.join(out_dir, payload["device"])
    os.makedirs(target_dir, exist_ok=True)
    for n in range(1000):
        path = os.path.join(target_dir, f"{stamp}{f'-{n}' if n else ''}.json")
        try:
            with open(path, "x") as f:
                json.dump(payload, f, indent=1)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"{target_dir}: 1000 result files named {stamp}*.json")


def run(ops: Optional[list[str]], quick: bool, out_dir: str, device: Optional[torch.device] = None) -> str:
    """Runs the benchmarks of registry ops ``ops`` (all when None); returns the JSON path."""
    from fusednn import registry

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # do_bench times on the current device
    bench = Bench(device, quick)
    for failure in discover():
        bench.skip(failure)
    names = ops or [info.name for info in registry.ops()]
    plan = []
    for name in names:
        info = registry.get(name)
        shapes = info.bench.for_device(device.type, quick) if info.bench else ()
        if name not in BENCHES:
            bench.skip(Skip(name, "no module of fusednn.bench registers a benchmark for it"))
        elif not shapes:
            bench.skip(Skip(name, _why_no_shapes(info, device, quick)))
        else:
            plan.append((name, shapes))
    timing = bench.timing
    print(f"fusednn bench on {device_label(device)} ({device.type}, {'quick' if quick else 'full'}, "
          f"{torch.get_num_threads()} threads; {timing.rounds} interleaved rounds): "
          f"{', '.join(n for n, _ in plan) or 'nothing to run'}", flush=True)
    bench.copy_gbps = measure_copy_bandwidth(device, timing)
    print(f"  device copy bandwidth: {rate(bench.copy_gbps * 1e9, 'B')} (read + write)", flush=True)
    now = datetime.datetime.now()
    commit = _git_commit()
    path = None
    for i, (name, shapes) in enumerate(plan, 1):
        backend = bench.fusednn_backends[name] = fusednn_backend(registry.get(name), device)
        print(f"[{i}/{len(plan)}] {name}: {len(shapes)} shape(s); the fusednn provider runs {backend}", flush=True)
        bench.bench_op(name, shapes, BENCHES[name])
        # Written after every op (complete: false until the end), so a run stopped by a time
        # limit keeps what it measured.
        path = _write_json(_payload(bench, device, quick, now, commit, complete=i == len(plan)), out_dir,
                           f"{now.date().isoformat()}-{now.strftime('%H%M%S')}-{commit}", path)
    if path is None:
        path = _write_json(_payload(bench, device, quick, now, commit, complete=True), out_dir,
                           f"{now.date().isoformat()}-{now.strftime('%H%M%S')}-{commit}", None)
    print_table(bench.rows)
    print(f"\nwrote {path}")
    return path


def fusednn_backend(info, device: torch.device) -> str:
    """What the op's "fusednn" provider runs on ``device`` (float32 dispatch), said plainly:
    a kernel backend, or the reference and why (Triton kernels need a GPU, or the interpreter)."""
    try:
        backend = info.select(device, torch.float32)
    except NotImplementedError as exc:  # a forced backend (FUSEDNN_BACKEND) that cannot serve
        return f"nothing: {exc}"
    if backend != "reference":
        return f"its {backend} kernel"
    kernels = ", ".join(k.backend for k in info.kernels) or "none"
    return f"its plain-PyTorch reference (its kernels: {kernels}; Triton kernels need a GPU here)"


def _payload(bench: "Bench", device: torch.device, quick: bool, now: datetime.datetime, commit: str, complete: bool,
             ) -> dict:
    """The JSON of a run: the device, versions, build, peaks, every row and every skip."""
    import fusednn

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": device_name(device),
        "device_label": device_label(device),
        "device_type": device.type,
        "date": now.date().isoformat(),
        "time": now.strftime("%H:%M:%S"),
        "commit": commit,
        "quick": quick,
        "complete": complete,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "build": fusednn.build_info(),
        "timing": dataclasses.asdict(bench.timing),
        "copy_gbps": bench.copy_gbps,
        "matmul_peak": bench.matmul_peaks,
        "results": [dataclasses.asdict(r) for r in bench.rows],
        "skipped": [dataclasses.asdict(s) for s in bench.skipped],
        "fusednn_backends": bench.fusednn_backends,
    }
