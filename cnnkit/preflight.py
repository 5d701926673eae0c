"""Checks a command makes before its work starts, so that a wrong option never throws finished work away.

:class:`UsageError` is a wrong combination of options (the CLI exits with status 2 for it); :func:`need_module`
says which extra installs a missing optional module; output folders are proven writable by
:func:`cnnkit.io.prepare_output_dir`.
"""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

from cnnkit import resume
from cnnkit.io import load_checkpoint, prepare_output_dir


class UsageError(ValueError):
    """Options that cannot work together (or are missing one another); exit status 2 in the CLI."""


def need_module(module: str, extra: str, option: str) -> None:
    """Raise :class:`UsageError` when ``module`` cannot be imported: ``option`` needs it."""
    if importlib.util.find_spec(module) is None:
        raise UsageError(f"{option} needs {module}, which is not installed (pip install 'cnnkit[{extra}]')")


def train_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The options of ``cnnkit train`` that its checkpoints record (see :mod:`cnnkit.resume`)."""
    values = {name: getattr(args, name) for name in (*resume.FIXED, *resume.CHANGEABLE)}
    values["dataset"] = str(values["dataset"])
    for name in ("data_root", "out"):
        values[name] = None if values[name] is None else str(Path(values[name]).resolve())
    return values


def check_train_options(args: argparse.Namespace, write_check: bool = True) -> None:
    """Everything ``cnnkit train`` can check before loading data and training: option combinations, optional
    modules, a writable --out (with ``write_check``: rank 0 of an mpiexec job only), and on --resume the
    checkpoint's settings against these (changes are printed)."""
    if args.plots:
        if args.out is None:
            raise UsageError("--plots needs --out DIR to write the figures to")
        need_module("matplotlib", "plot", "--plots")
    if args.out is not None and write_check:
        prepare_output_dir(args.out, "--out")
    if args.resume is not None:
        meta = load_checkpoint(args.resume).get("metadata") or {}
        for line in resume.check_settings(args.resume, meta.get("settings", meta), train_settings(args)):
            print(line)
