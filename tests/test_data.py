"""Dataset readers (IDX, CIFAR-10 pickle/binary, image folders), the decode cache, lookup by name, bundled sample.

Every file here is crafted small in tmp_path; the big real datasets are never read in full.
"""
from __future__ import annotations

import gzip
import os
import pickle
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cnnkit.data as ckdata
from cnnkit.data import DataFormatError, DataNotFoundError, imagefolder, registry
from cnnkit.data.make_sample import make_sample

RNG = np.random.default_rng(1234)


def write_mnist_like(folder: Path, n_train=12, n_test=6, size=(5, 4), gz=True, seed=0):
    """Four IDX files in ``folder`` with random uint8 images and labels 0..9; returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, *size), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        ckdata.write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
        ckdata.write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)
        out[prefix] = (images, labels)
    return out


# ---------------------------------------------------------------- IDX

@pytest.mark.parametrize("gz", [True, False])
def test_idx_dataset_reads_gzipped_and_raw_files_as_nchw(tmp_path, gz):
    written = write_mnist_like(tmp_path, gz=gz)
    ds = ckdata.read_idx_dataset(tmp_path, "train", "mnist", [str(i) for i in range(10)])
    images, labels = written["train"]
    assert ds.images.dtype == np.uint8 and ds.images.shape == (12, 1, 5, 4)
    assert ds.labels.dtype == np.int64
    np.testing.assert_array_equal(ds.images[:, 0], images)
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.source == str(tmp_path)


def test_idx_roundtrip_of_other_element_types_and_gzip_is_deterministic(tmp_path):
    a = RNG.standard_normal((3, 2)).astype(np.float32)
    ckdata.write_idx(tmp_path / "a.idx.gz", a)
    first = (tmp_path / "a.idx.gz").read_bytes()
    ckdata.write_idx(tmp_path / "a.idx.gz", a)
    assert (tmp_path / "a.idx.gz").read_bytes() == first
    got = ckdata.read_idx(tmp_path / "a.idx.gz")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, a)
    raw = (tmp_path / "b.idx")
    ckdata.write_idx(raw, np.array([1, -2, 3], dtype=np.int16))
    assert raw.read_bytes()[:4] == b"\x00\x00\x0b\x01"
    np.testing.assert_array_equal(ckdata.read_idx(raw), [1, -2, 3])


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_idx_is_a_clear_error_naming_the_file(tmp_path, gz):
    write_mnist_like(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    data = path.read_bytes()[:-7]
    if gz:
        path.unlink()
        path = tmp_path / "train-images-idx3-ubyte.gz"
        data = gzip.compress(data)
    path.write_bytes(data)
    with pytest.raises(DataFormatError, match=r"train-images-idx3-ubyte.*truncated"):
        ckdata.read_idx_dataset(tmp_path, "train", "mnist", list("0123456789"))


def test_truncated_gzip_stream_is_a_clear_error(tmp_path):
    write_mnist_like(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(DataFormatError, match=r"train-images-idx3-ubyte\.gz: truncated or corrupt gzip"):
        ckdata.read_idx(path)


def test_trailing_bytes_and_short_header_are_errors(tmp_path):
    path = tmp_path / "x-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x02" + b"\x01\x02\x03")
    with pytest.raises(DataFormatError, match="x-idx1-ubyte: corrupt"):
        ckdata.read_idx(path)
    path.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(DataFormatError, match="truncated IDX header"):
        ckdata.read_idx(path)


def test_wrong_magic_is_a_clear_error(tmp_path):
    path = tmp_path / "junk-idx3-ubyte"
    path.write_bytes(b"PK\x03\x04" + bytes(40))
    with pytest.raises(DataFormatError, match=r"junk-idx3-ubyte: not an IDX file \(magic 0x504b0304.*0x00000803"):
        ckdata.read_idx(path)
    # A labels file where images are expected: valid IDX, wrong magic for the role.
    write_mnist_like(tmp_path / "m")
    lbl = tmp_path / "m" / "train-labels-idx1-ubyte.gz"
    with pytest.raises(DataFormatError, match=r"magic 0x00000801, expected 0x00000803 \(images\)"):
        ckdata.read_idx(lbl, magic=0x00000803)


def test_image_and_label_count_mismatch_names_both_files(tmp_path):
    write_mnist_like(tmp_path)
    ckdata.write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(11, np.uint8))
    with pytest.raises(DataFormatError, match=r"train-images.*12 images.*train-labels.*11 labels"):
        ckdata.read_idx_dataset(tmp_path, "train", "mnist", list("0123456789"))


# ---------------------------------------------------------------- CIFAR-10

def cifar_batches(n_per_batch=3, seed=0):
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return {n: (rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8), rng.integers(0, 10, n_per_batch))
            for n in names}


def write_cifar_pickle(folder: Path, batches) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, labels) in batches.items():
        # Like the published files: bytes keys, labels a list of ints, protocol 2.
        blob = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels], b"data": data}
        (folder / name).write_bytes(pickle.dumps(blob, protocol=2))
    meta = {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


def write_cifar_binary(folder: Path, batches) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, labels) in batches.items():
        records = np.concatenate([labels.astype(np.uint8)[:, None], data], axis=1)
        (folder / f"{name}.bin").write_bytes(records.tobytes())
    (folder / "batches.meta.txt").write_text("\n".join(f"b{i}" for i in range(10)) + "\n\n")


@pytest.mark.parametrize("fmt", ["pickle", "binary"])
def test_cifar10_batches_read_in_order_with_rgb_planes(tmp_path, fmt):
    batches = cifar_batches()
    (write_cifar_pickle if fmt == "pickle" else write_cifar_binary)(tmp_path, batches)
    train = ckdata.read_cifar10(tmp_path, "train")
    test = ckdata.read_cifar10(tmp_path, "test")
    assert train.images.shape == (15, 3, 32, 32) and test.images.shape == (3, 3, 32, 32)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    data = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    np.testing.assert_array_equal(train.labels, np.concatenate([batches[f"data_batch_{i}"][1] for i in range(1, 6)]))
    # Pixel (row 0, col 1) of the red plane is byte 1; of the green plane byte 1024 + 1; blue row 1 col 0: 2048 + 32.
    np.testing.assert_array_equal(train.images[:, 0, 0, 1], data[:, 1])
    np.testing.assert_array_equal(train.images[:, 1, 0, 1], data[:, 1025])
    np.testing.assert_array_equal(train.images[:, 2, 1, 0], data[:, 2080])
    assert train.classes == [("c" if fmt == "pickle" else "b") + str(i) for i in range(10)]


def test_cifar10_pickle_refuses_code_and_reports_truncation(tmp_path):
    write_cifar_pickle(tmp_path, cifar_batches())
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "data_batch_2").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(DataFormatError, match=r"data_batch_2.*refusing to load"):
        ckdata.read_cifar10(tmp_path, "train")
    assert not marker.exists()
    good = (tmp_path / "data_batch_1").read_bytes()
    (tmp_path / "data_batch_2").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataFormatError, match=r"data_batch_2: not a readable CIFAR-10 pickle"):
        ckdata.read_cifar10(tmp_path, "train")


def test_cifar10_binary_truncated_and_missing_batches(tmp_path):
    write_cifar_binary(tmp_path, cifar_batches())
    path = tmp_path / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataFormatError, match=r"test_batch\.bin: .*3073-byte CIFAR-10 records"):
        ckdata.read_cifar10(tmp_path, "test")
    (tmp_path / "data_batch_4.bin").unlink()
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 train batches"):
        ckdata.read_cifar10(tmp_path, "train")


# ---------------------------------------------------------------- image folders

def make_image_tree(root: Path, layout="split", mode="RGB", size=(5, 4)) -> dict[str, np.ndarray]:
    """Tiny PNGs: {relative path: pixels (H, W[, C])}; split layout train/{cat,dog}, test/{ant,cat}."""
    files = {}
    tree = {"train": {"dog": 2, "cat": 3}, "test": {"cat": 1, "ant": 2}} if layout == "split" else \
        {"": {"dog": 2, "cat": 1}}
    i = 0
    for split_name, classes in tree.items():
        for cls, count in classes.items():
            for k in range(count):
                shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
                pixels = np.random.default_rng(i).integers(0, 256, shape, dtype=np.uint8)
                rel = "/".join(p for p in (split_name, cls, f"{k:02d}.png") if p)
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels, mode).save(root / rel)
                files[rel] = pixels
                i += 1
    (root / "README.txt").write_text("not an image; ignored")
    return files


def archive(tree: Path, dest: Path, kind: str, wrapper: str = "") -> Path:
    names = sorted(p for p in tree.rglob("*") if p.is_file())
    if kind == "zip":
        with zipfile.ZipFile(dest, "w") as zf:
            for p in names:
                zf.write(p, wrapper + p.relative_to(tree).as_posix())
    else:
        with tarfile.open(dest, "w:xz" if kind == "tar.xz" else "w") as tf:
            for p in reversed(names):  # archive order differs from sorted order
                tf.add(p, wrapper + p.relative_to(tree).as_posix())
    return dest


@pytest.fixture
def cache_in_tmp(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CNNKIT_CACHE", str(cache))
    return cache


@pytest.mark.parametrize("kind", ["dir", "zip", "tar.xz"])
def test_image_folder_from_dir_zip_and_tar(tmp_path, kind, cache_in_tmp):
    files = make_image_tree(tmp_path / "tree")
    path = tmp_path / "tree" if kind == "dir" else archive(tmp_path / "tree", tmp_path / f"ds.{kind}", kind)
    train = ckdata.read_image_folder(path, "train")
    test = ckdata.read_image_folder(path, "test")
    assert train.classes == test.classes == ["ant", "cat", "dog"]  # union over splits, alphabetical
    assert train.images.shape == (5, 3, 4, 5) and train.images.dtype == np.uint8
    np.testing.assert_array_equal(train.labels, [1, 1, 1, 2, 2])
    np.testing.assert_array_equal(test.labels, [0, 0, 1])
    order = ["train/cat/00.png", "train/cat/01.png", "train/cat/02.png", "train/dog/00.png", "train/dog/01.png"]
    np.testing.assert_array_equal(train.images, np.stack([files[n].transpose(2, 0, 1) for n in order]))
    assert train.name == "tree" if kind == "dir" else train.name == "ds"


def test_image_folder_class_layout_wrapper_folder_and_grayscale(tmp_path, cache_in_tmp):
    files = make_image_tree(tmp_path / "tree", layout="classes", mode="L")
    path = archive(tmp_path / "tree", tmp_path / "flat.zip", "zip", wrapper="flat/")
    ds = ckdata.read_image_folder(path, split=None)
    assert ds.classes == ["cat", "dog"] and ds.images.shape == (3, 1, 4, 5)
    np.testing.assert_array_equal(ds.images[0, 0], files["cat/00.png"])
    with pytest.raises(DataFormatError, match=r"no split folder 'train'; found \['flat'\].*split=None"):
        ckdata.read_image_folder(path, "train")
    with pytest.raises(DataFormatError, match=r"no <split>/ level\); pass split=None"):
        ckdata.read_image_folder(tmp_path / "tree", "train")


def test_image_folder_layout_errors(tmp_path, cache_in_tmp):
    make_image_tree(tmp_path / "tree")
    with pytest.raises(DataFormatError, match=r"several top folders \['test', 'train'\]; pass split="):
        ckdata.read_image_folder(tmp_path / "tree", None)
    with pytest.raises(DataFormatError, match=r"no split folder 'val'; found \['test', 'train'\]"):
        ckdata.read_image_folder(tmp_path / "tree", "val")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "tree" / "train" / "stray.png")
    with pytest.raises(DataFormatError, match="at one depth"):
        ckdata.read_image_folder(tmp_path / "tree", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="no image files"):
        ckdata.read_image_folder(tmp_path / "empty", None)
    (tmp_path / "notanarchive.bin").write_bytes(b"hello")
    with pytest.raises(DataFormatError, match="not a directory, a .zip or a .tar"):
        ckdata.read_image_folder(tmp_path / "notanarchive.bin", None)


def test_image_folder_size_mismatch_and_undecodable_file(tmp_path, cache_in_tmp):
    make_image_tree(tmp_path / "tree")
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / "tree" / "train" / "dog" / "big.png")
    with pytest.raises(DataFormatError, match=r"train/dog/big\.png is 6x6 but train/cat/00\.png is 5x4"):
        ckdata.read_image_folder(tmp_path / "tree", "train")
    (tmp_path / "tree" / "train" / "dog" / "big.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataFormatError, match=r"cannot decode train/dog/big\.png"):
        ckdata.read_image_folder(tmp_path / "tree", "train")


def test_mixed_gray_and_colour_jpegs_become_rgb(tmp_path, cache_in_tmp):
    for i, mode in enumerate(["L", "RGB"]):
        (tmp_path / "t" / "a").mkdir(parents=True, exist_ok=True)
        Image.new(mode, (3, 3), 200 if mode == "L" else (10, 20, 30)).save(tmp_path / "t" / "a" / f"{i}.jpg")
    ds = ckdata.read_image_folder(tmp_path / "t", None)
    assert ds.images.shape == (2, 3, 3, 3)
    assert np.all(np.abs(ds.images[0].astype(int) - 200) <= 2)  # gray replicated into R, G, B
    assert np.all(np.abs(ds.images[1, :, 1, 1].astype(int) - [10, 20, 30]) <= 3)  # JPEG is lossy


def test_missing_pillow_is_a_clear_error(tmp_path, monkeypatch, cache_in_tmp):
    make_image_tree(tmp_path / "tree")
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r"needs Pillow: pip install 'cnnkit\[image\]'"):
        ckdata.read_image_folder(tmp_path / "tree", "train", cache=False)


def test_second_load_hits_the_cache_and_a_changed_archive_misses(tmp_path, monkeypatch, cache_in_tmp):
    make_image_tree(tmp_path / "tree")
    path = archive(tmp_path / "tree", tmp_path / "ds.tar.xz", "tar.xz")
    first = ckdata.read_image_folder(path, "train")
    cached = list(cache_in_tmp.glob("*.npz"))
    assert len(cached) == 1 and not list(cache_in_tmp.glob("*.tmp"))

    def no_decoding(*args):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(imagefolder, "_decode", no_decoding)
    second = ckdata.read_image_folder(path, "train")
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.labels, first.labels)
    assert second.classes == first.classes and second.source == str(path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # "a newer archive": must decode again
    with pytest.raises(AssertionError, match="decoded although cached"):
        ckdata.read_image_folder(path, "train")


def test_directory_cache_notices_an_added_file_and_bad_cache_is_rebuilt(tmp_path, cache_in_tmp):
    make_image_tree(tmp_path / "tree")
    assert len(ckdata.read_image_folder(tmp_path / "tree", "train")) == 5
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "tree" / "train" / "dog" / "new.png")
    assert len(ckdata.read_image_folder(tmp_path / "tree", "train")) == 6
    for f in cache_in_tmp.glob("*.npz"):
        f.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable cache file"):
        assert len(ckdata.read_image_folder(tmp_path / "tree", "train")) == 6
    assert len(ckdata.read_image_folder(tmp_path / "tree", "train")) == 6  # rewritten, no warning now


# ---------------------------------------------------------------- lookup by name

@pytest.fixture
def clean_lookup(tmp_path, monkeypatch, cache_in_tmp):
    """No $CNNKIT_DATA, an empty Debian folder and no SEARCH_PATHS, so only what a test creates is found."""
    monkeypatch.delenv("CNNKIT_DATA", raising=False)
    monkeypatch.setattr(registry, "DEBIAN_DATASETS", tmp_path / "debian")
    monkeypatch.setattr(registry, "SEARCH_PATHS", [])
    return tmp_path


def test_lookup_order_root_env_debian_search_paths(clean_lookup, monkeypatch):
    tmp = clean_lookup
    sizes = {"root": 1, "env": 2, "debian": 3, "search": 4}
    write_mnist_like(tmp / "rootdir", n_train=sizes["root"])
    write_mnist_like(tmp / "envdir" / "mnist", n_train=sizes["env"])
    write_mnist_like(tmp / "debian" / "mnist", n_train=sizes["debian"])
    write_mnist_like(tmp / "searchdir" / "MNIST" / "raw", n_train=sizes["search"])
    monkeypatch.setattr(registry, "SEARCH_PATHS", [tmp / "searchdir"])
    monkeypatch.setenv("CNNKIT_DATA", os.pathsep.join([str(tmp / "nothing"), str(tmp / "envdir")]))
    assert len(ckdata.load("mnist", root=tmp / "rootdir")) == 1
    assert len(ckdata.load("mnist")) == 2
    monkeypatch.delenv("CNNKIT_DATA")
    assert len(ckdata.load("MNIST")) == 3
    (tmp / "debian" / "mnist" / "train-labels-idx1-ubyte.gz").unlink()  # incomplete: skipped
    ds = ckdata.load("mnist")
    assert len(ds) == 4 and ds.source == str(tmp / "searchdir" / "MNIST" / "raw")
    assert ds.classes == [str(i) for i in range(10)] and ds.name == "mnist"
    assert len(ckdata.load("mnist", "test", root=tmp / "rootdir")) == 6


def test_root_may_hold_the_dataset_in_a_named_subfolder(clean_lookup):
    write_mnist_like(clean_lookup / "data" / "fashion-mnist")
    ds = ckdata.load("fashion-mnist", root=clean_lookup / "data")
    assert ds.name == "fashion-mnist" and ds.classes[0] == "T-shirt/top" and len(ds) == 12


def test_not_found_lists_every_place_and_how_to_get_it(clean_lookup, monkeypatch):
    monkeypatch.setenv("CNNKIT_DATA", str(clean_lookup / "envdir"))
    monkeypatch.setattr(registry, "SEARCH_PATHS", ["relative/data"])
    with pytest.raises(DataNotFoundError) as err:
        ckdata.load("cifar10", "test")
    msg = str(err.value)
    for place in ["$CNNKIT_DATA: " + str(clean_lookup / "envdir" / "cifar10"),
                  "Debian datasets folder: " + str(clean_lookup / "debian" / "cifar10"),
                  "cnnkit.data.SEARCH_PATHS: " + os.path.abspath("relative/data/cifar-10-batches-bin")]:
        assert place in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in msg and "'cifar10-jpeg'" in msg
    monkeypatch.delenv("CNNKIT_DATA")
    with pytest.raises(DataNotFoundError, match=r"\$CNNKIT_DATA: not set"):
        ckdata.load("mnist")


def test_an_explicit_root_is_used_or_fails_never_skipped(clean_lookup, monkeypatch):
    write_mnist_like(clean_lookup / "envdir" / "mnist", n_train=2)
    write_mnist_like(clean_lookup / "debian" / "fashion-mnist", n_train=3)
    monkeypatch.setenv("CNNKIT_DATA", str(clean_lookup / "envdir"))
    (clean_lookup / "mine").mkdir()
    for name in ("mnist", "fashion-mnist", "cifar10"):  # another copy elsewhere, or the bundled sample
        with pytest.raises(DataNotFoundError) as err:
            ckdata.load(name, root=clean_lookup / "mine")
        msg = str(err.value)
        assert f"under root={str(clean_lookup / 'mine')!r}" in msg
        assert "root= argument: " + str(clean_lookup / "mine") in msg
        assert "$CNNKIT_DATA:" not in msg and "Debian datasets folder:" not in msg
    ds = ckdata.load("mnist")  # the implicit search falls through and says what it used
    assert len(ds) == 2 and ds.source == str(clean_lookup / "envdir" / "mnist")


def test_fashion_mnist_falls_back_to_the_bundled_sample_with_a_warning(clean_lookup):
    with pytest.warns(UserWarning, match="using the bundled sample"):
        ds = ckdata.load("fashion-mnist", "test")
    assert ds.name == "fashion-mnist-sample" and len(ds) == 1000


def test_cifar_names_and_image_folder_paths_load(clean_lookup, monkeypatch):
    tmp = clean_lookup
    write_cifar_binary(tmp / "dl" / "cifar-10-batches-bin", cifar_batches())
    assert len(ckdata.load("cifar10", root=tmp / "dl")) == 15
    make_image_tree(tmp / "tree")
    (tmp / "shared").mkdir()
    archive(tmp / "tree", tmp / "shared" / "cifar10-jpeg.tar.xz", "tar.xz")
    monkeypatch.setattr(registry, "SEARCH_PATHS", [tmp / "shared"])
    ds = ckdata.load("cifar10-jpeg", "test")
    assert ds.name == "cifar10-jpeg" and ds.classes == ["ant", "cat", "dog"] and len(ds) == 3
    assert len(ckdata.load("cifar10-jpeg", root=tmp / "shared" / "cifar10-jpeg.tar.xz")) == 5
    assert len(ckdata.load(str(tmp / "tree"), "train")) == 5  # a path is an image folder


def test_load_rejects_unknown_names_and_splits(clean_lookup):
    with pytest.raises(ValueError, match=r"unknown dataset 'imagenet': expected one of mnist, fashion-mnist"):
        ckdata.load("imagenet")
    with pytest.raises(ValueError, match="split must be 'train' or 'test' for mnist; got 'val'"):
        ckdata.load("mnist", "val")
    with pytest.raises(ValueError, match="split must be one of train, test"):
        ckdata.load("fashion-mnist-sample", "validation")


# ---------------------------------------------------------------- bundled sample

def test_bundled_sample_shapes_balance_and_licence():
    train, test = ckdata.load("fashion-mnist-sample", "train"), ckdata.load("fashion-mnist-sample", "test")
    assert train.images.shape == (4000, 1, 28, 28) and test.images.shape == (1000, 1, 28, 28)
    np.testing.assert_array_equal(np.bincount(train.labels), [400] * 10)
    np.testing.assert_array_equal(np.bincount(test.labels), [100] * 10)
    assert train.classes[9] == "Ankle boot" and train.images.dtype == np.uint8
    assert 0.1 < train.images.mean() / 255 < 0.6  # real clothing images, not blank
    sample = registry.SAMPLE_DIR
    assert sum(p.stat().st_size for p in sample.iterdir()) < 5 * 2**20
    licence = (sample / "LICENSE").read_text()
    assert "Zalando SE" in licence and "MIT" in licence and "Permission is hereby granted" in licence


def test_make_sample_is_deterministic_balanced_and_first_per_class(tmp_path):
    src = tmp_path / "src"
    written = write_mnist_like(src, n_train=40, n_test=30)
    make_sample(src, tmp_path / "a", per_class_train=3, per_class_test=2)
    make_sample(src, tmp_path / "b", per_class_train=3, per_class_test=2)
    for f in (tmp_path / "a").iterdir():
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes()
    ds = ckdata.read_idx_dataset(tmp_path / "a", "train", "s", list("0123456789"))
    np.testing.assert_array_equal(np.bincount(ds.labels), [3] * 10)
    np.testing.assert_array_equal(ds.images[:, 0], written["train"][0][:30])  # labels cycle 0..9: first 30
    with pytest.raises(ValueError, match="fewer than 4 samples"):
        make_sample(src, tmp_path / "c", per_class_train=3, per_class_test=4)


def test_bundled_sample_matches_the_installed_fashion_mnist():
    src = Path("/usr/share/datasets/fashion-mnist")
    if not (src / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("dataset-fashion-mnist is not installed here")
    full = ckdata.read_idx_dataset(src, "test", "fashion-mnist", registry.FASHION_MNIST_CLASSES)
    sample = ckdata.load("fashion-mnist-sample", "test")
    keep = np.sort(np.concatenate([np.flatnonzero(full.labels == c)[:100] for c in range(10)]))
    np.testing.assert_array_equal(sample.images, full.images[keep])
    np.testing.assert_array_equal(sample.labels, full.labels[keep])


# ---------------------------------------------------------------- the standard input pipeline

def test_channel_stats_are_per_channel_and_never_zero():
    images = np.zeros((4, 3, 2, 2), np.uint8)
    images[:, 0] = 255
    images[:2, 1] = 51
    mean, std = ckdata.channel_stats(ckdata.Dataset(images, np.zeros(4, np.int64), ["a"], "rgb"))
    assert mean == pytest.approx([1.0, 0.1, 0.0]) and std == pytest.approx([1.0, 0.1, 1.0])  # constant: std 1


def test_prepare_pads_augments_and_normalises_for_the_model_input():
    gray = ckdata.Dataset(np.full((2, 1, 28, 28), 255, np.uint8), np.zeros(2, np.int64), ["a"], "gray")
    batch = gray.images.astype(np.float32) / 255
    plain = ckdata.prepare(gray, (1, 32, 32), [0.5], [0.25])
    out = plain(batch, np.random.default_rng(0))
    assert out.shape == (2, 1, 32, 32) and out.dtype == np.float32
    assert out[0, 0, 0, 0] == -2.0 and out[0, 0, 16, 16] == 2.0  # black border, then standardised
    assert len(plain.transforms) == 2
    assert len(ckdata.prepare(gray, (1, 32, 32), 0.5, 0.25, augment=True).transforms) == 3  # + random shifts
    rgb = ckdata.Dataset(np.zeros((2, 3, 32, 32), np.uint8), np.zeros(2, np.int64), ["a"], "rgb")
    assert len(ckdata.prepare(rgb, (3, 32, 32), 0, 1).transforms) == 1  # already the model's size
    assert len(ckdata.prepare(rgb, (3, 32, 32), 0, 1, augment=True).transforms) == 3  # shifts and mirroring
    with pytest.raises(ValueError, match="takes 3-channel images but dataset 'gray' has 1"):
        ckdata.prepare(gray, (3, 32, 32), 0, 1)
    with pytest.raises(ValueError, match="takes 24x24 images but dataset 'gray' has larger 28x28"):
        ckdata.prepare(gray, (1, 24, 24), 0, 1)
