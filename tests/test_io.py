"""Weight files (.npz), atomic writes, and PyTorch state-dict exchange."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch
from tolerances import MODEL_REL_F32, max_rel_err

from cnnkit import io, models, nn
from cnnkit.interop.torch import torch_lenet5, torch_resnet20


def _files(directory):
    return sorted(os.listdir(directory))


def _randomise_buffers(model, seed):
    """Give batch-norm running statistics non-default values so that loading them is observable."""
    rng = np.random.default_rng(seed)
    state = model.state_dict()
    for key in state:
        if key.endswith("running_mean"):
            state[key] = rng.standard_normal(state[key].shape).astype(np.float32)
        elif key.endswith("running_var"):
            state[key] = rng.uniform(0.5, 2.0, state[key].shape).astype(np.float32)
    model.load_state_dict(state)


# ----------------------------------------------------------------------------------------------- .npz files
def test_save_load_round_trip_is_exact(tmp_path):
    nn.init.manual_seed(1)
    src = models.resnet(20)
    _randomise_buffers(src, 0)
    nn.init.manual_seed(2)
    dst = models.resnet(20)
    path = tmp_path / "weights.npz"
    io.save(src, path)
    assert _files(tmp_path) == ["weights.npz"]
    io.load(dst, path)
    a, b = src.state_dict(), dst.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        assert a[key].dtype == b[key].dtype


def test_load_errors_name_the_file(tmp_path):
    path = tmp_path / "lenet.npz"
    io.save(models.lenet5(), path)
    with pytest.raises(KeyError, match=r"lenet\.npz.*missing keys \['13\.bias'") as info:
        io.load(models.lenet5(classic=True), path)  # classic: subsampling at 2, 6; its output Linear is 13
    assert "unexpected keys" in str(info.value)
    with pytest.raises(ValueError, match=r"lenet\.npz.*shape mismatch for '11\.bias'"):
        io.load(models.lenet5(num_classes=7), path)

    mlp = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(KeyError, match=r"unexpected keys \['extra'\]"):
        io.load(mlp, _save_state(tmp_path / "extra.npz", {**mlp.state_dict(), "extra": np.zeros(1)}))
    io.load(mlp, tmp_path / "extra.npz", strict=False)  # extra keys ignored when not strict
    with pytest.raises(KeyError, match=r"missing keys \['1\.bias'\]"):
        io.load(mlp, _save_state(tmp_path / "missing.npz", {"1.weight": np.zeros((2, 4))}))


def _save_state(path, state):
    with open(path, "wb") as f:
        np.savez(f, **state)
    return path


def test_load_rejects_non_npz_and_missing_files(tmp_path):
    model = nn.Sequential(nn.Linear(2, 2))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="bad.npz is not a readable .npz"):
        io.load(model, bad)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(ValueError, match="single array"):
        io.load(model, single)
    with pytest.raises(FileNotFoundError):
        io.load(model, tmp_path / "absent.npz")


def test_save_failure_keeps_previous_file_and_leaves_no_temp(tmp_path, monkeypatch):
    model = models.lenet5()
    path = tmp_path / "w.npz"
    io.save(model, path)
    before = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"half of a zip")  # some bytes reach the temporary file, then the writer dies
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    nn.init.manual_seed(5)
    with pytest.raises(OSError, match="disk full"):
        io.save(models.lenet5(), path)
    assert path.read_bytes() == before
    assert _files(tmp_path) == ["w.npz"]


def test_atomic_write_new_file_and_failure_without_previous(tmp_path):
    path = tmp_path / "log.txt"
    with pytest.raises(RuntimeError):
        with io.atomic_write(path, "w") as f:
            f.write("partial")
            raise RuntimeError("interrupted")
    assert _files(tmp_path) == []
    with io.atomic_write(path, "w") as f:
        f.write("complete")
    assert path.read_text() == "complete" and _files(tmp_path) == ["log.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # permissions as for a plain open()
    with pytest.raises(ValueError, match="mode"):
        with io.atomic_write(path, "a"):
            pass


# ----------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_keeps_types(tmp_path):
    state = {"a": np.arange(6.0).reshape(2, 3), "n": 3, "f": 0.25, "s": "x", "none": None, "t": (1, 2),
             "g": np.float32(0.5), "nested": {"list": [np.ones(2, np.float32), None, 1]}}
    assert io.save_checkpoint(tmp_path / "c.npz", state) == tmp_path / "c.npz"
    back = io.load_checkpoint(tmp_path / "c.npz")
    assert back["n"] == 3 and back["f"] == 0.25 and back["s"] == "x" and back["none"] is None
    assert back["t"] == [1, 2] and back["g"] == 0.5 and type(back["g"]) is float
    np.testing.assert_array_equal(back["a"], state["a"])
    assert back["nested"]["list"][0].dtype == np.float32 and back["nested"]["list"][1:] == [None, 1]
    with np.load(tmp_path / "c.npz", allow_pickle=False) as npz:  # the structure is JSON, no pickle anywhere
        assert sorted(npz.files) == ["__meta__", "a0", "a1"]


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        io.load_checkpoint(tmp_path / "missing.npz")
    np.savez(tmp_path / "weights.npz", w=np.ones(2))
    with pytest.raises(ValueError, match="not a cnnkit checkpoint"):
        io.load_checkpoint(tmp_path / "weights.npz")
    np.savez(tmp_path / "future.npz", __meta__=np.array('{"format": "cnnkit-checkpoint-99", "state": {}}'))
    with pytest.raises(ValueError, match="format 'cnnkit-checkpoint-99', expected 'cnnkit-checkpoint-1'"):
        io.load_checkpoint(tmp_path / "future.npz")
    with pytest.raises(TypeError, match="cannot store a set"):
        io.save_checkpoint(tmp_path / "bad.npz", {"s": {1, 2}})
    assert not (tmp_path / "bad.npz").exists()


# ----------------------------------------------------------------------------------------------- PyTorch
@pytest.mark.parametrize("name,torch_model,input_shape", [
    ("lenet5", torch_lenet5, (1, 32, 32)),
    ("resnet20", torch_resnet20, (3, 32, 32)),
])
def test_from_torch_gives_the_torch_forward(name, torch_model, input_shape):
    torch.manual_seed(0)
    ref = torch_model()
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics and affine terms
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    ref.eval()
    model = models.create(name).eval()
    assert set(model.state_dict()) == set(ref.state_dict())
    io.from_torch(model, ref.state_dict())
    x = np.random.default_rng(0).standard_normal((4, *input_shape)).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    got = model(x)
    assert got.dtype == np.float32
    err = max_rel_err(got.astype(np.float64), expected.astype(np.float64))
    assert err <= MODEL_REL_F32, f"{name}: max relative error {err:.3g}"


def test_from_torch_reports_mismatched_keys_and_shapes():
    model = models.lenet5()
    state = torch_lenet5().state_dict()
    state["12.weight"] = state.pop("11.weight")
    with pytest.raises(KeyError, match=r"PyTorch state dict.*missing keys \['11\.weight'\].*unexpected keys "
                                       r"\['12\.weight'\]"):
        io.from_torch(model, state)
    state = torch_lenet5().state_dict()
    state["0.weight"] = torch.zeros(6, 1, 3, 3)
    with pytest.raises(ValueError, match=r"shape mismatch for '0\.weight'"):
        io.from_torch(model, state)


def test_from_torch_drops_torch_only_buffers_the_model_lacks():
    model = nn.Sequential(nn.Linear(3, 2))
    ref = torch.nn.Sequential(torch.nn.Linear(3, 2))
    state = {**ref.state_dict(), "0.num_batches_tracked": torch.tensor(7)}
    io.from_torch(model, state)
    np.testing.assert_array_equal(model[0].weight.data, ref[0].weight.detach().numpy())


@pytest.mark.parametrize("name,torch_model", [("lenet5", torch_lenet5), ("resnet20", torch_resnet20)])
def test_to_torch_state_dict_loads_into_torch(name, torch_model):
    model = models.create(name).eval()
    _randomise_buffers(model, 3)
    ref = torch_model().eval()
    ref.load_state_dict(io.to_torch_state_dict(model))  # strict: the keys are the same
    x = np.random.default_rng(1).standard_normal((2, *model.input_shape)).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    assert max_rel_err(model(x).astype(np.float64), expected.astype(np.float64)) <= MODEL_REL_F32


def test_every_checkpoint_load_error_names_the_file_and_what_is_wrong(tmp_path):
    good = tmp_path / "good.npz"
    io.save_checkpoint(good, {"model": {"w": np.arange(2000.0)}, "epoch": 1})
    data = good.read_bytes()
    cases = {"truncated.npz": data[: len(data) // 2], "text.npz": b"not a checkpoint at all"}
    damaged = bytearray(data)
    damaged[data.index(np.arange(2000.0).tobytes()) + 4000] ^= 0xFF  # a byte inside array a0
    cases["crc.npz"] = bytes(damaged)
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    np.save(tmp_path / "array.npy", np.zeros(3))
    (tmp_path / "array.npy").rename(tmp_path / "array.npz")
    np.savez(tmp_path / "badmeta.npz", __meta__=np.array("{not json"))
    np.savez(tmp_path / "missing.npz", __meta__=np.array('{"format": "cnnkit-checkpoint-1", '
                                                         '"state": {"w": {"__array__": "a7"}}}'))
    io.save(nn.Sequential(nn.Linear(2, 3)), tmp_path / "weights.npz")
    (tmp_path / "folder.npz").mkdir()
    expected = {"truncated.npz": "not a readable .npz archive .*File is not a zip file",
                "text.npz": "not a readable .npz archive .*it is not a NumPy file",
                "crc.npz": "is damaged .*Bad CRC-32", "array.npz": "holds a single NumPy array",
                "badmeta.npz": "is damaged .*JSONDecodeError", "missing.npz": "is damaged .*KeyError",
                "weights.npz": r"no __meta__ entry.*weights files \(cnnkit.io.save.*training checkpoints",
                "folder.npz": "is a folder"}
    for name, pattern in expected.items():
        with pytest.raises((ValueError, FileNotFoundError)) as info:
            io.load_checkpoint(tmp_path / name)
        message = str(info.value)
        assert str(tmp_path / name) in message and re.search(pattern, message), message
        assert "allow_pickle" not in message and "context manager" not in message
        if name != "folder.npz":
            assert isinstance(info.value, io.CheckpointError)


def test_stale_temp_files_of_atomic_write_are_cleaned(tmp_path):
    stale = tmp_path / ".last.npz.999999999.0badf00d.tmp"
    running = tmp_path / f".last.npz.{os.getppid()}.0badf00d.tmp"  # a live process may still be writing it
    others = [tmp_path / ".last.npz.tmp", tmp_path / "last.npz.123.0badf00d.tmp", tmp_path / "last.npz"]
    for path in (stale, running, *others):
        path.write_bytes(b"x")
    assert io.clean_stale_temp_files(tmp_path) == [stale]
    assert not stale.exists() and running.exists() and all(p.exists() for p in others)
    assert io.clean_stale_temp_files(tmp_path / "absent") == []


def test_atomic_write_errors_name_the_target_not_the_temp_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError) as info:
        with io.atomic_write(tmp_path / "file" / "last.npz") as f:
            f.write(b"never")
    assert str(tmp_path / "file" / "last.npz") in str(info.value) and ".tmp" not in str(info.value)
