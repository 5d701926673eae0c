"""Training loop: learning, evaluation, history files, exact resume, atomic checkpoints, divergence, freezing,
transfer learning, early stopping, step caps, and LeNet-5 end to end on real Fashion-MNIST images."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from cnnkit import data, io, models, nn, optim, train
from cnnkit import history as history_module
from cnnkit.data import DataLoader, Dataset


def separable(n: int = 48, seed: int = 0) -> Dataset:
    """8x8 images: class 0 bright on the left half, class 1 on the right half, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % 2
    images = rng.integers(0, 60, size=(n, 1, 8, 8))
    for i, y in enumerate(labels):
        images[i, 0, :, 4 * y:4 * y + 4] += 150
    return Dataset(images.astype(np.uint8), labels, ["left", "right"], "separable")


def tiny_model(dtype: str = "float32", dropout: float = 0.0, seed: int = 0) -> nn.Sequential:
    nn.init.manual_seed(seed)
    layers = [nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()]
    if dropout:
        layers.append(nn.Dropout(dropout, seed=7))
    layers.append(nn.Linear(27, 2))
    return nn.Sequential(*layers).to("numpy", dtype)


def loader(dataset: Dataset, batch: int = 8, shuffle: bool = True, dtype: str = "float32", **kw) -> DataLoader:
    return DataLoader(dataset, batch, shuffle=shuffle, seed=3, backend="numpy", dtype=dtype, **kw)


def weights(model: nn.Layer) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in model.state_dict().items()}


def test_fit_learns_a_separable_problem(capsys):
    model = tiny_model()
    history = train.fit(model, loader(separable()), loader(separable(16, seed=1), shuffle=False), epochs=6,
                        optimizer=optim.SGD(model, lr=0.1, momentum=0.9), progress=False)
    assert len(history) == 6 and history.stopped is None
    losses = history.column("train_loss")
    assert losses[-1] < 0.3 * losses[0]
    assert history[-1]["train_acc"] == 1.0 and history[-1]["val_acc"] == 1.0
    assert [r["epoch"] for r in history] == list(range(1, 7))
    assert all(r["images_per_s"] > 0 and r["seconds"] > 0 and r["lr"] == 0.1 for r in history)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 6 and out[-1].startswith("epoch 6/6: train loss")


def test_evaluate_and_predict_match_a_full_batch_forward():
    model = tiny_model("float64")
    ds = separable(21)
    batches = loader(ds, batch=8, shuffle=False, dtype="float64")  # 8 + 8 + 5: batches of unequal size
    x = ds.images.astype(np.float64) / 255
    logits = model.eval().forward(x)
    model.train()
    log_p = logits - logits.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    expected_loss = -log_p[np.arange(21), ds.labels].mean()
    expected_acc = (logits.argmax(1) == ds.labels).mean()
    result = train.evaluate(model, batches)
    assert result["n"] == 21
    assert result["loss"] == pytest.approx(expected_loss, rel=1e-12)
    assert result["accuracy"] == pytest.approx(expected_acc)
    preds, labels = train.predict(model, batches)
    assert preds.dtype == labels.dtype == np.int64
    np.testing.assert_array_equal(labels, ds.labels)
    np.testing.assert_array_equal(preds, logits.argmax(1))
    assert model.training, "evaluate/predict must restore training mode"


def test_history_files_csv_and_json(tmp_path):
    model = tiny_model()
    history = train.fit(model, loader(separable()), loader(separable(16, 1), shuffle=False), epochs=3,
                        checkpoint_dir=tmp_path / "ck", checkpoint_every=2, history_path=tmp_path / "hist",
                        progress=False)
    for folder, stem in ((tmp_path / "ck", "history"), (tmp_path, "hist")):
        with open(folder / f"{stem}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert tuple(rows[0]) == train.COLUMNS
        assert len(rows) == 3
        for row, record in zip(rows, history):
            for key in train.COLUMNS:
                assert float(row[key]) == pytest.approx(record[key], rel=1e-12)
        assert json.loads((folder / f"{stem}.json").read_text()) == history.to_dict()
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "best.npz", "epoch-002.npz", "history.csv", "history.json", "last.npz"]
    assert train.load_checkpoint(tmp_path / "ck" / "epoch-002.npz")["epoch"] == 2


