"""The GPU fast path, tested for equality on the CPU: bf16 autocast and torch.compile of the
model's forward give the plain path's training step within a stated tolerance."""

import copy

import pytest
import torch

from wpat.attacks import PGD
from wpat.models import build_model
from wpat.objectives import OBJECTIVES, Batch
from wpat.perturb import AWP, RWP
from wpat.training.step import train_step


def one_step(model, make, autocast=False):
    """One AT step from fixed adversarial examples (crafted in fp32 beforehand): under bf16 the
    attack's sign steps may flip on near-zero input gradients, a difference of the attack, not
    of the step."""
    torch.manual_seed(3)
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    x_adv = PGD(0.1, 0.05, 3, bn_mode="eval")(copy.deepcopy(model), x, y)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        train_step(model, Batch(x, y), lambda m, a, b: x_adv, OBJECTIVES.build("at"), make(), optimizer)
    return {k: v - before[k] for k, v in model.state_dict().items() if v.dtype.is_floating_point}


def fresh():
    torch.manual_seed(0)
    return build_model("small_cnn", num_classes=10, in_channels=1, mean=(0.3,), std=(0.3,), width=4)


@pytest.mark.parametrize("make", [lambda: None, lambda: AWP(gamma=0.01),
                                  lambda: RWP(gamma=0.01, c_min=float("inf"), steps=2)])
def test_bf16_autocast_step_is_the_fp32_step_within_bf16_precision(make):
    """Tolerance (bf16 keeps 8 bits of mantissa; weights, deltas and v stay fp32): the update of
    all conv/linear weights has cosine >= 0.99 with the fp32 update and a norm within 5 %; each
    tensor's update within 25 %. (Measured: cosine 0.999, norm within 0.3 %, tensors within
    15 %.) Before autocast's weight cache was cleared on every in-place move, the bf16 search
    and step silently ran at w instead of w + v: a norm 17 % off, which this test catches."""
    model = fresh()
    other = copy.deepcopy(model)
    plain, fast = one_step(model, make), one_step(other, make, autocast=True)
    assert all(t.dtype == torch.float32 for t in other.state_dict().values() if t.is_floating_point())
    keys = [k for k in plain if plain[k].dim() > 1 and not k.startswith("normalize.")]
    a, b = torch.cat([plain[k].flatten() for k in keys]), torch.cat([fast[k].flatten() for k in keys])
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) >= 0.99
    assert 0.95 <= float(b.norm() / a.norm()) <= 1.05
    for key in keys:
        assert (fast[key] - plain[key]).norm() / plain[key].norm() < 0.25, key


@pytest.mark.slow  # compiling takes a minute or more on a CPU
def test_compiled_forward_step_is_the_plain_step():
    """Tolerance: 1e-5 absolute on the weights (the same arithmetic, fused)."""
    model = fresh()
    other = copy.deepcopy(model)
    plain = one_step(model, lambda: AWP(gamma=0.01))
    compiled = torch.compile(other)
    fast = one_step(compiled, lambda: AWP(gamma=0.01))
    for key in plain:
        torch.testing.assert_close(fast["_orig_mod." + key] if "_orig_mod." + key in fast else fast[key],
                                   plain[key], rtol=1e-4, atol=1e-5)
