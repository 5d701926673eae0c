"""The executable op contract: specs, registration checks, and every op's example call on every CPU backend."""
from __future__ import annotations

import numpy as np
import pytest

import cnnkit as ck
from cnnkit.backends import OPS, collect_ops, implements, run_example

CPU_BACKENDS = ["numpy", "numba", pytest.param("cudasim", marks=pytest.mark.cudasim)]


def test_every_op_has_a_signature_a_meaning_and_an_example():
    assert len(OPS) == 23
    for name, spec in OPS.items():
        assert spec.name == name and spec.doc and callable(spec.example), name
        assert list(spec.signature.parameters), name


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("op", list(OPS))
def test_every_example_runs_and_returns_backend_arrays(backend, op):
    be = ck.backend(backend)
    rng = np.random.default_rng(0)
    result = run_example(OPS[op], be.ops, lambda *shape: be.asarray(rng.standard_normal(shape), dtype="float32"))
    arrays = [r for r in (result if isinstance(result, tuple) else (result,)) if hasattr(r, "dtype")]
    assert arrays and all(be.is_native(a) for a in arrays), op


def test_registration_checks_the_signature_against_the_spec():
    def softmax_forward(x, axis):  # an extra parameter without a default
        return x
    with pytest.raises(TypeError, match=r"softmax_forward \(test\): a parameter beyond the contract's has no default"):
        implements("test")(softmax_forward)

    def softmax_backward(y, dy):  # parameters swapped
        return y
    with pytest.raises(TypeError, match=r"parameters \['y', 'dy'\] differ from the contract's \['dy', 'y'\]"):
        implements("test")(softmax_backward)

    def upsample2d(x):
        return x
    with pytest.raises(TypeError, match="the contract has no op 'upsample2d'"):
        implements("test")(upsample2d)


def test_a_missing_op_is_an_error_when_the_table_is_collected():
    def softmax_forward(x, extra=None):  # extra options with defaults are allowed
        return x
    implements("incomplete")(softmax_forward)
    with pytest.raises(NotImplementedError, match=r"'incomplete' does not implement op\(s\) conv2d_forward, "):
        collect_ops("incomplete")
