"""Start training from another run's weights: pre-training, then fine-tuning.

The AWP paper's Table 2 "Pre-training" rows fine-tune a pre-trained WideResNet-28-10 for 50
epochs with learning rate 0.001 (Hendrycks et al. 2019), with and without AWP. ``run.init_from``
names the checkpoint: a wpat checkpoint or a plain state dict (also under ``state_dict`` /
``model``, with ``module.`` / ``_orig_mod.`` prefixes). Every weight of the new model comes from
it, except the classifier when its number of classes differs: that layer (the model's last
``nn.Linear``) is initialised afresh. The normalization inside the model stays the new config's.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from wpat.checkpoints.files import load_checkpoint
from wpat.helpers.errors import WpatError
from wpat.training.loading import checkpoint_weights, wpat_names


def classifier_name(model: nn.Module) -> str:
    """The name of the model's last ``nn.Linear`` (its classifier)."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise WpatError(f"{type(model).__name__} has no linear classifier to replace")
    return names[-1]


def init_from(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """Load ``path``'s weights into ``model`` in place; returns the names of the re-initialised
    classifier's tensors (empty when the numbers of classes agree)."""
    theirs = wpat_names(checkpoint_weights(load_checkpoint(path), path))
    own = model.state_dict()
    head = classifier_name(model)
    head_keys = {k for k in own if k.startswith(head + ".")}
    network = [k for k in own if not k.startswith("normalize.")]
    wrong = [k for k in network if k not in head_keys and (k not in theirs or theirs[k].shape != own[k].shape)]
    extra = [k for k in theirs if k not in own and not k.startswith("normalize.")]
    if wrong or extra:
        example = (wrong or extra)[0]
        raise WpatError(f"{path}: not weights of this architecture ({len(wrong)} of its tensors missing or "
                        f"of another shape, {len(extra)} unknown, e.g. {example!r}); run.init_from needs a "
                        f"checkpoint of model.name's architecture")
    replace = [k for k in head_keys if k not in theirs or theirs[k].shape != own[k].shape]
    with torch.no_grad():
        for key in network:
            if key not in replace:
                own[key].copy_(theirs[key])
    if replace:
        dict(model.named_modules())[head].reset_parameters()
    return sorted(replace)
