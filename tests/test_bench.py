"""Benchmarks: every asv benchmark runs one iteration on the NumPy backend, their shape lists match the models,
unavailable backends are skipped (not failed), and ``cnnkit bench`` / bench/compare.py run end to end with and
without PyTorch."""
from __future__ import annotations

import importlib
import inspect
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tolerances import MODEL_REL_F32

from cnnkit import bench, models
from cnnkit import functional as F
from cnnkit.analysis import flops
from cnnkit.backend import unavailable_reason
from cnnkit.backends import BACKEND_NAMES
from cnnkit.interop.torch import torch_lenet5, torch_mirror, torch_resnet20

REPO = Path(__file__).resolve().parents[1]
BENCH_PREFIXES = ("time_", "peakmem_", "track_", "mem_")


def _import_benchmarks():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        return [importlib.import_module(f"benchmarks.{name}") for name in ("bench_ops", "bench_models")]
    finally:
        sys.path.remove(str(REPO / "bench"))


BENCH_OPS, BENCH_MODELS = _import_benchmarks()


def _quick_params(cls) -> list[tuple]:
    """The NumPy backend, the smallest batch, every value of the other parameters (shapes, models)."""
    axes = []
    for name, values in zip(cls.param_names, cls.params, strict=True):
        axes.append(["numpy"] if name == "backend" else [min(values)] if name == "batch" else list(values))
    return list(itertools.product(*axes))


def _cases():
    """(benchmark class, method name, params) for every benchmark asv would discover, as asv finds them."""
    for module in (BENCH_OPS, BENCH_MODELS):
        for cls_name, cls in vars(module).items():
            if cls_name.startswith("_") or not inspect.isclass(cls) or cls.__module__ != module.__name__:
                continue
            for method in (m for m in dir(cls) if m.startswith(BENCH_PREFIXES)):
                for params in _quick_params(cls):
                    yield pytest.param(cls, method, params, id=f"{cls_name}.{method}{list(params)}")


@pytest.mark.parametrize(("cls", "method", "params"), list(_cases()))
def test_asv_benchmark_runs_once_on_numpy(cls, method, params):
    bench = cls()
    bench.setup(*params)
    getattr(bench, method)(*params)
    if hasattr(bench, "teardown"):
        bench.teardown(*params)


def test_every_benchmark_class_is_collected():
    """Guards the discovery above: a renamed prefix or a class without benchmarks would go unnoticed."""
    names = {c.values[0].__name__ for c in _cases()}
    assert names == {"Conv2dForward", "Conv2dBackward", "MaxPool2dForward", "MaxPool2dBackward",
                     "AvgPool2dForward", "AvgPool2dBackward", "BatchNormForward", "BatchNormBackward",
                     "OpExample", "Inference", "TrainingStep", "TrainingMemory"}


def test_unavailable_backends_and_oversized_cpu_runs_are_skipped_not_failed():
    """asv counts NotImplementedError from setup as 'skipped'; anything else would be a failure."""
    for name in (n for n in BACKEND_NAMES if unavailable_reason(n) is not None):
        with pytest.raises(NotImplementedError, match=name):
            BENCH_OPS.Conv2dForward().setup(name, next(iter(BENCH_OPS.CONV_SHAPES)))
        with pytest.raises(NotImplementedError, match=name):
            BENCH_MODELS.TrainingStep().setup("lenet5", name, 1)
    with pytest.raises(NotImplementedError, match="too slow"):
        BENCH_MODELS.TrainingStep().setup("resnet20", "numpy", 256)


