"""`wpat.helpers.model_state.kept`: the one way a model is handed back as it was found."""

import pytest
import torch
from torch import nn

from wpat.helpers.model_state import kept


def model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Dropout(0.1), nn.Linear(3, 2))
    net.train()
    net[2].eval()  # deliberately mixed modes
    return net


def state(net):
    return ({k: v.clone() for k, v in net.state_dict().items()}, [m.training for m in net.modules()])


def same(net, before):
    tensors, modes = before
    return all(torch.equal(v, tensors[k]) for k, v in net.state_dict().items()) and \
        [m.training for m in net.modules()] == modes


def test_weights_buffers_and_mixed_modes_come_back_bitwise_even_when_the_block_raises():
    net = model()
    before = state(net)
    weights = [net[0].weight, net[3].weight]
    with pytest.raises(RuntimeError, match="inside"):
        with kept(net, weights, buffers=True, train=True) as saved:
            assert all(m.training for m in net.modules())  # train=True: the whole model
            assert all(torch.equal(w, c) for w, c in zip(weights, saved.w))
            with torch.no_grad():
                net[0].weight.add_(1.0)
                net[3].weight.mul_(3.0)
            net(torch.randn(8, 4))  # updates the BatchNorm running statistics
            saved.forwarded = True
            raise RuntimeError("inside")
    assert same(net, before)


def test_what_the_block_left_alone_is_not_rewritten():
    """A graph built before the block (whose BatchNorm backward reads the running statistics)
    stays usable: untouched weights and, without a forward, the buffers are not copied back."""
    net = model()
    loss = net(torch.randn(8, 4)).sum()
    with kept(net, list(net.parameters()), buffers=True, train=False):
        assert not any(m.training for m in net.modules())
    loss.backward()  # would raise had a saved tensor been rewritten in place
    assert net[0].weight.grad is not None


def test_only_kept_tensors_are_restored():
    net = model()
    before = net[3].weight.clone()
    with kept(net, [net[0].weight]):
        with torch.no_grad():
            net[3].weight.add_(1.0)  # not kept: the block's change stays
    assert torch.equal(net[3].weight, before + 1.0)
