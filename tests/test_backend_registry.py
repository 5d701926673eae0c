"""Backend selection: names, availability errors, context-local use_backend, lazy CNNKIT_BACKEND."""
from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest

import cnnkit as ck
from cnnkit.backend import BackendUnavailableError, unavailable_reason
from cnnkit.backends import BACKEND_NAMES, OPS


def test_numpy_backend_is_always_available_and_complete():
    assert "numpy" in ck.available_backends()
    be = ck.backend("numpy")
    assert be.name == "numpy" and be.xp is np and be.device == "cpu"
    for op in OPS:
        assert callable(getattr(be.ops, op)), op
    a = be.asarray([1.0, 2.0], dtype="float32")
    assert isinstance(a, np.ndarray) and a.dtype == np.float32
    assert isinstance(be.to_numpy(a), np.ndarray)
    be.synchronize()


@pytest.mark.parametrize("name", BACKEND_NAMES)
def test_each_backend_is_either_available_and_complete_or_explains_why(name):
    reason = unavailable_reason(name)
    if reason is None:
        be = ck.backend(name)
        assert all(callable(getattr(be.ops, op)) for op in OPS)
    else:
        with pytest.raises(BackendUnavailableError, match=rf"{name}.*not available.*pip install"):
            ck.backend(name)


def test_unknown_backend_lists_valid_names():
    with pytest.raises(ValueError, match="numpy, numba, cupy"):
        ck.set_backend("tensorflow")


def test_use_backend_is_scoped_and_restored():
    before = ck.get_backend()
    with ck.use_backend("numpy") as be:
        assert ck.get_backend() is be
    assert ck.get_backend() is before


def test_use_backend_is_context_local_across_threads():
    seen = {}

    def worker():
        seen["thread"] = ck.get_backend().name

    with ck.use_backend("numpy"):
        t = threading.Thread(target=worker)
        t.start()
        t.join()
    assert seen["thread"] == "numpy"


def test_env_var_is_read_lazily_after_import(tmp_path):
    code = ("import os, cnnkit as ck\n"
            "os.environ['CNNKIT_BACKEND'] = 'no-such-backend'\n"
            "try:\n    ck.get_backend()\nexcept ValueError as e:\n    print('lazy', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.startswith("lazy")



def test_bogus_env_backend_names_the_variable(monkeypatch):
    from cnnkit.backend import _current, env_backend_name, get_backend

    monkeypatch.setenv("CNNKIT_BACKEND", "bogus")
    token = _current.set(None)
    try:
        with pytest.raises(ValueError, match=r"CNNKIT_BACKEND='bogus'.*numpy"):
            get_backend()
        with pytest.raises(ValueError, match="environment variable CNNKIT_BACKEND"):
            env_backend_name()
    finally:
        _current.reset(token)
    monkeypatch.setenv("CNNKIT_BACKEND", " NumPy ")
    assert env_backend_name() == "numpy"
    monkeypatch.delenv("CNNKIT_BACKEND")
    assert env_backend_name() == "numpy"