def test_op_shapes_are_the_shapes_the_models_run(monkeypatch):
    """The per-op lists are exactly LeNet-5's and ResNet-20's calls (recorded from one training forward of each:
    eval mode folds batch norm into the convs; a conv whose 2x2 subsampling runs in the same call counts as both)."""
    convs, pools, norms = set(), set(), set()
    real = {name: getattr(F, name) for name in ("conv2d", "conv2d_pool", "avg_pool2d", "batch_norm")}

    def record_conv(x, weight, bias, stride, padding):
        k, c, r, s = weight.shape
        strides = F.pair(stride, "stride")
        pads = F.conv_padding(padding, (r, s), (1, 1), strides)
        assert r == s and len(set(pads)) == 1 and strides[0] == strides[1], "the bench lists square convs only"
        convs.add(BENCH_OPS.ConvShape(c, x.shape[2], x.shape[3], k, r, strides[0], pads[0], bias is not None))

    def conv2d(x, weight, bias=None, stride=1, padding=0, *args, **kwargs):
        record_conv(x, weight, bias, stride, padding)
        return real["conv2d"](x, weight, bias, stride, padding, *args, **kwargs)

    def conv2d_pool(x, weight, bias=None, stride=1, padding=0, *args, **kwargs):
        record_conv(x, weight, bias, stride, padding)
        y, pooled = real["conv2d_pool"](x, weight, bias, stride, padding, *args, **kwargs)
        pools.add((pooled.shape[1], 2 * pooled.shape[2], 2 * pooled.shape[3]))
        return y, pooled

    def avg_pool2d(x, kernel_size, *args, **kwargs):
        assert F.pair(kernel_size, "kernel_size") == (2, 2), "the bench times 2x2 pooling"
        pools.add(tuple(x.shape[1:]))
        return real["avg_pool2d"](x, kernel_size, *args, **kwargs)

    def batch_norm(x, *args, **kwargs):
        norms.add(tuple(x.shape[1:]))
        return real["batch_norm"](x, *args, **kwargs)

    for name, fake in (("conv2d", conv2d), ("conv2d_pool", conv2d_pool), ("avg_pool2d", avg_pool2d),
                       ("batch_norm", batch_norm)):
        monkeypatch.setattr(F, name, fake)
    for name in ("lenet5", "resnet20"):
        model = models.create(name)
        model.train()(np.zeros((2, *model.input_shape), np.float32))
    assert convs == set(BENCH_OPS.CONV_SHAPES.values())
    assert pools == set(BENCH_OPS.POOL_SHAPES.values())
    assert norms == set(BENCH_OPS.BN_SHAPES.values())


@pytest.mark.parametrize("name", ["lenet5", "lenet1", "resnet20"])
def test_torch_mirror_has_the_same_keys_and_outputs(name):
    """The PyTorch side of ``cnnkit bench`` runs the same architecture with the same weights."""
    model = bench.build_model(name)
    net = torch_mirror(model)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()}, strict=True)
    x, _ = bench.random_batch(tuple(model.input_shape), 3, 10)
    ours = model.eval()(x)
    with torch.no_grad():
        theirs = net.eval()(torch.from_numpy(x)).numpy()
    assert np.max(np.abs(ours - theirs)) <= MODEL_REL_F32 * np.max(np.abs(theirs))


@pytest.mark.parametrize(("name", "twin"), [("lenet5", torch_lenet5), ("resnet20", torch_resnet20)])
def test_torch_mirror_is_the_hand_written_twin(name, twin):
    """The bench's derived twin and the parity tests' hand-written one are the same tree: same module types at
    the same names, same state-dict keys and shapes."""
    derived, written = torch_mirror(models.create(name)), twin()
    for tree in (lambda net: [(n, type(m)) for n, m in net.named_modules()],
                 lambda net: {k: v.shape for k, v in net.state_dict().items()}):
        assert tree(derived) == tree(written)


def test_deprecated_benchmark_module_is_an_alias(monkeypatch):
    monkeypatch.delitem(sys.modules, "cnnkit.benchmark", raising=False)
    with pytest.warns(DeprecationWarning, match="cnnkit.bench"):
        old = importlib.import_module("cnnkit.benchmark")
    for name in bench.__all__:
        assert getattr(old, name) is getattr(bench, name), name
    assert old.torch_mirror is torch_mirror


def test_torch_mirror_names_what_pytorch_lacks():
    with pytest.raises(NotImplementedError, match="Subsampling"):
        torch_mirror(models.create("lenet5-classic"))


