"""The ``cnnkit`` command line, run as ``python -m cnnkit`` in a subprocess (and in-process for error paths):
info, summary, train on IDX files, eval of the checkpoint, demo, bench wiring, and one-line errors."""
from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnnkit import cli, io
from cnnkit.data import write_idx


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnnkit", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def assert_one_line_error(result: subprocess.CompletedProcess | tuple, code: int, pattern: str) -> None:
    returncode, stderr = (result.returncode, result.stderr) if hasattr(result, "returncode") else result
    assert returncode == code, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnnkit: error: "), stderr
    assert "Traceback" not in stderr
    assert re.search(pattern, lines[0]), lines[0]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """An MNIST-format dataset (IDX files): 10 classes, 60 train and 20 test 28x28 images."""
    root = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 60), ("t10k", 20)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 50, size=(n, 28, 28)).astype(np.uint8)
        images[np.arange(n), labels * 2 + 4, :] = 255  # a bright row whose position gives the class
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def test_info_lists_backends():
    result = run("info")
    assert result.returncode == 0, result.stderr
    assert re.search(r"numpy\s+available\s+numpy \d", result.stdout)
    for name in ("numba", "cupy"):
        assert re.search(rf"\n  {name}\s+(available|unavailable  .+; install: )", result.stdout), result.stdout


def test_info_fails_on_a_bogus_backend_variable_and_names_it():
    env = {**os.environ, "CNNKIT_BACKEND": "bogus"}
    result = subprocess.run([sys.executable, "-m", "cnnkit", "info"], capture_output=True, text=True, timeout=300,
                            env=env)
    assert_one_line_error(result, 2, r"CNNKIT_BACKEND='bogus' names no backend")


def test_info_says_which_cupy_and_cuda_it_found():
    result = run("info")
    assert re.search(r"\nCuPy/CUDA: ", result.stdout), result.stdout


def test_summary_lenet5():
    result = run("summary", "lenet5")
    assert result.returncode == 0, result.stderr
    assert "61,706" in result.stdout and "Conv2d" in result.stdout and "FLOPs per image" in result.stdout


