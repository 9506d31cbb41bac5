"""Gstack growth timing: the published table, the fallback, bad inputs."""

import pytest

from growlm.errors import GrowlmError
from growlm.plan.gstack import FALLBACK_FRACTION, GrowthTimingWarning, gstack_timing


@pytest.mark.parametrize("params, tokens, expected_billions", [
    (8e9, 15e12, 6.58),   # Llama3-8B
    (7e9, 2e12, 11.11),   # Llama2-7B
    (13e9, 2e12, 15.84),  # Llama2-13B
    (70e9, 2e12, 42.48),  # Llama2-70B
])
def test_published_table(params, tokens, expected_billions):
    out = gstack_timing(params, tokens)
    assert out["growth_factor"] == 4
    assert out["rule"] == "fit" and out["warning"] is None
    assert round(out["growth_tokens"] / 1e9, 2) == expected_billions


def test_explicit_compute_budget_is_used():
    default = gstack_timing(7e9, 2e12)
    explicit = gstack_timing(7e9, 2e12, C=6 * 7e9 * 2e12)
    assert explicit["growth_tokens"] == default["growth_tokens"]
    assert gstack_timing(7e9, 2e12, C=1e23)["growth_tokens"] != default["growth_tokens"]


def test_below_the_fitted_range_falls_back():
    with pytest.warns(GrowthTimingWarning, match="below the fitted range"):
        out = gstack_timing(410e6, 8.2e9)  # C ≈ 2e19: the fit would say 19.8B > D
    assert out["rule"] == "fallback"
    assert out["fit_tokens"] == pytest.approx(19.8e9, rel=0.01)
    assert out["growth_tokens"] == round(8.2e9 * FALLBACK_FRACTION)
    assert out["growth_tokens"] < 8.2e9


def test_fit_beyond_the_budget_falls_back():
    with pytest.warns(GrowthTimingWarning, match="not below the budget"):
        out = gstack_timing(1e9, 20e9)  # C = 1.2e20 is in range, but the fit gives 20.5B ≥ D
    assert out["rule"] == "fallback" and out["growth_tokens"] < 20e9


def test_tiny_cpu_budget_stays_sensible():
    with pytest.warns(GrowthTimingWarning):
        out = gstack_timing(2e6, 30e6)
    assert 0 < out["growth_tokens"] < 30e6


@pytest.mark.parametrize("n, d, c, what", [(0, 1e9, None, "parameter count"),
                                           (1e9, -5, None, "token count"),
                                           (1e9, 1e9, 0, "compute budget")])
def test_bad_inputs(n, d, c, what):
    with pytest.raises(GrowlmError, match=what):
        gstack_timing(n, d, c)
