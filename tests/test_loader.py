"""DataLoader (batches, determinism, epochs, drop_last, backend), batch transforms, and split."""
from __future__ import annotations

import numpy as np
import pytest

import cnnkit as ck
from cnnkit.data import (
    Compose,
    DataLoader,
    Dataset,
    normalize,
    pad,
    random_crop,
    random_hflip,
    random_rotation,
    split,
)


def make_dataset(n=50, c=1, h=6, w=5, classes=5, seed=0) -> Dataset:
    """Images whose first pixel is the sample index (so batches can be traced back), labels cycling classes."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, c, h, w), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n)
    return Dataset(images, (np.arange(n) % classes).astype(np.int64), [f"k{i}" for i in range(classes)], "toy")


def sample_ids(x) -> np.ndarray:
    return np.rint(np.asarray(x)[:, 0, 0, 0] * 255).astype(int)


def epoch_batches(loader):
    return [(np.asarray(x).copy(), np.asarray(y).copy()) for x, y in loader]


# ---------------------------------------------------------------- DataLoader

def test_batches_are_scaled_float_nchw_with_int64_labels():
    ds = make_dataset()
    batches = epoch_batches(DataLoader(ds, 16))
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    x, y = batches[0]
    assert x.dtype == np.float32 and x.shape == (16, 1, 6, 5) and y.dtype == np.int64
    np.testing.assert_allclose(x, ds.images[:16] / 255, rtol=1e-6)
    np.testing.assert_array_equal(y, ds.labels[:16])
    x64, _ = next(iter(DataLoader((ds.images.astype(np.float64), ds.labels), 8, dtype="float64")))
    assert x64.dtype == np.float64
    np.testing.assert_array_equal(x64, ds.images[:8])  # float input is used as it is, not rescaled


def test_len_and_drop_last():
    ds = make_dataset(n=50)
    assert len(DataLoader(ds, 16)) == 4 and len(DataLoader(ds, 16, drop_last=True)) == 3
    assert len(DataLoader(ds, 10, drop_last=True)) == 5 == len(DataLoader(ds, 10))
    batches = epoch_batches(DataLoader(ds, 16, shuffle=True, drop_last=True))
    assert [len(y) for _, y in batches] == [16, 16, 16]
    assert len(DataLoader(ds, 64, drop_last=True)) == 0 and epoch_batches(DataLoader(ds, 64, drop_last=True)) == []


def test_shuffle_is_seeded_per_epoch_and_covers_every_sample_once():
    ds = make_dataset(n=50)
    a, b = DataLoader(ds, 7, shuffle=True, seed=3), DataLoader(ds, 7, shuffle=True, seed=3)
    ids_a0 = np.concatenate([sample_ids(x) for x, _ in epoch_batches(a)])
    ids_b0 = np.concatenate([sample_ids(x) for x, _ in epoch_batches(b)])
    np.testing.assert_array_equal(ids_a0, ids_b0)
    np.testing.assert_array_equal(np.sort(ids_a0), np.arange(50))
    np.testing.assert_array_equal(ids_a0, np.random.default_rng((3, 0)).permutation(50))
    ids_a1 = np.concatenate([sample_ids(x) for x, _ in epoch_batches(a)])  # internal counter: epoch 1
    assert not np.array_equal(ids_a0, ids_a1) and a.epoch == 2
    b.set_epoch(1)
    np.testing.assert_array_equal(np.concatenate([sample_ids(x) for x, _ in epoch_batches(b)]), ids_a1)
    other_seed = np.concatenate([sample_ids(x) for x, _ in epoch_batches(DataLoader(ds, 7, shuffle=True, seed=4))])
    assert not np.array_equal(ids_a0, other_seed)
    for x, y in DataLoader(ds, 7, shuffle=True, seed=3):  # labels travel with their images
        np.testing.assert_array_equal(np.asarray(y), ds.labels[sample_ids(x)])


def test_unshuffled_order_is_the_dataset_order_every_epoch():
    loader = DataLoader(make_dataset(n=20), 8)
    for _ in range(2):
        np.testing.assert_array_equal(np.concatenate([sample_ids(x) for x, _ in loader]), np.arange(20))


def test_augmentation_is_reproducible_per_seed_and_epoch():
    ds = make_dataset(n=30, h=8, w=8)
    aug = Compose([random_crop(padding=2), random_hflip(), random_rotation(10)])
    a, b = DataLoader(ds, 8, transform=aug, seed=1), DataLoader(ds, 8, transform=aug, seed=1)
    first, again = epoch_batches(a), epoch_batches(b)
    for (xa, ya), (xb, yb) in zip(first, again):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    second = epoch_batches(a)
    assert not np.array_equal(first[0][0], second[0][0])
    np.testing.assert_array_equal(first[0][1], second[0][1])  # no shuffle: same labels, new augmentation


def test_backend_arrays_and_current_backend():
    ds = make_dataset()
    x, y = next(iter(DataLoader(ds, 4, backend="numpy")))
    assert ck.backend("numpy").is_native(x) and ck.backend("numpy").is_native(y)
    loader = DataLoader(ds, 4)
    with ck.use_backend("numpy") as be:
        x, _ = next(iter(loader))
        assert be.is_native(x)
    with pytest.raises(ValueError, match="backend must be one of"):
        DataLoader(ds, 4, backend="tpu")


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch_size=0), "batch_size must be at least 1"),
    (dict(batch_size=2.5), "batch_size must be a non-negative int"),
    (dict(batch_size=4, dtype="int8"), "dtype must be one of float32, float64"),
    (dict(batch_size=4, seed=-1), "seed must be a non-negative int"),
    (dict(batch_size=4, transform="flip"), "transform must be callable"),
])
def test_loader_rejects_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        DataLoader(make_dataset(), **kwargs)


def test_loader_rejects_bad_arrays():
    images = np.zeros((4, 1, 2, 2), np.uint8)
    with pytest.raises(ValueError, match=r"labels must be integers shaped \(4,\)"):
        DataLoader((images, np.zeros(3, np.int64)), 2)
    with pytest.raises(ValueError, match=r"images must be uint8 or float, shaped \(N, C, H, W\)"):
        DataLoader((images[:, 0], np.zeros(4, np.int64)), 2)
    with pytest.raises(TypeError, match="needs a Dataset or an \\(images, labels\\) pair"):
        DataLoader(images, 2)
    with pytest.raises(ValueError, match="epoch must be a non-negative int"):
        DataLoader((images, np.zeros(4, np.int64)), 2).set_epoch(-1)


# ---------------------------------------------------------------- transforms

RNG = np.random.default_rng(7)


def float_batch(n=6, c=2, h=7, w=7, dtype=np.float32):
    return RNG.random((n, c, h, w)).astype(dtype)


def test_pad_28_to_32_is_centred_zero_border():
    x = float_batch(3, 1, 28, 28) + 1
    out = pad(32)(x, RNG)
    assert out.shape == (3, 1, 32, 32) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, :, 2:30, 2:30], x)
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert np.all(out[:, :, border] == 0)
    assert pad((9, 8), value=-1)(float_batch(1, 1, 6, 5), RNG)[0, 0, 0, 0] == -1
    with pytest.raises(ValueError, match="images are 28x28, larger than the target"):
        pad(24)(x, RNG)
    with pytest.raises(ValueError, match=r"pad\(to=\) must be a non-negative int"):
        pad(-3)


def test_normalize_per_channel_and_scalar():
    x = float_batch(4, 3)
    out = normalize([0.1, 0.2, 0.3], [0.5, 1.0, 2.0])(x, RNG)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, 2], (x[:, 2] - 0.3) / 2.0, rtol=1e-6)
    np.testing.assert_allclose(normalize(0.5, 0.25)(x, RNG), (x - 0.5) / 0.25, rtol=1e-6)
    with pytest.raises(ValueError, match="2 mean/std values for a batch of 3 channels"):
        normalize([0, 0], [1, 1])(x, RNG)
    with pytest.raises(ValueError, match="std must be positive"):
        normalize(0, 0)
    with pytest.raises(ValueError, match="batch must be a float NumPy array"):
        normalize(0, 1)(x[0], RNG)


def test_random_crop_outputs_shifted_windows_of_the_padded_images():
    x = float_batch(20, 2, 5, 6) + 1
    out = random_crop(padding=2)(x, np.random.default_rng(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    offsets = set()
    for i in range(len(x)):  # each output equals exactly one window of its own padded image
        hits = [(dy, dx) for dy in range(5) for dx in range(5)
                if np.array_equal(out[i], padded[i, :, dy:dy + 5, dx:dx + 6])]
        assert len(hits) == 1
        offsets.add(hits[0])
    assert len(offsets) > 5  # offsets differ between images
    np.testing.assert_array_equal(random_crop(padding=0)(x, RNG), x)
    assert random_crop(size=4, padding=1)(x, RNG).shape == (20, 2, 4, 4)
    with pytest.raises(ValueError, match="crop 9x9 is larger than the padded image 7x8"):
        random_crop(size=9, padding=1)(x, RNG)


def test_random_hflip_mirrors_some_images_exactly():
    x = float_batch(40)
    np.testing.assert_array_equal(random_hflip(1.0)(x, RNG), x[..., ::-1])
    np.testing.assert_array_equal(random_hflip(0.0)(x, RNG), x)
    out = random_hflip()(x, np.random.default_rng(0))
    flipped = np.array([np.array_equal(o, xi[..., ::-1]) for o, xi in zip(out, x)])
    same = np.array([np.array_equal(o, xi) for o, xi in zip(out, x)])
    assert np.all(flipped ^ same) and 8 < flipped.sum() < 32
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        random_hflip(1.5)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_random_rotation_zero_is_identity_and_90_matches_rot90(mode):
    x = float_batch(3, 2, 6, 6, dtype=np.float64)
    np.testing.assert_allclose(random_rotation(0, mode=mode)(x, RNG), x, rtol=0, atol=1e-12)
    np.testing.assert_allclose(random_rotation((90, 90), mode=mode)(x, RNG), np.rot90(x, 1, axes=(2, 3)),
                               rtol=0, atol=1e-12)
    rect = float_batch(2, 1, 4, 6)
    assert random_rotation(10, mode=mode)(rect, RNG).shape == rect.shape


def test_random_rotation_bilinear_interpolates_and_fills_outside():
    x = np.zeros((1, 1, 5, 5), np.float32)
    x[0, 0, :, 2] = 1.0  # a vertical bar through the centre
    out = random_rotation((45, 45))(x, RNG)
    assert out.dtype == np.float32 and out[0, 0, 2, 2] == pytest.approx(1.0)
    # Output (y=2, x=3) reads the input at x = y = 2 + sin(45) = 2.707: 0.293 of the bar column, 0.707 of column 3.
    assert out[0, 0, 2, 3] == pytest.approx(1 - np.sqrt(0.5), rel=1e-5)
    ones = np.ones((4, 1, 8, 8), np.float32)
    rotated = random_rotation(30, fill=0.0)(ones, np.random.default_rng(0))
    assert rotated.min() >= 0 and rotated.max() <= 1 + 1e-6
    assert np.all(rotated[:, :, 3:5, 3:5] > 0.999) and rotated[:, :, 0, 0].max() < 1  # corners come from outside
    with pytest.raises(ValueError, match="mode must be 'nearest' or 'bilinear'"):
        random_rotation(10, mode="cubic")
    with pytest.raises(ValueError, match="degrees must be a number >= 0"):
        random_rotation(-5)


def test_compose_applies_in_order_and_labels_are_preserved_through_augmentation():
    x = float_batch(2, 1, 28, 28)
    out = Compose([pad(32), normalize(0.5, 0.5)])(x, RNG)
    assert out.shape == (2, 1, 32, 32) and out[0, 0, 0, 0] == -1.0  # padded with 0 first, then normalised
    with pytest.raises(TypeError, match="every transform must be callable"):
        Compose([pad(32), 3])
    ds = make_dataset(n=24, h=28, w=28)
    aug = Compose([pad(32), random_crop(padding=4), random_hflip(), random_rotation(10), normalize(0.5, 0.2)])
    seen = 0
    for xb, yb in DataLoader(ds, 10, shuffle=True, transform=aug):
        assert xb.shape[1:] == (1, 32, 32) and xb.dtype == np.float32 and yb.dtype == np.int64
        seen += len(yb)
    assert seen == 24
    loader = DataLoader(ds, 24, shuffle=True, seed=5, transform=aug)
    _, y_aug = next(iter(loader))
    plain = DataLoader(ds, 24, shuffle=True, seed=5)
    x_plain, y_plain = next(iter(plain))
    np.testing.assert_array_equal(y_aug, y_plain)
    np.testing.assert_array_equal(y_plain, ds.labels[sample_ids(x_plain)])


# ---------------------------------------------------------------- split

@pytest.mark.parametrize("stratify", [True, False])
def test_split_sizes_disjoint_complete_and_deterministic(stratify):
    ds = make_dataset(n=101, classes=4)
    parts = split(ds, (0.6, 0.2, 0.2), seed=2, stratify=stratify)
    assert [len(p) for p in parts] == [61, 20, 20]  # round(60.6)=61, round(80.8)=81 -> 20, 20
    ids = [p.images[:, 0, 0, 0].astype(int) for p in parts]
    np.testing.assert_array_equal(np.sort(np.concatenate(ids)), np.arange(101))
    for p, i in zip(parts, ids):
        np.testing.assert_array_equal(p.labels, ds.labels[i])  # labels stay with their images
        assert np.all(np.diff(i) > 0) and p.classes == ds.classes  # original order kept
    again = split(ds, (0.6, 0.2, 0.2), seed=2, stratify=stratify)
    for p, q in zip(parts, again):
        np.testing.assert_array_equal(p.images, q.images)
    other = split(ds, (0.6, 0.2, 0.2), seed=3, stratify=stratify)
    assert not np.array_equal(parts[1].images, other[1].images)


def test_stratified_split_keeps_class_proportions():
    rng = np.random.default_rng(0)
    for trial in range(40):
        counts = rng.integers(1, 150, rng.integers(2, 8))
        labels = np.repeat(np.arange(len(counts)), counts).astype(np.int64)
        ds = Dataset(np.zeros((len(labels), 1, 1, 1), np.uint8), labels, [str(i) for i in range(len(counts))])
        fractions = rng.dirichlet(np.ones(rng.integers(2, 5)))
        for part, frac in zip(split(ds, tuple(fractions), seed=trial), fractions):
            share = np.bincount(part.labels, minlength=len(counts))
            assert np.all(np.abs(share - frac * counts) < 2), (trial, share, frac * counts)


def test_split_rejects_bad_fractions():
    ds = make_dataset()
    for bad in [(0.5, 0.4), (1.0,), (0.8, 0.3, -0.1)]:
        with pytest.raises(ValueError, match="fractions must be 2 or more non-negative numbers summing to 1"):
            split(ds, bad)
    with pytest.raises(TypeError, match="split needs a Dataset"):
        split((ds.images, ds.labels))
