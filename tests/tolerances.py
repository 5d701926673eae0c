"""Every tolerance the test-suite uses, in one place (the project's tolerance conventions).

A looser tolerance than these is written here, next to its reason, and nowhere else.
"""
from __future__ import annotations

import numpy as np

# float32 result vs float64 reference, conv/pool/batch-norm: norm-relative error.
NORM_REL_F32 = 1e-5
# float32 vs float64 elementwise: rtol, and atol as a fraction of max|reference|.
RTOL_F32 = 1e-4
ATOL_F32_SCALE = 1e-5
# float32 activations vs float64: rtol.
RTOL_ACT_F32 = 1e-6
# ... and atol: a float32 result below the normal range (under 1.2e-38, e.g. sigmoid(-100) = 3.7e-44) has fewer
# significant bits than RTOL_ACT_F32 needs, and one under 1.4e-45 rounds to 0.
ATOL_ACT_F32 = float(np.finfo(np.float32).tiny)
# The same for float64 activations (sigmoid(-720) = 2.0e-313: PyTorch's 1 / (1 + exp(720)) gives 0).
ATOL_ACT_F64 = float(np.finfo(np.float64).tiny)
# float64 backend vs float64 NumPy reference (Numba, same arithmetic in another order).
RTOL_F64 = 1e-10
# Central finite differences in float64: step and the relative error allowed.
FD_EPS = 1e-6
FD_RTOL = 1e-6
# Whole-model parity with PyTorch in float32: max relative error.
MODEL_REL_F32 = 1e-5


def norm_rel_err(a, b) -> float:
    """||a - b|| / ||b|| (0 when both are 0), in float64 on the host."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    denom = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / denom) if denom else float(np.linalg.norm(a))


def max_rel_err(ours, reference) -> float:
    """max|ours - reference| / max|reference| (max|ours| when the reference is all zeros): the measure
    MODEL_REL_F32 bounds, per tensor."""
    ours = np.asarray(ours, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    assert ours.shape == reference.shape, f"shape {ours.shape} != {reference.shape}"
    scale = np.abs(reference).max() if reference.size else 0.0
    return float(np.abs(ours - reference).max() / scale if scale else np.abs(ours).max())


def split_nonfinite(actual, reference, what: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Assert that NaN, +inf and -inf sit at exactly the reference's positions (non-finite values propagate as
    in PyTorch, which the reference follows: tests/test_torch_parity_ops.py); return the finite elements of both,
    as float64 (the tolerances below then apply to those)."""
    actual = np.asarray(actual, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    assert actual.shape == reference.shape, f"{what}: shape {actual.shape} != {reference.shape}"
    for name, test in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        got, want = test(actual), test(reference)
        if not np.array_equal(got, want):
            wrong = np.argwhere(got != want)
            raise AssertionError(f"{what}: {name} at {int(got.sum())} positions, the reference at {int(want.sum())}; "
                                 f"they differ at {len(wrong)}, e.g. {[tuple(int(i) for i in w) for w in wrong[:4]]}: "
                                 f"got {[float(actual[tuple(w)]) for w in wrong[:4]]}, "
                                 f"want {[float(reference[tuple(w)]) for w in wrong[:4]]}")
    keep = np.isfinite(reference)
    return actual[keep], reference[keep]


def assert_close_f32(actual, reference, what: str = "") -> None:
    """float32 result vs float64 reference, by the conv/pool/bn rule above (norm-relative and elementwise) on
    the finite elements; NaN and +-inf at exactly the reference's positions."""
    actual, reference = split_nonfinite(actual, reference, what)
    err = norm_rel_err(actual, reference)
    assert err <= NORM_REL_F32, f"{what}: norm-relative error {err:.3g} > {NORM_REL_F32}"
    atol = ATOL_F32_SCALE * float(np.max(np.abs(reference))) if reference.size else 0.0
    np.testing.assert_allclose(actual, reference, rtol=RTOL_F32, atol=atol, err_msg=what)


def assert_close_f64(actual, reference, what: str = "", rtol: float = RTOL_F64) -> None:
    """float64 result vs float64 reference: rtol, with atol scaled to the reference's magnitude, on the finite
    elements; NaN and +-inf at exactly the reference's positions."""
    actual, reference = split_nonfinite(actual, reference, what)
    atol = rtol * float(np.max(np.abs(reference))) if reference.size else 0.0
    np.testing.assert_allclose(actual, reference, rtol=rtol, atol=atol, err_msg=what)


def assert_close_act(actual, reference, dtype, what: str = "", gradient: bool = False) -> None:
    """An activation's result vs float64, elementwise: float32 to RTOL_ACT_F32 (atol ATOL_ACT_F32), float64 to
    RTOL_F64 (atol ATOL_ACT_F64); a gradient also gets atol = rtol * max|reference| (dy * f'(x) cancels where f
    saturates). NaN and +-inf at exactly the reference's positions."""
    actual, reference = split_nonfinite(actual, reference, what)
    rtol, atol = (RTOL_F64, ATOL_ACT_F64) if np.dtype(dtype) == np.float64 else (RTOL_ACT_F32, ATOL_ACT_F32)
    if gradient and reference.size:
        atol += rtol * float(np.max(np.abs(reference)))
    np.testing.assert_allclose(actual, reference, rtol=rtol, atol=atol, err_msg=what)
