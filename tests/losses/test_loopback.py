"""Genova's parameter loss and the rescaling of its weights."""
import pytest
import torch

from morphable.losses.loopback import PAPER_LAMBDA_S, PAPER_LAMBDA_T, parameter_loss, rescaled_weights


def test_hand_computed_value():
    s_pred, s_true = torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    t_pred, t_true = torch.tensor([[2.0], [0.0]]), torch.zeros(2, 1)
    # shape: (1 + 4) and 1 -> mean 3; texture: 4 and 0 -> mean 2
    got = parameter_loss(s_pred, s_true, t_pred, t_true, lambda_s=0.5, lambda_t=0.25)
    assert float(got) == pytest.approx(0.5 * 3 + 0.25 * 2)
    assert float(parameter_loss(s_pred, s_true, lambda_s=1.0)) == pytest.approx(3.0)


def test_rescaled_weights_keep_the_paper_per_coefficient_weight():
    lam_s, lam_t = rescaled_weights(199, 199)
    assert (lam_s, lam_t) == (PAPER_LAMBDA_S, PAPER_LAMBDA_T)
    lam_s, lam_t = rescaled_weights(100, 27)
    # a unit squared error in every coefficient costs what it costs for the paper's 199 + 199
    assert lam_s * 100 == pytest.approx(PAPER_LAMBDA_S * 199) and lam_t * 27 == pytest.approx(PAPER_LAMBDA_T * 199)


def test_shape_mismatch():
    with pytest.raises(ValueError, match="must match"):
        parameter_loss(torch.zeros(2, 3), torch.zeros(2, 4))
