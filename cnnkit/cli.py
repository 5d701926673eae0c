"""The ``cnnkit`` command: info, summary, train, eval, demo and bench (``python -m cnnkit`` too).

Exit status: 0 on success, 2 for a usage error, 1 for a runtime error (missing data, an unavailable backend, a
diverged run ...). Errors are one line on stderr, ``cnnkit: error: ...``; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import math
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import cnnkit
from cnnkit.backends import BACKEND_NAMES
from cnnkit.preflight import UsageError
from cnnkit.validate import argparse_type

if TYPE_CHECKING:
    from cnnkit.train import TrainConfig

DEMO_DATASET = "fashion-mnist-sample"
DEMO_EPOCHS = 10
SCHEDULES = ("none", "step", "cosine")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error: ``cnnkit: error: ...``, exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"cnnkit: error: {message} (see '{self.prog} --help')\n")


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line (a multi-line message's lines joined with "; ")."""
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    out = ""
    for line in (part.strip() for part in str(text).splitlines()):
        if line:
            out += ("" if not out else " " if out.endswith(":") else "; ") + line
    return out or type(exc).__name__


def _positive(kind: type) -> Any:
    """A positive ``kind``; floats must also be finite (inf and nan are usage errors)."""
    return argparse_type(kind, lambda v: math.isfinite(v) and v > 0,
                         f"a positive {'finite ' if kind is float else ''}{kind.__name__}")