def _bench(tmp_path, *extra):
    return bench.main(["--models", "lenet5", "--backends", "numpy", "--batch", "2", "--mode", "train,infer",
                       "--rounds", "1", "--warmup", "1", "--min-time", "0", "--out", str(tmp_path), *extra])


def _results(tmp_path):
    data = json.loads((tmp_path / "bench.json").read_text())
    return data, {(r["mode"], r["engine"]): r for r in data["results"]}


def test_bench_against_torch_end_to_end(tmp_path, capsys, monkeypatch):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", no_compiler)  # a real compile takes minutes on a shared CI core
    assert _bench(tmp_path) == 0
    out = capsys.readouterr().out
    data, rows = _results(tmp_path)
    assert set(rows) == {(m, e) for m in ("train", "infer") for e in ("numpy", "torch", "torch.compile")}
    for mode in ("train", "infer"):
        ours, eager = rows[mode, "numpy"], rows[mode, "torch"]
        assert ours["ms"] > 0 and eager["ms"] > 0
        assert ours["images_per_s"] == pytest.approx(2 / (ours["ms"] / 1e3))
        assert ours["vs_torch"] == pytest.approx(eager["ms"] / ours["ms"]) and eager["vs_torch"] == 1
        total = flops(models.create("lenet5"), batch_size=2)[-1]
        expected = total["forward"] + (total["backward"] if mode == "train" else 0)
        assert ours["gflop_per_step"] * 1e9 == pytest.approx(expected)
        assert ours["gflop_per_s"] == pytest.approx(ours["gflop_per_step"] / (ours["ms"] / 1e3))
        peak = data["machine"]["fma_peak_gflops"]
        assert data["machine"]["peak_gflops"] == peak and data["machine"]["peak_kind"] == "FMA"
        assert ours["pct_peak"] == pytest.approx(100 * ours["gflop_per_s"] / peak)
        assert rows[mode, "torch.compile"]["ms"] is None
        assert "no C++ compiler" in rows[mode, "torch.compile"]["note"]
    assert data["machine"]["gemm_peak_gflops"] > 0 and data["machine"]["torch"] == torch.__version__
    assert data["machine"]["fma_peak_gflops"] > 0 and "FMA peak" in out and "GFLOP/s" in out
    assert "ms/step" in out and "lenet5" in out and "torch.compile failed here" in out
    assert (tmp_path / "bench.png").stat().st_size > 0



def test_fma_peak_is_plausible_and_scales_with_threads():
    from cnnkit.bench.peak import fma_peak_gflops, vector_lanes

    assert vector_lanes("+avx2,+avx512f,+fma") == 16 and vector_lanes("+avx,+avx2,-avx512f") == 8
    assert vector_lanes("+neon") == 4
    one = fma_peak_gflops(1, repeats=3)
    assert 1.0 < one < 2000.0   # at least one FMA lane at 0.5 GHz, at most 64 lanes at 8 GHz x 2 units
    assert fma_peak_gflops(2, repeats=3) > 0.5 * one   # two threads do not run slower than half of one


def test_peak_falls_back_to_gemm_without_llvmlite(monkeypatch):
    from cnnkit.bench import report

    monkeypatch.setattr(report, "fma_peak_gflops", lambda threads: None)
    peaks = report.measured_peaks("cpu", 1)
    assert peaks["peak_kind"] == "GEMM" and peaks["peak_gflops"] == peaks["gemm_peak_gflops"] > 0


def test_bench_rates_against_the_best_peak_it_read(tmp_path, monkeypatch):
    from cnnkit.bench import report

    readings = iter([110.0, 220.0, 150.0])  # before the cases, after train, after infer: a neighbour came and went
    monkeypatch.setattr(report, "fma_peak_gflops", lambda threads: next(readings))
    monkeypatch.setattr(report, "gemm_peak_gflops", lambda device: 50.0)
    assert _bench(tmp_path, "--no-torch") == 0
    data, rows = _results(tmp_path)
    assert next(readings, None) is None  # read once before the cases and once after each of the two cases
    assert data["machine"]["peak_gflops"] == data["machine"]["fma_peak_gflops"] == 220.0
    assert rows["train", "numpy"]["pct_peak"] == pytest.approx(100 * rows["train", "numpy"]["gflop_per_s"] / 220.0)