def _resume_setup(seed: int):
    """A float64 run with everything that carries state across epochs: shuffling, augmentation, dropout,
    momentum, weight decay, a schedule and a validation set."""
    model = tiny_model("float64", dropout=0.3, seed=seed)
    opt = optim.SGD(model, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    schedule = optim.StepLR(opt, step_size=1, gamma=0.5)
    train_loader = loader(separable(40), batch=6, dtype="float64", transform=data.random_crop(padding=1))
    val_loader = loader(separable(12, 1), shuffle=False, dtype="float64")
    return model, opt, schedule, train_loader, val_loader


def test_resume_gives_the_same_weights_bit_for_bit(tmp_path):
    model, opt, schedule, tl, vl = _resume_setup(seed=0)
    straight = train.fit(model, tl, vl, 3, opt, schedule, checkpoint_dir=tmp_path / "a", progress=False)

    model_b, opt_b, schedule_b, tl_b, vl_b = _resume_setup(seed=0)
    train.fit(model_b, tl_b, vl_b, 1, opt_b, schedule_b, checkpoint_dir=tmp_path / "b", progress=False)
    # A fresh process would start from scratch: new objects, different initial weights.
    model_c, opt_c, schedule_c, tl_c, vl_c = _resume_setup(seed=99)
    resumed = train.fit(model_c, tl_c, vl_c, 3, opt_c, schedule_c, checkpoint_dir=tmp_path / "b",
                        resume=tmp_path / "b" / "last.npz", progress=False)

    final, again = model.state_dict(), model_c.state_dict()
    assert final.keys() == again.keys()
    for key in final:
        assert np.array_equal(final[key], again[key]), key
    for a, b in zip(opt.state_dict()["momentum_buffers"], opt_c.state_dict()["momentum_buffers"]):
        assert np.array_equal(a, b)
    assert opt_c.lr == opt.lr == 0.1 * 0.5 ** 3
    drop = [k for k, layer in model_c.modules() if isinstance(layer, nn.Dropout)][0]
    assert dict(model_c.modules())[drop].calls == dict(model.modules())[drop].calls
    keep = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")
    assert [{k: r[k] for k in keep} for r in resumed] == [{k: r[k] for k in keep} for r in straight]
    for name in ("last.npz", "best.npz"):
        a, b = train.load_checkpoint(tmp_path / "a" / name), train.load_checkpoint(tmp_path / "b" / name)
        assert a["epoch"] == b["epoch"] and a["best"] == b["best"]
        assert all(np.array_equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_resume_past_the_last_epoch_trains_nothing(tmp_path):
    model, opt, schedule, tl, vl = _resume_setup(seed=0)
    train.fit(model, tl, vl, 2, opt, schedule, checkpoint_dir=tmp_path, progress=False)
    before = weights(model)
    with pytest.warns(UserWarning, match="nothing to do: .*last.npz already holds 2 finished epoch.*epochs=2"):
        history = train.fit(model, tl, vl, 2, opt, schedule, resume=tmp_path / "last.npz", progress=False)
    assert len(history) == 2
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="monitor='val_loss'; resume with the same"):
        train.fit(model, tl, vl, 3, opt, schedule, resume=tmp_path / "last.npz", monitor="val_acc")


def test_checkpoint_functions_live_in_io_and_stay_reachable_here():
    assert train.save_checkpoint is io.save_checkpoint and train.load_checkpoint is io.load_checkpoint
    assert train.CHECKPOINT_FORMAT == io.CHECKPOINT_FORMAT
    assert train.History is history_module.History and train.COLUMNS == history_module.COLUMNS


def test_failed_checkpoint_write_leaves_the_previous_one_intact(tmp_path, monkeypatch):
    real_savez = np.savez
    calls = []

    def savez_that_dies_on_the_second_call(f, **arrays):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"PK\x03\x04 half a zip file")
            raise OSError("No space left on device")
        real_savez(f, **arrays)

    monkeypatch.setattr(np, "savez", savez_that_dies_on_the_second_call)
    model = tiny_model()
    with pytest.raises(OSError, match="No space left"):
        train.fit(model, loader(separable()), epochs=3, checkpoint_dir=tmp_path, progress=False)
    assert len(calls) == 2  # epoch 1's last.npz, then the failed epoch-2 write
    state = train.load_checkpoint(tmp_path / "last.npz")
    assert state["epoch"] == 1 and len(state["history"]["epochs"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv", "history.json", "last.npz"]


class NaNAfter:
    """A loss that turns NaN from call ``n`` on (as a diverging run's would)."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __call__(self, logits, labels):
        self.calls += 1
        loss, dlogits = train.softmax_cross_entropy(logits, labels)
        if self.calls >= self.n:
            return loss * np.nan, dlogits * np.nan
        return loss, dlogits


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    model = tiny_model()
    steps_per_epoch = 6  # 48 samples, batch 8
    with pytest.raises(train.TrainingDiverged, match="diverged: the loss is nan in epoch 2") as info:
        train.fit(model, loader(separable()), loader(separable(16, 1), shuffle=False), epochs=4,
                  loss=NaNAfter(steps_per_epoch + 3), checkpoint_dir=tmp_path, progress=False, log_every=2)
    assert info.value.history.stopped == "diverged" and len(info.value.history) == 1
    for name in ("last.npz", "best.npz"):
        state = train.load_checkpoint(tmp_path / name)
        assert state["epoch"] == 1
        assert all(np.isfinite(v).all() for v in state["model"].values())
    assert len(json.loads((tmp_path / "history.json").read_text())["epochs"]) == 1


def test_frozen_layer_is_unchanged_by_fit():
    model = tiny_model()
    model[0].trainable = False
    before = weights(model)
    train.fit(model, loader(separable()), epochs=2, optimizer=optim.SGD(model, lr=0.1, momentum=0.9),
              progress=False)
    after = model.state_dict()
    assert np.array_equal(before["0.weight"], after["0.weight"]) and np.array_equal(before["0.bias"], after["0.bias"])
    assert not np.array_equal(before["4.weight"], after["4.weight"])


def test_replace_head_then_fine_tune_only_the_head():
    model = tiny_model()
    old_head = model[-1]
    head = train.replace_head(model, 3)
    assert model[-1] is head and head is not old_head
    assert head.weight.shape == (3, 27) and head.backend is model.backend and head.weight.data.dtype == np.float32
    for layer in model.layers[:-1]:
        layer.trainable = False
    ds = separable()
    ds3 = Dataset(ds.images, ds.labels, ["left", "right", "unused"], "three")
    before = weights(model)
    train.fit(model, loader(ds3), epochs=2, optimizer=optim.SGD(model, lr=0.1), progress=False)
    after = model.state_dict()
    assert np.array_equal(before["0.weight"], after["0.weight"])
    assert not np.array_equal(before["4.weight"], after["4.weight"])
    with pytest.raises(TypeError, match="last layer is Linear"):
        train.replace_head(nn.Sequential(nn.Flatten()), 3)
    with pytest.raises(ValueError, match="num_classes"):
        train.replace_head(model, 0)


def test_early_stopping_after_patience_epochs_without_improvement():
    model = tiny_model()
    history = train.fit(model, loader(separable()), loader(separable(16, 1), shuffle=False), epochs=10,
                        optimizer=optim.SGD(model, lr=0.0), early_stopping=2, progress=False)
    # lr 0: the validation loss never improves on epoch 1's, so epochs 2 and 3 exhaust the patience.
    assert len(history) == 3 and history.stopped == "early_stopping"


def test_max_steps_caps_the_whole_run():
    counting = NaNAfter(10 ** 9)
    history = train.fit(tiny_model(), loader(separable()), epochs=5, loss=counting, max_steps=8, progress=False)
    assert counting.calls == 8
    assert len(history) == 1 and history.stopped == "max_steps"  # epoch 2 stopped at step 2 of 6: not finished


def test_fit_rejects_bad_arguments():
    model, tl = tiny_model(), loader(separable())
    with pytest.raises(ValueError, match="epochs"):
        train.fit(model, tl, epochs=0)
    with pytest.raises(ValueError, match="monitor"):
        train.fit(model, tl, monitor="accuracy")
    with pytest.raises(ValueError, match="early_stopping needs a validation"):
        train.fit(model, tl, early_stopping=3)
    with pytest.raises(ValueError, match="max_steps"):
        train.fit(model, tl, max_steps=-1)
    with pytest.raises(ValueError, match="no batches"):
        train.fit(model, loader(separable(4), batch=8, drop_last=True), progress=False)


def test_fit_takes_a_train_config_or_its_fields_as_keywords(tmp_path):
    def run(**how):
        model = tiny_model()
        history = train.fit(model, loader(separable()), loader(separable(16, 1), shuffle=False),
                            optimizer=optim.SGD(model, lr=0.1), **how)
        return weights(model), [{k: r[k] for k in ("train_loss", "val_acc", "lr")} for r in history]

    config = train.TrainConfig(epochs=2, monitor="val_acc", progress=False, checkpoint_dir=tmp_path / "a")
    by_keywords = run(epochs=2, monitor="val_acc", progress=False, checkpoint_dir=tmp_path / "b")
    by_config = run(config=config)
    assert by_config[1] == by_keywords[1]
    assert all(np.array_equal(by_config[0][k], by_keywords[0][k]) for k in by_keywords[0])
    overridden = run(config=config, epochs=1)  # a keyword given with config overrides that field
    assert len(overridden[1]) == 1 and config.epochs == 2
    assert io.load_checkpoint(tmp_path / "a" / "last.npz")["monitor"] == "val_acc"


def test_train_config_checks_its_fields_and_fit_its_keywords():
    with pytest.raises(ValueError, match="log_every must be a positive int"):
        train.TrainConfig(log_every=0)
    with pytest.raises(ValueError, match="checkpoint_every"):
        train.TrainConfig(checkpoint_every=True)
    with pytest.raises(ValueError, match="monitor must be one of"):
        train.TrainConfig(monitor="loss")
    with pytest.raises(TypeError, match="unexpected keyword argument.*checkpoint_evry.*checkpoint_every"):
        train.fit(tiny_model(), loader(separable()), checkpoint_evry=2)


def _lenet5_loaders(train_set: Dataset, test_set: Dataset, batch: int):
    mean, std = float(train_set.images.mean() / 255), float(train_set.images.std() / 255)
    prep = data.Compose([data.pad(32), data.normalize(mean, std)])
    return (DataLoader(train_set, batch, shuffle=True, seed=0, transform=prep, backend="numpy"),
            DataLoader(test_set, 500, transform=prep, backend="numpy"))


@pytest.mark.slow
def test_lenet5_reaches_70_percent_on_the_fashion_mnist_sample():
    """LeNet-5 (modern), 2 epochs of the bundled sample (4000 images), numpy backend: >= 70% test accuracy on
    the sample's 1000 test images. Measured: 0.79, 1.3 s on 2 idle CPU cores (10 s when they were busy)."""
    nn.init.manual_seed(0)
    model = models.lenet5()
    tl, vl = _lenet5_loaders(data.load_sample("train"), data.load_sample("test"), 32)
    history = train.fit(model, tl, vl, 2, optim.SGD(model, lr=0.05, momentum=0.9), progress=False)
    assert history[-1]["val_acc"] >= 0.70, history.epochs


@pytest.mark.slow
def test_lenet5_reaches_90_percent_train_accuracy_on_a_small_real_set():
    """Issue 2: LeNet-5 fits a small real image set (> 90% train accuracy). Data: the first 100 training images
    of each of three Fashion-MNIST classes of the bundled sample (T-shirt/top, Trouser, Bag: 300 images).
    Measured: 0.957 train accuracy in the 4th epoch, under a second on 2 CPU cores."""
    sample = data.load_sample("train")
    keep = np.concatenate([np.flatnonzero(sample.labels == c)[:100] for c in (0, 1, 8)])
    small = sample.subset(keep)
    small = Dataset(small.images, np.searchsorted([0, 1, 8], small.labels).astype(np.int64),
                    ["T-shirt/top", "Trouser", "Bag"], "fashion-mnist-3")
    nn.init.manual_seed(0)
    model = models.lenet5(num_classes=3)
    tl, _ = _lenet5_loaders(small, small, 16)
    history = train.fit(model, tl, epochs=4, optimizer=optim.SGD(model, lr=0.05, momentum=0.9), progress=False)
    assert history[-1]["train_acc"] > 0.90, history.epochs
    assert train.evaluate(model, tl)["accuracy"] > 0.90
    assert math.isfinite(history[-1]["train_loss"])


@pytest.mark.slow
def test_lenet5_learns_the_synthetic_digit_set():
    """Issue 2: LeNet-5 reaches > 90% train accuracy on a small digit set within CI time: 60 rendered images of
    each digit (cnnkit.data.synthetic_digits), 300 steps of batch 32 on the numpy backend; held-out digits
    drawn with another seed must be recognised too (> 80%)."""
    nn.init.manual_seed(0)
    model = models.lenet5()
    tl, vl = _lenet5_loaders(data.synthetic_digits(60, seed=0), data.synthetic_digits(20, seed=1), 32)
    history = train.fit(model, tl, vl, epochs=16, optimizer=optim.SGD(model, lr=0.05, momentum=0.9),
                        max_steps=300, progress=False)
    assert train.evaluate(model, tl)["accuracy"] > 0.90, history.epochs
    assert history[-1]["val_acc"] > 0.80, history.epochs


def test_a_partial_epoch_resumes_at_its_step_bit_for_bit(tmp_path):
    model, opt, schedule, tl, vl = _resume_setup(seed=0)  # 40 samples, batch 6: 7 steps per epoch
    straight = train.fit(model, tl, vl, 3, opt, schedule, progress=False)
    out = tmp_path / "ck"
    for max_steps, seed in ((10, 0), (16, 98), (None, 99)):  # stop in epoch 2 at step 3, in epoch 3 at step 2, end
        model_b, opt_b, schedule_b, tl_b, vl_b = _resume_setup(seed=seed)
        resume = None if seed == 0 else out / "last.npz"
        resumed = train.fit(model_b, tl_b, vl_b, 3, opt_b, schedule_b, checkpoint_dir=out, resume=resume,
                            max_steps=max_steps, progress=False)
        state = train.load_checkpoint(out / "last.npz")
        if max_steps is not None:
            assert resumed.stopped == "max_steps" and state["steps"] == max_steps
            assert state["epoch"] == max_steps // 7 and state["partial"]["step"] == max_steps % 7
            assert len(resumed) == state["epoch"]  # the partial epoch is not recorded as finished
    assert state["epoch"] == 3 and state["partial"] is None
    for key, value in model.state_dict().items():
        assert np.array_equal(value, model_b.state_dict()[key]), key
    for a, b in zip(opt.state_dict()["momentum_buffers"], opt_b.state_dict()["momentum_buffers"]):
        assert np.array_equal(a, b)
    keep = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")
    assert [{k: r[k] for k in keep} for r in resumed] == [{k: r[k] for k in keep} for r in straight]


class ExplodeAfter(NaNAfter):
    """A loss that stays finite but grows 1000-fold from call ``n`` on."""

    def __call__(self, logits, labels):
        self.calls += 1
        loss, dlogits = train.softmax_cross_entropy(logits, labels)
        return (loss * 1e3, dlogits) if self.calls >= self.n else (loss, dlogits)


def test_a_finite_exploding_loss_diverges_and_keeps_the_last_good_checkpoint(tmp_path):
    explode = ExplodeAfter(6 + 1)  # 6 steps per epoch: epoch 2's mean loss is about 1000 times epoch 1's
    with pytest.raises(train.TrainingDiverged, match=r"over diverge_factor=100 times max\(its start [\d.]+, 1\) "
                                                     r"in epoch 2"):
        train.fit(tiny_model(), loader(separable()), epochs=3, loss=explode, checkpoint_dir=tmp_path, progress=False)
    assert train.load_checkpoint(tmp_path / "last.npz")["epoch"] == 1
    explode = ExplodeAfter(7)
    history = train.fit(tiny_model(), loader(separable()), epochs=2, loss=explode, diverge_factor=None,
                        progress=False)
    assert len(history) == 2 and history.stopped is None
    for bad in (float("inf"), float("nan"), 1.0, "10"):
        with pytest.raises(ValueError, match="diverge_factor must be a finite number > 1"):
            train.TrainConfig(diverge_factor=bad)


def test_resume_keeps_the_given_hyperparameters_when_asked(tmp_path):
    model = tiny_model()
    train.fit(model, loader(separable()), epochs=1, optimizer=optim.SGD(model, lr=0.1, momentum=0.9),
              checkpoint_dir=tmp_path, progress=False)
    for keep, lr, momentum in ((False, 0.1, 0.9), (True, 0.5, 0.0)):
        model = tiny_model()
        opt = optim.SGD(model, lr=0.5, momentum=0.0)
        history = train.fit(model, loader(separable()), epochs=2, optimizer=opt, resume=tmp_path / "last.npz",
                            keep_hyperparameters=keep, progress=False)
        assert (opt.lr, opt.momentum, history[-1]["lr"]) == (lr, momentum, lr)
    opt = optim.SGD(model, lr=0.4)
    schedule = optim.StepLR(opt, step_size=1, gamma=0.5)
    train.fit(model, loader(separable()), epochs=2, optimizer=opt, schedule=schedule, checkpoint_dir=tmp_path / "s",
              progress=False)
    opt = optim.SGD(model, lr=0.8)
    schedule = optim.StepLR(opt, step_size=1, gamma=0.5)
    history = train.fit(model, loader(separable()), epochs=3, optimizer=opt, schedule=schedule, progress=False,
                        resume=tmp_path / "s" / "last.npz", keep_hyperparameters=True)
    assert history[-1]["lr"] == 0.8 * 0.5 ** 2 and schedule.base_lr == 0.8


def test_output_folders_are_checked_and_stale_temp_files_cleaned_before_the_first_step(tmp_path):
    (tmp_path / "file").write_text("x")
    counting = NaNAfter(10 ** 9)
    with pytest.raises(OSError, match="checkpoint_dir .*file/ck is not writable"):
        train.fit(tiny_model(), loader(separable()), loss=counting, checkpoint_dir=tmp_path / "file" / "ck")
    with pytest.raises(OSError, match="history_path .*is not writable"):
        train.fit(tiny_model(), loader(separable()), loss=counting, history_path=tmp_path / "file" / "h" / "run")
    assert counting.calls == 0
    stale, unrelated = tmp_path / "ck" / ".last.npz.999999999.0badf00d.tmp", tmp_path / "ck" / ".notes.tmp"
    stale.parent.mkdir()
    stale.write_bytes(b"PK half")
    unrelated.write_text("mine")
    train.fit(tiny_model(), loader(separable()), checkpoint_dir=tmp_path / "ck", progress=False)
    assert not stale.exists() and unrelated.exists()


def test_default_loss_runs_on_the_models_backend(monkeypatch):
    """The current backend stays NumPy, the model is on Numba: fit's and evaluate's default loss run on Numba
    (on CuPy a NumPy loss would refuse the device logits)."""
    from cnnkit.backend import backend, get_backend

    assert get_backend().name == "numpy"
    model = tiny_model().to("numba")
    calls = {"numba": 0, "numpy": 0}
    for name in calls:
        ops = backend(name).ops
        monkeypatch.setattr(ops, "softmax_cross_entropy", lambda *a, _f=ops.softmax_cross_entropy, _n=name:
                            calls.__setitem__(_n, calls[_n] + 1) or _f(*a))
    data_ = DataLoader(separable(16), 8, shuffle=False, backend="numba")
    train.fit(model, data_, epochs=1, val=data_, progress=False)
    assert calls == {"numba": 4, "numpy": 0}  # two training steps, two validation batches
