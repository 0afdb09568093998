"""Command line: ``python -m fusednn {info,check,bench,plot}``.

* ``info``   build info, device and versions.
* ``check``  every op once against its reference on the present device; exit 1 on a failure.
* ``bench``  time every op against its PyTorch baselines; JSON to bench/results/<device>/.
* ``plot``   one PNG per op of a ``bench`` JSON (needs matplotlib: ``pip install fusednn[plot]``).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import torch


def cmd_info(args) -> int:
    import fusednn
    from fusednn import _runtime

    print(f"fusednn {fusednn.__version__}")
    try:
        info = fusednn.build_info()
        print("build:")
        for key, value in info.items():
            print(f"  {key:<13} {value}")
    except ImportError as exc:
        print(f"build: extension missing: {exc}")
    print("versions:")
    print(f"  python        {platform.python_version()}")
    print(f"  torch         {torch.__version__} (CUDA {torch.version.cuda})")
    try:
        import triton

        print(f"  triton        {triton.__version__}")
    except ImportError:
        print("  triton        not installed")
    try:
        import numpy

        print(f"  numpy         {numpy.__version__}")
    except ImportError:
        print("  numpy         not installed")
    print("device:")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        print(f"  cuda          {props.name}, sm_{props.major}{props.minor}, {props.multi_processor_count} SMs, "
              f"{props.total_memory / 2**30:.0f} GiB")
    else:
        print("  cuda          not available")
    print(f"  cpu           {os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
    print("backend:")
    print(f"  requested     {_runtime.requested_backend()}")
    print(f"  interpreter   TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}")
    return 0


class UsageError(Exception):
    """A command-line argument this machine cannot honour: one line on stderr, exit 2."""


def parse_device(name: str | None) -> torch.device:
    """--device: "cpu" or "cuda" (default: cuda when available)."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UsageError(f"--device must be cpu or cuda; got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device is available here (torch {torch.__version__}, "
                         f"CUDA {torch.version.cuda})")
    return torch.device(name)


def parse_ops(values: list[str] | None) -> list[str] | None:
    """--ops a b,c -> ['a', 'b', 'c'], each a registered op."""
    from fusednn import registry

    if not values:
        return None
    names = [o for part in values for o in part.split(",") if o]
    known = [info.name for info in registry.ops()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"--ops: unknown op(s) {', '.join(unknown)}; registered: {', '.join(known)}")
    return names


def cmd_check(args) -> int:
    from fusednn import check

    if args.list:
        check.print_registry()
        return 0
    results = check.run_checks(parse_device(args.device), parse_ops(args.ops))
    check.print_results(results)
    return 1 if any(r.status == "FAIL" for r in results) else 0


def cmd_bench(args) -> int:
    from fusednn.bench import runner

    runner.run(parse_ops(args.ops), quick=args.quick, out_dir=args.out, device=parse_device(args.device))
    return 0


def cmd_plot(args) -> int:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError("needs matplotlib, which is not installed: pip install fusednn[plot]")
    if not os.path.isfile(args.results):
        raise UsageError(f"no such results file: {args.results}")
    from fusednn.bench import plot

    for path in plot.plot(args.results, args.out):
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusednn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="build info, device, versions")
    p_check = sub.add_parser("check", help="run every op against its reference")
    p_check.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p_check.add_argument("--ops", nargs="+", help="ops to check (default: all), e.g. --ops lstm layer_norm")
    p_check.add_argument("--list", action="store_true", help="list every registered op with its kernels and dtypes")
    p_bench = sub.add_parser("bench", help="time every op against its PyTorch baselines")
    p_bench.add_argument("--ops", nargs="+", help="ops to time (default: all), e.g. --ops lstm layer_norm")
    p_bench.add_argument("--quick", action="store_true", help="the quick shapes and shorter timing")
    p_bench.add_argument("--out", default=os.path.join("bench", "results"),
                         help="results folder (default: %(default)s)")
    p_bench.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p_plot = sub.add_parser("plot", help="one PNG per op of a bench results file (needs matplotlib)")
    p_plot.add_argument("results", help="a JSON file written by bench")
    p_plot.add_argument("--out", help="folder for the PNGs (default: the JSON's folder)")
    args = parser.parse_args(argv)
    try:
        return {"info": cmd_info, "check": cmd_check, "bench": cmd_bench, "plot": cmd_plot}[args.command](args)
    except UsageError as exc:
        print(f"python -m fusednn {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
