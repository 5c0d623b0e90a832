"""Iterative error feedback: the recursion, its start and its gradients."""
import pytest
import torch

from morphable.nets.heads import IterativeErrorFeedback


def test_iterations_accumulate_corrections_from_the_initial_estimate():
    torch.manual_seed(0)
    init = torch.tensor([1.0, -2.0, 0.5])
    ief = IterativeErrorFeedback(4, 3, hidden=8, iterations=3, dropout=0.0, initial=init).eval()
    x = torch.randn(5, 4)
    steps = ief(x, all_steps=True)
    assert steps.shape == (3, 5, 3)
    torch.testing.assert_close(steps[-1], ief(x))
    # each step adds the MLP's correction read at the previous estimate
    prev = init.expand(5, -1)
    for t in range(3):
        torch.testing.assert_close(steps[t] - prev, ief.mlp(torch.cat([x, prev], 1)))
        prev = steps[t]
    # training mode (the module path, dropout 0 here) computes the same recursion
    torch.testing.assert_close(ief.train()(x, all_steps=True), steps)
    ief.eval()
    # a zero last layer leaves the initial estimate untouched
    torch.nn.init.zeros_(ief.mlp[-1].weight)
    torch.testing.assert_close(ief(x), init.expand(5, -1))
    with pytest.raises(ValueError):
        IterativeErrorFeedback(4, 3, initial=torch.zeros(2))


def test_gradients_match_finite_differences():
    torch.manual_seed(1)
    ief = IterativeErrorFeedback(3, 2, hidden=5, iterations=3, dropout=0.0).double().eval()
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: ief(v), (x,))


def test_learns_a_nonlinear_map():
    torch.manual_seed(2)
    ief = IterativeErrorFeedback(2, 2, hidden=32, iterations=3, dropout=0.0, output_gain=1.0)
    x = torch.rand(128, 2) * 2 - 1
    y = torch.stack([x[:, 0] * x[:, 1], x[:, 0] ** 2 - x[:, 1]], 1)
    opt = torch.optim.Adam(ief.parameters(), lr=1e-2)
    with torch.no_grad():
        start = float(((ief(x) - y) ** 2).mean())
    for _ in range(200):
        opt.zero_grad()
        loss = ((ief(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
    assert loss.item() < 0.02 * start


def test_cached_first_layer_follows_weight_changes():
    """Without gradients the first layer's split is cached; an in-place change of the weight (an optimiser
    step, ``load_state_dict``) must show in the next output."""
    torch.manual_seed(3)
    ief = IterativeErrorFeedback(4, 3, hidden=8, iterations=2, dropout=0.0).eval()
    x = torch.randn(2, 4)

    def by_hand() -> torch.Tensor:
        theta = torch.zeros(2, 3)
        for _ in range(2):
            theta = theta + ief.mlp(torch.cat([x, theta], 1))
        return theta

    with torch.no_grad():
        before = ief(x)
        torch.testing.assert_close(before, by_hand())
        ief.mlp[0].weight.mul_(-1.5)
        torch.testing.assert_close(ief(x), by_hand())
        assert float((ief(x) - before).abs().max()) > 1e-4
