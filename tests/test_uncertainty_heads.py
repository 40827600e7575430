"""The uncertainty kind's math and directory format, without a model: logits in, numbers out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rewardline.services.uncertainty.model_format import SPEC_FILE, UncertaintySpec, read_spec, write_spec
from rewardline.services.uncertainty.outputs import HeadLayout, head_outputs, level_masses, split_outputs, stack_members

CALIBRATION = {"percentile": 95.0, "threshold": 1.5, "n": 10, "data": "held-out pairs"}


def test_outputs_are_laid_out_member_then_parameter_then_attribute():
    layout = HeadLayout("gaussian", members=2, attributes=("a", "b"))
    logits = np.arange(8, dtype=np.float32)[None, :]  # index = (member * 2 + parameter) * 2 + attribute
    split = split_outputs(logits, layout)
    assert split.shape == (1, 2, 2, 2)
    assert split[0, 1, 0, 1] == (1 * 2 + 0) * 2 + 1  # member 1, mean, attribute b
    assert split[0, 0, 1, 0] == (0 * 2 + 1) * 2 + 0  # member 0, log_variance, attribute a
    assert layout.output_names()[5] == "member1.mean.b"
    with pytest.raises(ValueError, match=r"shape \(N, 8\)"):
        split_outputs(np.zeros((1, 6)), layout)


def test_ensemble_score_is_the_member_mean_and_std_their_spread():
    rng = np.random.default_rng(0)
    layout = HeadLayout("ensemble", members=5, attributes=("score",))
    logits = rng.normal(size=(7, 5))
    out = head_outputs(split_outputs(logits, layout), layout, np.array([1.0]))
    np.testing.assert_allclose(out.score, logits.mean(axis=1))
    np.testing.assert_allclose(out.member_scores, logits)
    np.testing.assert_allclose(out.epistemic_std, logits.std(axis=1))
    np.testing.assert_allclose(out.std, out.epistemic_std)
    assert (out.aleatoric_std == 0).all() and out.quantiles is None


def test_attribute_weights_combine_members_scores():
    layout = HeadLayout("ensemble", members=2, attributes=("a", "b"))
    logits = np.array([[1.0, 3.0, 2.0, 5.0]])  # member 0: a=1, b=3; member 1: a=2, b=5
    out = head_outputs(split_outputs(logits, layout), layout, np.array([0.5, 0.5]))
    np.testing.assert_allclose(out.member_scores, [[2.0, 3.5]])
    np.testing.assert_allclose(out.attributes, [[1.5, 4.0]])
    np.testing.assert_allclose(out.score, [2.75])


def test_gaussian_std_adds_the_predicted_variance_to_the_members_disagreement():
    layout = HeadLayout("gaussian", members=2, attributes=("score",))
    # member 0: mean 1, variance e^0 = 1; member 1: mean 3, variance e^log(4) = 4
    logits = np.array([[1.0, 0.0, 3.0, np.log(4.0)]])
    out = head_outputs(split_outputs(logits, layout), layout, np.array([1.0]))
    assert out.score[0] == pytest.approx(2.0)
    assert out.epistemic_std[0] == pytest.approx(1.0)
    assert out.aleatoric_std[0] == pytest.approx(np.sqrt(2.5))
    assert out.std[0] == pytest.approx(np.sqrt(1.0 + 2.5))


def test_gaussian_head_with_a_wild_log_variance_stays_finite():
    layout = HeadLayout("gaussian", members=1, attributes=("score",))
    out = head_outputs(split_outputs(np.array([[0.0, 1e6]]), layout), layout, np.array([1.0]))
    assert np.isfinite(out.std).all()


def test_crossing_quantile_heads_come_back_sorted():
    layout = HeadLayout("quantile", members=2, attributes=("score",), quantile_levels=(0.1, 0.5, 0.9))
    logits = np.array([[3.0, 1.0, 2.0, 0.0, 5.0, -1.0]])  # both members' heads cross
    out = head_outputs(split_outputs(logits, layout), layout, np.array([1.0]))
    assert out.quantiles is not None
    np.testing.assert_allclose(out.quantiles, [[(1 - 1) / 2, (2 + 0) / 2, (3 + 5) / 2]])
    assert (np.diff(out.quantiles, axis=1) >= 0).all()
    masses = level_masses([0.1, 0.5, 0.9])
    np.testing.assert_allclose(masses, [0.3, 0.4, 0.3])
    np.testing.assert_allclose(out.member_scores, [[np.dot([1, 2, 3], masses), np.dot([-1, 0, 5], masses)]])


def test_negative_attribute_weights_still_give_monotone_quantiles():
    rng = np.random.default_rng(1)
    layout = HeadLayout("quantile", members=3, attributes=("a", "b"), quantile_levels=(0.05, 0.25, 0.5, 0.75, 0.95))
    out = head_outputs(split_outputs(rng.normal(size=(20, 30)), layout), layout, np.array([1.0, -2.0]))
    assert (np.diff(out.quantiles, axis=1) >= 0).all()
    assert (out.std >= 0).all()


def test_level_masses_sum_to_one_and_are_equal_for_midpoint_levels():
    np.testing.assert_allclose(level_masses([0.1, 0.3, 0.5, 0.7, 0.9]), [0.2] * 5)
    assert level_masses([0.05, 0.2, 0.5, 0.99]).sum() == pytest.approx(1.0)


def test_checkpoint_members_stack_into_the_same_shape():
    layout = HeadLayout("checkpoint_ensemble", members=3, attributes=("score",))
    stacked = stack_members([np.array([[1.0]]), np.array([[2.0]]), np.array([[6.0]])], layout)
    out = head_outputs(stacked, layout, np.array([1.0]))
    assert out.score[0] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="expected 3 members"):
        stack_members([np.array([[1.0]])], layout)


def test_spec_round_trips_and_derives_parameters(tmp_path):
    spec = UncertaintySpec(kind="quantile", members=2, quantile_levels=[0.1, 0.5, 0.9], calibration=CALIBRATION)
    assert spec.parameters == ["q0.1", "q0.5", "q0.9"] and spec.outputs_per_checkpoint == 6
    write_spec(tmp_path, spec)
    assert read_spec(tmp_path) == spec


@pytest.mark.parametrize(
    "change,message",
    [
        ({"format": 2}, "format 2 is not supported"),
        ({"kind": "quantile", "quantile_levels": [0.5, 0.1]}, "strictly ascending"),
        ({"quantile_levels": [0.5]}, "only for the quantile kind"),
        ({"layout": ["attribute", "member", "parameter"]}, "layout must be"),
        ({"kind": "checkpoint_ensemble", "member_dirs": ["members/0"]}, "members=2 but 1 member_dirs"),
        ({"kind": "checkpoint_ensemble", "member_dirs": ["/abs", "../up"]}, "relative paths inside"),
        ({"attributes": ["a", "a"]}, "attribute names repeat"),
        ({"parameters": ["mean"]}, "parameters of a ensemble model must be"),
        ({"calibration": None}, "calibration"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_specs_are_refused_naming_the_problem(tmp_path, change, message):
    data = {"kind": "ensemble", "members": 2, "calibration": CALIBRATION, **change}
    (tmp_path / SPEC_FILE).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        read_spec(tmp_path)


def test_a_directory_without_a_spec_is_not_an_uncertainty_model(tmp_path):
    with pytest.raises(ValueError, match="is not an uncertainty model"):
        read_spec(tmp_path)
    (tmp_path / SPEC_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_spec(tmp_path)
