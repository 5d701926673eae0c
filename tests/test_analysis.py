"""summary, receptive_field and flops, against numbers worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest

from cnnkit import analysis, models, nn


def _by_name(rows):
    return {r["name"]: r for r in rows}


# ----------------------------------------------------------------------------------------------- summary
def test_summary_classic_lenet5_parameter_counts(capsys):
    rows = analysis.summary(models.lenet5(classic=True))
    params = [(r["type"], r["params"]) for r in rows if r["params"]]
    assert params == [("Conv2d", 156), ("Subsampling", 12), ("Conv2d", 1516), ("Subsampling", 32),
                      ("Conv2d", 48120), ("Linear", 10164), ("Linear", 850), ("", 60850)]
    assert rows[-1]["name"] == "total" and rows[-1]["output_shape"] == (1, 10)
    shapes = [r["output_shape"] for r in rows if r["type"] in ("Conv2d", "Subsampling")]
    assert shapes == [(1, 6, 28, 28), (1, 6, 14, 14), (1, 16, 10, 10), (1, 16, 5, 5), (1, 120, 1, 1)]
    out = capsys.readouterr().out
    assert "60,850" in out and "Subsampling" in out


def test_summary_resnet20_nested_and_residual():
    model = models.resnet(20)
    rows = analysis.summary(model, print_table=False)
    named = _by_name(rows)
    assert rows[-1]["params"] == model.num_parameters() == 272474
    assert named["4.0.0.projection.0"]["output_shape"] == (1, 32, 16, 16)
    assert named["4.0.0.projection.0"]["params"] == 16 * 32  # 1x1 conv, no bias
    assert named["5.2.0.body.3"]["output_shape"] == (1, 64, 8, 8)
    assert named["6"]["output_shape"] == (1, 64)
    assert sum(r["type"] == "Conv2d" for r in rows) == 19 + 2  # 19 convs of the 6n+2 count, 2 projections


def test_summary_has_no_side_effects():
    model = models.resnet(20)
    model.train()
    bn = model[1]
    mean_before = bn.running_mean.copy()
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    y_before = model.eval()(x)
    model.train()
    analysis.summary(model, print_table=False)
    assert all(layer.training for _, layer in model.modules())
    np.testing.assert_array_equal(bn.running_mean, mean_before)
    assert not any({"forward", "fuse_activation"} & set(vars(layer)) for _, layer in model.modules())
    np.testing.assert_array_equal(model.eval()(x), y_before)


def test_summary_dropout_counter_untouched_and_explicit_input_shape():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.Dropout(0.5), nn.Linear(5, 2))
    rows = analysis.summary(model, (3, 4), print_table=False)
    assert [r["output_shape"] for r in rows] == [(1, 12), (1, 5), (1, 5), (1, 2), (1, 2)]
    assert rows[-1]["params"] == 12 * 5 + 5 + 5 * 2 + 2
    assert model[2].calls == 0


def test_analysis_input_errors():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="input_shape is required"):
        analysis.summary(model)
    with pytest.raises(ValueError, match="input_shape"):
        analysis.summary(model, (0, 4))
    with pytest.raises(TypeError, match="cnnkit Layer"):
        analysis.flops("model", (4,))
    with pytest.raises(ValueError, match="batch_size"):
        analysis.flops(model, (4,), batch_size=0)


# ----------------------------------------------------------------------------------------------- receptive field
def test_receptive_field_lenet5():
    # rf += (k-1) * jump; jump *= stride; start += ((k-1)/2 - pad) * jump, from rf=1, jump=1, start=0
    # C1 k5: rf 5, jump 1, start 2 | S2 k2 s2: 6, 2, 2.5 | C3 k5: 6+4*2=14, 2, 6.5 | S4: 14+2=16, 4, 7.5
    # C5 k5: 16+4*4=32, 4, 15.5
    for classic in (False, True):
        rows = analysis.receptive_field(models.lenet5(classic=classic))
        got = [(r["rf"][0], r["jump"][0], r["start"][0]) for r in rows]
        assert got == [(5, 1, 2.0), (6, 2, 2.5), (14, 2, 6.5), (16, 4, 7.5), (32, 4, 15.5)]
        assert all(r["rf"][0] == r["rf"][1] for r in rows)


def test_receptive_field_dilation_padding_and_rectangular_kernels():
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, dilation=2, padding=2),      # rf 1+2*2=5, jump 1, start 0+(2-2)=0
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),           # rf 5+2*1=7, jump 2, start 0+(1-1)=0
        nn.Conv2d(2, 2, (3, 5)),                        # rf (7+2*2, 7+4*2)=(11, 15), start (0+1*2, 0+2*2)
    )
    rows = analysis.receptive_field(model, (1, 20, 20))
    assert [r["rf"] for r in rows] == [(5, 5), (7, 7), (11, 15)]
    assert [r["jump"] for r in rows] == [(1, 1), (2, 2), (2, 2)]
    assert [r["start"] for r in rows] == [(0.0, 0.0), (0.0, 0.0), (2.0, 4.0)]


def test_receptive_field_residual_takes_the_larger_branch():
    body = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1))  # rf 3, 5
    model = nn.Sequential(nn.Residual(body, nn.Conv2d(2, 2, 1)), nn.Conv2d(2, 2, 3))  # then rf 5 + 2 = 7
    rows = _by_name(analysis.receptive_field(model, (2, 8, 8)))
    assert rows["0.body.0"]["rf"] == (3, 3) and rows["0.body.2"]["rf"] == (5, 5)
    assert rows["0.projection"]["rf"] == (1, 1)
    assert rows["1"]["rf"] == (7, 7) and rows["1"]["start"] == (1.0, 1.0)


# ----------------------------------------------------------------------------------------------- FLOPs
def test_flops_single_conv_and_linear():
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
    # output 8 x 5 x 5 on a 9x9 input: 2 * (N*K*OH*OW) * (C/groups) * R * S
    (row, total) = analysis.flops(nn.Sequential(conv), (3, 9, 9), batch_size=3)
    assert row["forward"] == 2 * (3 * 8 * 5 * 5) * 3 * 3 * 3 == 32400
    assert row["backward"] == 2 * row["forward"] and total["forward"] == row["forward"]

    grouped = nn.Sequential(nn.Conv2d(4, 6, 3, groups=2))
    assert analysis.flops(grouped, (4, 6, 6))[0]["forward"] == 2 * (6 * 4 * 4) * (4 // 2) * 3 * 3

    mlp = nn.Sequential(nn.Linear(20, 7), nn.ReLU())
    rows = analysis.flops(mlp, (20,), batch_size=5)
    assert [r["forward"] for r in rows] == [2 * 5 * 20 * 7] * 2
    assert rows[-1]["backward"] == 4 * 5 * 20 * 7


def test_flops_lenet5_totals():
    c1 = 2 * (6 * 28 * 28) * 1 * 5 * 5
    c3 = 2 * (16 * 10 * 10) * 6 * 5 * 5   # dense: the classic connection table is a mask on the full kernel
    c5 = 2 * (120 * 1 * 1) * 16 * 5 * 5
    f6 = 2 * 120 * 84
    out = 2 * 84 * 10
    expected = c1 + c3 + c5 + f6 + out
    assert expected == 833040
    for classic in (False, True):
        rows = analysis.flops(models.lenet5(classic=classic), batch_size=2)
        assert [r["type"] for r in rows[:-1]] == ["Conv2d"] * 3 + ["Linear"] * 2
        assert rows[-1]["forward"] == 2 * expected
        assert rows[-1]["backward"] == 4 * expected