def test_train_then_eval_the_checkpoint(digits, tmp_path):
    out = tmp_path / "run"
    result = run("train", "lenet5", "--dataset", "mnist", "--data-root", str(digits), "--epochs", "2",
                 "--max-steps", "9", "--batch-size", "8", "--lr", "0.02", "--schedule", "cosine", "--augment",
                 "--out", str(out), "--seed", "1", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "54 train, 6 val, 20 test images" in result.stdout
    assert re.search(r"epoch 2/2 \(stopped at step 2/7\): train loss [\d.]+ acc", result.stdout)
    trained = re.search(r"test: loss ([\d.]+), accuracy ([\d.]+) \(20 images\)", result.stdout)
    assert trained, result.stdout
    state = io.load_checkpoint(out / "last.npz")
    assert state["epoch"] == 1 and state["partial"]["step"] == 2 and state["steps"] == 9  # 7 steps per epoch
    assert state["metadata"]["model"] == "lenet5"
    assert (out / "best.npz").is_file() and (out / "history.csv").is_file()

    result = run("eval", str(out / "best.npz"), "--data-root", str(digits))
    assert result.returncode == 0, result.stderr
    evaluated = re.search(r"on mnist test: loss ([\d.]+), accuracy ([\d.]+) \(20 images\)", result.stdout)
    assert evaluated, result.stdout
    assert evaluated.groups() == trained.groups(), "eval must reproduce train's test result for best.npz"


def test_demo_runs_tiny():
    result = run("demo", "--backend", "numpy", "--epochs", "1", "--steps", "3", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "backend numpy" in result.stdout
    assert re.search(r"epoch 1/1 \(stopped at step 3/125\): train loss [\d.]+ acc [\d.]+ \| val loss", result.stdout)
    assert re.search(r"final test accuracy [\d.]+% on 1000 images; total time [\d.]+ s", result.stdout)


def test_bench_is_wired(tmp_path):
    result = run("bench", "--models", "lenet5", "--backends", "numpy", "--batch", "2", "--mode", "infer",
                 "--rounds", "1", "--warmup", "0", "--min-time", "0", "--no-torch", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "lenet5" in result.stdout and "numpy" in result.stdout


def test_unknown_model_is_a_usage_error():
    assert_one_line_error(run("summary", "lenet7"), 2, "invalid choice: 'lenet7'")


def test_bad_backend_is_a_usage_error():
    assert_one_line_error(run("demo", "--backend", "tpu"), 2, "invalid choice: 'tpu'")


def test_missing_data_dir_is_a_runtime_error(tmp_path):
    assert_one_line_error(run("train", "lenet5", "--dataset", "mnist", "--data-root", str(tmp_path / "nope")),
                          1, "--data-root .*nope: no such file or directory")


def test_dataset_not_in_the_data_dir(tmp_path):
    assert_one_line_error(run("train", "lenet1", "--dataset", "mnist", "--data-root", str(tmp_path)),
                          1, "dataset 'mnist' .*not found")


def main_in_process(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def test_unavailable_backend_is_a_runtime_error(capsys, monkeypatch):
    registry = importlib.import_module("cnnkit.backend")  # the module; cnnkit.backend is also a function
    monkeypatch.setattr(registry, "_created", {})
    monkeypatch.setattr(registry, "unavailable_reason", lambda name: "no device here" if name == "numba" else None)
    assert_one_line_error(main_in_process(capsys, "demo", "--backend", "numba", "--steps", "1"),
                          1, "backend 'numba' is not available: no device here")


@pytest.mark.parametrize("argv, pattern", [
    (["train", "lenet5"], "--dataset"),
    (["train", "lenet5", "--dataset", "x", "--epochs", "0"], "positive int"),
    (["train", "lenet5", "--dataset", "x", "--val-fraction", "1"], r"fraction in \[0, 1\)"),
    ([], "COMMAND"),
])
def test_usage_errors_in_process(capsys, argv, pattern):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert_one_line_error((exit_info.value.code, capsys.readouterr().err), 2, pattern)


def test_eval_errors(capsys, tmp_path):
    assert_one_line_error(main_in_process(capsys, "eval", str(tmp_path / "none.npz")), 1, "does not exist")
    io.save_checkpoint(tmp_path / "bare.npz", {"model": {}, "metadata": None})
    assert_one_line_error(main_in_process(capsys, "eval", str(tmp_path / "bare.npz")), 1, "no model metadata")


def test_example_script_trains_and_plots(tmp_path):
    script = Path(__file__).resolve().parents[1] / "examples" / "train_lenet.py"
    result = subprocess.run([sys.executable, str(script), "1"], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(r"test accuracy [\d.]+% on 1000 images", result.stdout)
    out = tmp_path / "runs" / "lenet5-example"
    for name in ("best.npz", "history.csv", "learning_curves.png", "confusion_matrix.png", "filters.png"):
        assert (out / name).stat().st_size > 0, name


def _train_args(digits, out, *extra: str) -> list[str]:
    return ["train", "lenet1", "--dataset", "mnist", "--data-root", str(digits), "--batch-size", "8",
            "--out", str(out), "--no-progress", *extra]


def test_resume_applies_changeable_settings_and_refuses_fixed_ones(capsys, digits, tmp_path):
    out = tmp_path / "run"
    assert cli.main(_train_args(digits, out, "--epochs", "1", "--lr", "0.02")) == 0
    capsys.readouterr()
    code = cli.main(_train_args(digits, out, "--epochs", "2", "--lr", "0.5", "--momentum", "0",
                                "--resume", str(out / "last.npz")))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "resume: --lr changed from 0.02 to 0.5" in captured.out
    assert "resume: --momentum changed from 0.9 to 0.0" in captured.out
    state = io.load_checkpoint(out / "last.npz")
    assert state["epoch"] == 2 and state["optimizer"]["lr"] == 0.5 and state["optimizer"]["momentum"] == 0.0
    assert state["history"]["epochs"][1]["lr"] == 0.5
    for option, value, pattern in [("--batch-size", "4", "--batch-size cannot change on resume: .* 8, .* 4"),
                                   ("--seed", "3", "--seed cannot change on resume: .* 0, .* 3"),
                                   ("--dtype", "float64", "--dtype .* 'float32', .* 'float64'")]:
        argv = _train_args(digits, out, "--epochs", "3", "--resume", str(out / "last.npz"), option, value)
        assert_one_line_error(main_in_process(capsys, *argv), 1, pattern)  # the last --batch-size wins
    argv = ["train", "lenet5", *_train_args(digits, out, "--resume", str(out / "last.npz"))[2:]]
    assert_one_line_error(main_in_process(capsys, *argv), 1, "--model cannot change on resume: .*'lenet1'.*'lenet5'")
    assert io.load_checkpoint(out / "last.npz")["epoch"] == 2


@pytest.mark.parametrize("option, value", [("--lr", "inf"), ("--lr", "nan"), ("--weight-decay", "inf"),
                                           ("--momentum", "nan"), ("--lr", "-inf")])
def test_non_finite_hyperparameters_are_usage_errors(capsys, option, value):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "lenet1", "--dataset", "mnist", f"{option}={value}"])
    assert_one_line_error((exit_info.value.code, capsys.readouterr().err), 2, f"{option}: expected a .*finite")


def test_plots_and_out_are_checked_before_training(capsys, digits, tmp_path, monkeypatch):
    args = ["train", "lenet1", "--dataset", "mnist", "--data-root", str(digits), "--no-progress", "--plots"]
    assert_one_line_error(main_in_process(capsys, *args), 2, "--plots needs --out DIR")
    (tmp_path / "file").write_text("x")
    assert_one_line_error(main_in_process(capsys, *args[:-1], "--out", str(tmp_path / "file" / "run")), 1,
                          rf"--out {re.escape(str(tmp_path / 'file' / 'run'))} is not writable")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a))
    assert_one_line_error(main_in_process(capsys, *args, "--out", str(tmp_path / "run")), 2,
                          r"--plots needs matplotlib, .*pip install 'cnnkit\[plot\]'")
    assert not (tmp_path / "run" / "last.npz").exists()


def test_diverging_run_exits_non_zero_and_keeps_the_last_good_checkpoint(capsys, digits, tmp_path):
    out = tmp_path / "run"
    assert cli.main(_train_args(digits, out, "--epochs", "1", "--lr", "0.01")) == 0
    code, err = main_in_process(capsys, *_train_args(digits, out, "--epochs", "2", "--lr", "1e30",
                                                     "--resume", str(out / "last.npz")))
    assert code == 1 and "training diverged" in err, err
    assert io.load_checkpoint(out / "last.npz")["epoch"] == 1


def test_eval_explains_a_weights_file_and_names_a_damaged_checkpoint(capsys, tmp_path):
    from cnnkit import models

    io.save(models.create("lenet1"), tmp_path / "weights.npz")
    assert_one_line_error(main_in_process(capsys, "eval", str(tmp_path / "weights.npz")), 1,
                          r"weights.npz' is not a cnnkit checkpoint .*two formats: weights files \(cnnkit.io.save"
                          r".*cnnkit.io.load\(model, path\).*training checkpoints \(cnnkit train")
    (tmp_path / "cut.npz").write_bytes((tmp_path / "weights.npz").read_bytes()[:100])
    assert_one_line_error(main_in_process(capsys, "eval", str(tmp_path / "cut.npz")), 1,
                          r"checkpoint '.*cut.npz' is not a readable .npz archive")


def test_an_explicit_data_root_is_used_or_fails_and_the_search_says_what_it_used(digits, tmp_path, monkeypatch):
    env = tmp_path / "env"
    (env / "mnist").mkdir(parents=True)
    for path in digits.iterdir():
        (env / "mnist" / path.name).write_bytes(path.read_bytes())
    monkeypatch.setenv("CNNKIT_DATA", str(env))
    (tmp_path / "empty").mkdir()
    args = ["train", "lenet1", "--dataset", "mnist", "--epochs", "1", "--max-steps", "1", "--no-progress"]
    assert_one_line_error(run(*args, "--data-root", str(tmp_path / "empty")), 1,
                          rf"dataset 'mnist' \(split 'train'\) not found under root='{re.escape(str(tmp_path))}/empty'")
    result = run(*args)
    assert result.returncode == 0, result.stderr
    assert f"on mnist ({env / 'mnist'}):" in result.stdout


def test_eval_checks_its_output_before_evaluating(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    assert_one_line_error(main_in_process(capsys, "eval", str(tmp_path / "none.npz"), "--confusion",
                                          str(tmp_path / "file" / "cm.png")), 1,
                          "the folder of --confusion .*file is not writable")


def test_resume_with_no_epochs_left_says_nothing_to_do(capsys, digits, tmp_path):
    out = tmp_path / "run"
    assert cli.main(_train_args(digits, out, "--epochs", "1")) == 0
    capsys.readouterr()
    assert cli.main(_train_args(digits, out, "--epochs", "1", "--resume", str(out / "last.npz"))) == 0
    err = capsys.readouterr().err
    assert re.search(r"cnnkit: warning: nothing to do: .*last.npz already holds 1 finished epoch", err), err