_non_negative_float = argparse_type(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
_fraction = argparse_type(float, lambda v: 0 <= v < 1, "a fraction in [0, 1)")


def _default_backend() -> str:
    """numba when it can run here (fastest on CPU), else numpy."""
    from cnnkit.backend import unavailable_reason

    return "numba" if unavailable_reason("numba") is None else "numpy"


# ------------------------------------------------------------------------------------------------ data and models
def _load(name: str, split: str, root: str | None) -> Any:
    """``cnnkit.data.load``, with a direct error for a --data-root that does not exist."""
    from cnnkit import data

    if root is not None and not Path(root).exists():
        raise FileNotFoundError(f"--data-root {root}: no such file or directory")
    return data.load(name, split, root=root)


def _model(name: str, num_classes: int, backend: str, dtype: str, batch_size: int | None = None) -> Any:
    """The model on its backend; numba with ``batch_size``: its training step's kernels compiled up front too."""
    from cnnkit import models

    model = models.create(name, num_classes=num_classes).to(backend, dtype)
    if backend == "numba" and batch_size is not None:
        from cnnkit.backends.numba.precompile import precompile

        sys.stdout.flush()  # its notice (stderr) after what was printed
        precompile(functools.partial(models.create, name, num_classes=num_classes), batch_size, dtype)
    return model


def _schedule(kind: str, optimizer: Any, epochs: int) -> Any:
    from cnnkit import optim

    if kind == "step":
        return optim.StepLR(optimizer, step_size=max(1, epochs // 3), gamma=0.1)
    if kind == "cosine":
        return optim.CosineLR(optimizer, t_max=epochs)
    return None


# ------------------------------------------------------------------------------------------------ commands
def cmd_info(args: argparse.Namespace) -> int:
    """Versions, the backends usable here (with device) and why the others are not."""
    from cnnkit.info import print_info

    return print_info()


def cmd_summary(args: argparse.Namespace) -> int:
    """Per-layer output shapes and parameter counts, receptive fields and FLOPs of a named model."""
    from cnnkit import analysis, models

    model = models.create(args.model, num_classes=args.num_classes)
    print(f"{args.model}: input {tuple(model.input_shape)}")
    analysis.summary(model)
    if args.receptive_field:
        print()
        analysis.receptive_field(model, print_table=True)
    total = analysis.flops(model, print_table=False)[-1]
    print(f"\nFLOPs per image: forward {total['forward']:,}, backward {total['backward']:,}")
    return 0


def _train_config(args: argparse.Namespace, metadata: dict[str, Any], comm: Any = None) -> TrainConfig:
    """The :class:`cnnkit.train.TrainConfig` of ``cnnkit train``: the best checkpoint by validation accuracy."""
    from cnnkit.train import TrainConfig

    return TrainConfig(epochs=args.epochs, checkpoint_dir=args.out, early_stopping=args.early_stopping,
                       monitor="val_acc", resume=args.resume, progress=not args.no_progress,
                       max_steps=args.max_steps, metadata=metadata, keep_hyperparameters=True, comm=comm)


def cmd_train(args: argparse.Namespace) -> int:
    """Train a named model on a named dataset; checkpoints and history go to --out. Under 'mpiexec -n N'
    (the mpi extra) it trains data-parallel on N processes: each takes its share of every global batch of
    N x --batch-size, --lr is the learning rate of that global batch (linear scaling: N times one process's
    rate, best with a warm-up), and only rank 0 prints and writes files."""
    from cnnkit.distributed import join_launched_job

    comm = join_launched_job()
    with contextlib.redirect_stdout(None if comm is not None and comm.rank else sys.stdout):  # print() skips None
        return _train(args, comm)


def _train_loaders(args: argparse.Namespace, sets: tuple[Any, Any, Any], model: Any, stats: tuple[Any, Any],
                   comm: Any) -> tuple[Any, Any, Any]:
    """The train, validation and test loaders of ``cnnkit train`` (under mpiexec each rank's share of the train
    and validation sets, and the whole test set)."""
    from cnnkit import data

    train_set, val_set, test_set = sets
    loaders = {"backend": args.backend, "dtype": args.dtype}
    train_loader = data.DataLoader(train_set, args.batch_size, shuffle=True, seed=args.seed, drop_last=False,
                                   transform=data.prepare(train_set, model.input_shape, *stats, args.augment),
                                   shard=comm, **loaders)
    plain = data.prepare(train_set, model.input_shape, *stats)
    val_loader = None if val_set is None else data.DataLoader(val_set, args.eval_batch_size, transform=plain,
                                                              shard=comm, **loaders)
    return train_loader, val_loader, data.DataLoader(test_set, args.eval_batch_size, transform=plain, **loaders)


def _train(args: argparse.Namespace, comm: Any) -> int:
    from cnnkit import data, io, nn, optim, plots, preflight, train

    preflight.check_train_options(args, write_check=comm is None or comm.rank == 0)
    nn.init.manual_seed(args.seed)
    train_set = _load(args.dataset, "train", args.data_root)
    test_set = _load(args.dataset, "test", args.data_root)
    compile_for = args.batch_size if comm is None else None  # under mpiexec, each rank compiles as it goes
    model = _model(args.model, len(train_set.classes), args.backend, args.dtype, compile_for)
    mean, std = data.channel_stats(train_set)
    val_set = None
    if args.val_fraction > 0:
        train_set, val_set = data.split(train_set, (1 - args.val_fraction, args.val_fraction), seed=args.seed)
    train_loader, val_loader, test_loader = _train_loaders(args, (train_set, val_set, test_set), model, (mean, std),
                                                           comm)
    optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, nesterov=args.nesterov,
                          weight_decay=args.weight_decay)
    schedule = _schedule(args.schedule, optimizer, args.epochs)
    metadata = {"model": args.model, "num_classes": len(train_set.classes), "classes": train_set.classes,
                "dataset": str(args.dataset), "mean": mean, "std": std, "backend": args.backend, "dtype": args.dtype,
                "data_root": None if args.data_root is None else str(Path(args.data_root).resolve()),
                "settings": preflight.train_settings(args)}
    print(f"training {args.model} ({model.num_parameters():,} parameters) on {train_set.name} "
          f"({train_set.source or 'in memory'}): "
          f"{len(train_set)} train, {0 if val_set is None else len(val_set)} val, {len(test_set)} test images; "
          f"backend {args.backend}, {args.dtype}"
          + ("" if comm is None else f"; {comm.size} processes x batch {args.batch_size} = global batch "
             f"{comm.size * args.batch_size}"))
    started = time.perf_counter()
    history = train.fit(model, train_loader, val_loader, optimizer=optimizer, schedule=schedule,
                        config=_train_config(args, metadata, comm))
    elapsed = time.perf_counter() - started
    best = None if args.out is None else Path(args.out) / "best.npz"
    if best is not None and best.is_file():
        best_state = io.load_checkpoint(best)
        model.load_state_dict(best_state["model"])
        print(f"best checkpoint (val accuracy {best_state['best']:.4f}): {best}")
    result = train.evaluate(model, test_loader)  # the whole test split, on every rank
    print(f"test: loss {result['loss']:.4f}, accuracy {result['accuracy']:.4f} ({result['n']} images); "
          f"training time {elapsed:.1f} s" + (f" (stopped early: {history.stopped})" if history.stopped else ""))
    if args.plots and (comm is None or comm.rank == 0):
        for path in plots.training_plots(model, history, test_loader, test_set.classes, args.out):
            print(f"wrote {path}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint written by ``cnnkit train`` on a dataset split."""
    from cnnkit import data, io, plots, preflight, train

    if args.confusion is not None:
        preflight.need_module("matplotlib", "plot", "--confusion")
        io.prepare_output_dir(Path(args.confusion).resolve().parent, "the folder of --confusion")
    state = io.load_checkpoint(args.checkpoint)
    meta = state.get("metadata")
    if not meta or "model" not in meta:
        raise ValueError(f"{args.checkpoint} has no model metadata (was it written by 'cnnkit train'?)")
    backend = args.backend or meta["backend"]
    dtype = args.dtype or meta["dtype"]
    model = _model(meta["model"], meta["num_classes"], backend, dtype)
    model.load_state_dict(state["model"])
    dataset = _load(args.dataset or meta["dataset"], args.split, args.data_root or meta["data_root"])
    if len(dataset.classes) != meta["num_classes"]:
        raise ValueError(f"dataset {dataset.name!r} has {len(dataset.classes)} classes, the checkpoint's model "
                         f"{meta['num_classes']}")
    loader = data.DataLoader(dataset, args.batch_size, backend=backend, dtype=dtype,
                             transform=data.prepare(dataset, model.input_shape, meta["mean"], meta["std"]))
    result = train.evaluate(model, loader)
    print(f"{meta['model']} (epoch {state['epoch']}) on {dataset.name} {args.split}: loss {result['loss']:.4f}, "
          f"accuracy {result['accuracy']:.4f} ({result['n']} images)")
    if args.confusion:
        preds, labels = train.predict(model, loader)
        print(f"wrote {plots.confusion_matrix(labels, preds, dataset.classes, args.confusion)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """LeNet-5 on the bundled Fashion-MNIST sample, padded to 32x32: under a minute on two CPU cores."""
    from cnnkit import data, nn, optim, train

    backend = args.backend or _default_backend()
    nn.init.manual_seed(args.seed)
    train_set, test_set = data.load(DEMO_DATASET, "train"), data.load(DEMO_DATASET, "test")
    print(f"LeNet-5 on the bundled Fashion-MNIST sample ({len(train_set)} train / {len(test_set)} test images, "
          f"28x28 padded to 32x32), backend {backend}, {args.epochs} epoch(s) of batch {args.batch_size}, "
          f"SGD momentum 0.9, cosine learning rate from {args.lr}")
    model = _model("lenet5", len(train_set.classes), backend, "float32", args.batch_size)
    transform = data.prepare(train_set, model.input_shape, *data.channel_stats(train_set))
    train_loader = data.DataLoader(train_set, args.batch_size, shuffle=True, seed=args.seed, transform=transform,
                                   backend=backend)
    test_loader = data.DataLoader(test_set, 500, transform=transform, backend=backend)
    optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    schedule = _schedule("cosine", optimizer, args.epochs)
    started = time.perf_counter()
    config = train.TrainConfig(epochs=args.epochs, progress=not args.no_progress, max_steps=args.steps)
    history = train.fit(model, train_loader, test_loader, optimizer=optimizer, schedule=schedule, config=config)
    elapsed = time.perf_counter() - started
    final = history.partial or history[-1]
    print(f"final test accuracy {final['val_acc']:.1%} on {len(test_set)} images; total time {elapsed:.1f} s "
          f"({backend} backend)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from cnnkit import bench as benchmark

    return benchmark.run(args)


# ------------------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    from cnnkit import bench as benchmark
    from cnnkit import models

    parser = _Parser(prog="cnnkit", description="Convolutional neural networks on NumPy, Numba and CuPy.")
    parser.add_argument("--version", action="version", version=f"cnnkit {cnnkit.__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("info", help="backends usable here, versions and devices",
                       description="Show versions, the backends that can run here and why the others cannot.")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("summary", help="layer table of a model", description=cmd_summary.__doc__)
    p.add_argument("model", choices=models.names(), metavar="MODEL", help=f"one of: {', '.join(models.names())}")
    p.add_argument("--num-classes", type=_positive(int), default=10, help="output classes (default 10)")
    p.add_argument("--receptive-field", action="store_true", help="also print each layer's receptive field")
    p.set_defaults(func=cmd_summary)

    _train_arguments(sub.add_parser("train", help="train a model on a dataset", description=cmd_train.__doc__))

    p = sub.add_parser("eval", help="evaluate a checkpoint", description=cmd_eval.__doc__)
    p.add_argument("checkpoint", metavar="CKPT", help="a checkpoint written by 'cnnkit train' (DIR/best.npz)")
    _data_options(p, required=False)
    p.add_argument("--split", default="test", help="dataset split (default test)")
    _backend_options(p, default=None)
    p.add_argument("--batch-size", type=_positive(int), default=500, help="batch size (default 500)")
    p.add_argument("--confusion", metavar="PNG", help="also write the confusion matrix to this PNG")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="LeNet-5 on the bundled Fashion-MNIST sample (under a minute)",
                       description=cmd_demo.__doc__)
    p.add_argument("--backend", choices=BACKEND_NAMES, help="numpy, numba or cupy (default: numba if installed)")
    p.add_argument("--epochs", type=_positive(int), default=DEMO_EPOCHS, help=f"epochs (default {DEMO_EPOCHS})")
    p.add_argument("--steps", type=_positive(int), help="stop after this many training steps in total")
    p.add_argument("--batch-size", type=_positive(int), default=32, help="batch size (default 32)")
    p.add_argument("--lr", type=_positive(float), default=0.05, help="learning rate (default 0.05)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and shuffling (default 0)")
    p.add_argument("--no-progress", action="store_true", help="one line per epoch instead of a progress bar")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="time training/inference steps on each backend (and PyTorch)",
                       description=benchmark.__doc__.split("\n")[0])
    benchmark.add_arguments(p)
    p.set_defaults(func=cmd_bench)
    return parser


def _train_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``cnnkit train`` (the fields of its TrainConfig, the optimiser and the data)."""
    from cnnkit import models

    p.add_argument("model", choices=models.names(), metavar="MODEL", help=f"one of: {', '.join(models.names())}")
    _data_options(p, required=True)
    _backend_options(p, default="numpy")
    p.add_argument("--epochs", type=_positive(int), default=10, help="epochs (default 10)")
    p.add_argument("--batch-size", type=_positive(int), default=64, help="training batch size (default 64); "
                   "under 'mpiexec -n N', of each process: the global batch is N x this")
    p.add_argument("--eval-batch-size", type=_positive(int), default=500, help="evaluation batch size (default 500)")
    p.add_argument("--lr", type=_positive(float), default=0.05, help="learning rate (default 0.05; under "
                   "mpiexec, of the global batch)")
    p.add_argument("--momentum", type=_non_negative_float, default=0.9, help="SGD momentum (default 0.9)")
    p.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    p.add_argument("--weight-decay", type=_non_negative_float, default=0.0, help="L2 weight decay (default 0)")
    p.add_argument("--schedule", choices=SCHEDULES, default="none",
                   help="learning-rate schedule: step (x0.1 every epochs/3) or cosine (default none)")
    p.add_argument("--augment", action="store_true", help="random shifts (and mirroring for colour images)")
    p.add_argument("--val-fraction", type=_fraction, default=0.1,
                   help="fraction of the train split held out for validation and best-checkpoint choice "
                        "(default 0.1; 0 for none)")
    p.add_argument("--early-stopping", type=_positive(int), metavar="PATIENCE",
                   help="stop after PATIENCE epochs without a better validation accuracy")
    p.add_argument("--out", metavar="DIR", help="write checkpoints (last.npz, best.npz) and history.csv/json here")
    p.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint (e.g. DIR/last.npz)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, shuffling and the val split (default 0)")
    p.add_argument("--max-steps", type=_positive(int), help="stop after this many optimiser steps in total")
    p.add_argument("--plots", action="store_true", help="write learning curves, confusion matrix and filters to --out")
    p.add_argument("--no-progress", action="store_true", help="one line per epoch instead of a progress bar")
    p.set_defaults(func=cmd_train)


def _data_options(p: argparse.ArgumentParser, required: bool) -> None:
    from cnnkit.data import NAMES

    p.add_argument("--dataset", required=required, metavar="D",
                   help=f"{', '.join(NAMES)}, or the path of an image folder / archive"
                        + ("" if required else " (default: the checkpoint's)"))
    p.add_argument("--data-root", metavar="DIR", help="folder holding the dataset (default: the usual places)")


def _backend_options(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("--backend", choices=BACKEND_NAMES, default=default,
                   help=f"numpy, numba or cupy (default: {default or 'as in the checkpoint'})")
    p.add_argument("--dtype", choices=("float32", "float64"), default=None if default is None else "float32",
                   help="float32 or float64 (numpy and numba only)")


def _warning_line(message: Any, category: type, filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    print(f"cnnkit: warning: {_one_line(Warning(str(message)))}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cnnkit`` console script; returns the exit status."""
    from cnnkit.distributed import abort_job

    status = _main(argv)
    sys.stdout.flush()  # under mpiexec, output left after MPI_Finalize (at exit) may be lost
    if status != 0:
        abort_job(status)  # the other ranks of an mpiexec job would wait for this one
    return status


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _warning_line
        try:
            return int(args.func(args) or 0)
        except UsageError as exc:
            print(f"cnnkit: error: {_one_line(exc)} (see 'cnnkit {args.command} --help')", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("cnnkit: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:  # the CLI's contract: one line, no traceback (unless --debug)
            if args.debug:
                raise
            print(f"cnnkit: error: {_one_line(exc)}", file=sys.stderr)
            return 1