def test_bench_with_torch_hidden(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    assert _bench(tmp_path) == 0
    data, rows = _results(tmp_path)
    assert "torch" not in data["machine"]
    assert rows["train", "torch"]["ms"] is None and rows["train", "torch"]["note"] == "PyTorch is not installed"
    assert rows["train", "numpy"]["ms"] > 0 and rows["train", "numpy"]["vs_torch"] is None
    assert "PyTorch is not installed" in capsys.readouterr().out


def test_compare_script_without_torch(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "bench/compare.py"), "--models", "lenet1", "--backends",
                          "numpy", "--batch", "2", "--mode", "infer", "--rounds", "1", "--warmup", "0",
                          "--min-time", "0", "--no-torch", "--out", str(tmp_path)],
                         capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    table_rows = [line.split() for line in out.splitlines() if line.startswith("lenet1")]
    assert [row[:4] for row in table_rows] == [["lenet1", "2", "infer", "numpy"]]
    data, rows = _results(tmp_path)
    assert set(rows) == {("infer", "numpy")} and data["config"]["no_torch"] is True


@pytest.mark.parametrize(("argv", "message"), [
    (["--backends", "tensorflow"], "unknown backend 'tensorflow'"),
    (["--backends", "numpy", "--device", "gpu"], "does not run on --device gpu"),
    (["--models", "alexnet"], "unknown model(s) alexnet"),
])
def test_bad_backend_or_model_is_a_clear_error(tmp_path, capsys, argv, message):
    assert bench.main([*argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--batch", "0"], ["--mode", "fit"], ["--rounds", "0"]])
def test_bad_numbers_are_rejected_by_the_parser(argv):
    with pytest.raises(SystemExit):
        bench.main(argv)


def test_op_profile_times_each_op_of_a_step():
    from cnnkit.backend import backend
    from cnnkit.bench.opprofile import format_profile, profile

    before = dict(vars(backend("numpy").ops))
    result = profile("lenet5", "numpy", batch=2, steps=2, warmup=1)
    assert dict(vars(backend("numpy").ops)) == before, "the ops are restored after the profile"
    ops = result["ops"]
    assert {"conv2d_forward", "conv2d_pool_forward", "conv2d_backward", "softmax_cross_entropy"} <= set(ops)
    assert ops["conv2d_pool_forward"]["calls"] == 2 and ops["conv2d_forward"]["calls"] == 1  # C1, C3 pooled; C5
    assert all(op["ms"] > 0 for op in ops.values())
    assert result["wall_ms"] > 0 and result["host_ms"] > 0
    text = format_profile(result)
    assert "conv2d_backward" in text and "(outside the ops)" in text
    assert result["kernels"] == {} and "(all kernels)" not in text, "numpy launches no kernels"


@pytest.mark.cudasim
def test_op_profile_times_each_cuda_kernel():
    from cnnkit.backends.cudasim.runtime import SimulatorRuntime
    from cnnkit.bench.opprofile import format_profile, profile

    launch = SimulatorRuntime.launch
    result = profile("lenet5", "cudasim", batch=1, steps=1, warmup=0)
    assert SimulatorRuntime.launch is launch, "the runtime's launch is restored after the profile"
    kernels = result["kernels"]
    assert {"conv2d_fwd_direct", "conv2d_bwd_weight_gemm_tm1", "xent_rows"} <= set(kernels)
    assert kernels["avg_pool2d_fwd"]["calls"] == 2 and all(k["ms"] > 0 for k in kernels.values())
    assert "(all kernels)" in format_profile(result)


@pytest.mark.parametrize("argv, message", [(["--steps", "0"], "--steps"), (["--batch", "-1"], "--batch"),
                                           (["--mode", "eval"], "--mode")])
def test_op_profile_refuses_bad_options_naming_them(argv, message, capsys):
    from cnnkit.bench.opprofile import main

    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err
