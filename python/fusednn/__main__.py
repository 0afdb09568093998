"""Command line: ``python -m fusednn {info,check,bench,plot,train}``.

* ``info``   build info, device and versions.
* ``check``  every op once against its reference on the present device; exit 1 on a failure.
* ``bench``  time every op against its PyTorch baselines; JSON to bench/results/<device>/.
* ``plot``   one PNG per op of a ``bench`` JSON (needs matplotlib: ``pip install fusednn[plot]``).
* ``train``  train a model of ``fusednn.models`` on its synthetic task, then the same model
             built from torch.nn layers; losses, throughputs, memory and their ratios.
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


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number; got {text!r}")
    return value


class ProgressLine:
    """A one-line progress bar on stderr: redrawn with a carriage return at most every 0.1 s
    on a terminal; elsewhere (a log file) drawn once, at the last step. ``close`` ends the line."""

    WIDTH = 24

    def __init__(self, label: str):
        self.label = label
        self.interactive = sys.stderr.isatty()
        self.last_draw = 0.0
        self.drawn = False

    def __call__(self, step: int, steps: int, loss: float) -> None:
        import time

        now = time.monotonic()
        if step < steps and (not self.interactive or now - self.last_draw < 0.1):
            return
        self.last_draw = now
        filled = self.WIDTH * step // steps
        bar = "#" * filled + "." * (self.WIDTH - filled)
        sys.stderr.write(f"\r{self.label} [{bar}] {step}/{steps} loss {loss:.4f}")
        sys.stderr.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()


def cmd_train(args) -> int:
    import copy

    from fusednn.models import tasks

    task = tasks.TASKS[args.model]
    device = parse_device(args.device)
    steps = args.steps if args.steps is not None else task.steps
    batch_size = args.batch_size if args.batch_size is not None else task.batch_size
    learning_rate = args.lr if args.lr is not None else task.learning_rate
    torch.manual_seed(args.seed)
    model = task.build("fusednn", device)
    initial_state = copy.deepcopy(model.state_dict())  # the torch-layer model starts from the same weights
    parameters = sum(p.numel() for p in model.parameters())
    print(f"{args.model} on {device}: {task.description}")
    print(f"{parameters:,} parameters, batch {batch_size}, {steps} steps, Adam lr {learning_rate:g}, seed {args.seed}")
    results = {}
    for layers in ("fusednn", "torch"):
        if layers == "torch":
            model = task.build("torch", device)
            model.load_state_dict(initial_state)
        progress = ProgressLine(f"{layers:<7}")
        torch.manual_seed(args.seed)  # the same dropout masks in both runs
        try:
            results[layers] = result = tasks.train(model, task, steps, batch_size, args.seed, device, learning_rate,
                                                   progress=progress)
        finally:
            progress.close()
        memory = f"{mebibytes(result.saved_bytes)} saved for backward"
        if result.peak_bytes is not None:
            memory += f", peak memory {mebibytes(result.peak_bytes)}"
        print(f"{layers:<7} layers: loss {result.loss_before:.4f} -> {result.loss_after:.4f} (held-out batch), "
              f"{result.throughput:,.0f} {task.unit}/s ({result.timed_steps} timed steps, {result.seconds:.2f} s), "
              f"{memory}")
    fused, torch_layers = results["fusednn"], results["torch"]
    print(f"throughput fusednn / torch layers: {fused.throughput / torch_layers.throughput:.2f}x "
          "(> 1 means fusednn is faster)")
    print(f"saved for backward fusednn / torch layers: {ratio(fused.saved_bytes, torch_layers.saved_bytes)} "
          "(< 1 means fusednn keeps less)")
    if fused.peak_bytes is not None:
        print(f"peak memory fusednn / torch layers: {ratio(fused.peak_bytes, torch_layers.peak_bytes)} "
              "(< 1 means fusednn needs less)")
    return 0


def mebibytes(count: int) -> str:
    return f"{count / 2**20:,.2f} MiB"


def ratio(ours: int, theirs: int) -> str:
    return f"{ours / theirs:.2f}x" if theirs else "n/a"


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
    from fusednn.models.tasks import TASKS

    models = "\n".join(f"  {name:<20} {task.description}; {task.steps} steps, batch {task.batch_size}"
                        for name, task in TASKS.items())
    p_train = sub.add_parser(
        "train", help="train a model on its synthetic task, then the same model on torch.nn layers",
        description="Train a model of fusednn.models on its synthetic task (Adam, fresh seeded batches), then the "
                    "same model built from torch.nn layers from the same initial weights on the same batches; print "
                    "the held-out loss before and after, the throughput of each, the activation memory a step "
                    "saves for backward (and on CUDA the peak memory), and their ratios.",
        epilog="models:\n" + models, formatter_class=argparse.RawDescriptionHelpFormatter)
    p_train.add_argument("model", choices=list(TASKS), help="the model and its task (listed below)")
    p_train.add_argument("--steps", type=positive_int, help="training steps (default: the model's, listed below)")
    p_train.add_argument("--batch-size", type=positive_int,
                         help="sequences, videos or images per batch (default: the model's)")
    p_train.add_argument("--lr", type=positive_float, help="Adam's learning rate (default: the model's)")
    p_train.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p_train.add_argument("--seed", type=int, default=0, help="seed of the weights and the data (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        commands = {"info": cmd_info, "check": cmd_check, "bench": cmd_bench, "plot": cmd_plot, "train": cmd_train}
        return commands[args.command](args)
    except UsageError as exc:
        print(f"python -m fusednn {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
