"""Loading a checkpoint into a model, in one place for ``wpat eval | landscape | lsc | plot``.

- :func:`model_from_checkpoint`: the model, config and ``{"kind", "epoch"}`` of a checkpoint;
  a wpat checkpoint rebuilds its own config, a foreign one (e.g. the authors' released
  state_dict) needs a config naming its model and dataset.
- :func:`fit_state_dict`: a foreign state_dict as a full state_dict of a wpat model, or one
  :class:`~wpat.helpers.errors.WpatError` naming both architectures; the TRADES-code Wide ResNet of the
  AWP/RWP authors' released checkpoints is mapped by name (:func:`translate_trades_wrn`), its
  unused ``sub_block1`` dropped.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from wpat.checkpoints.files import FORMAT, is_wpat_checkpoint, load_checkpoint
from wpat.configuration.config import Config, config_from_dict, load_config
from wpat.data import dataset_spec
from wpat.helpers.errors import WpatError
from wpat.training.experiment import model_from_config
from wpat.models import MODELS, build_model


def model_from_checkpoint(path: str | os.PathLike, config: str | Config | None = None
                          ) -> tuple[nn.Module, Config, dict[str, Any]]:
    """The model stored in ``path``, its config and ``{"kind", "epoch"}``.

    A wpat checkpoint rebuilds its own config; ``config`` (a preset name, a YAML file or a
    :class:`Config`) replaces it, and is required for a foreign checkpoint, whose state_dict
    (plain, or under "state_dict"/"model") is fitted into the config's model.
    """
    ckpt = load_checkpoint(path)
    if is_wpat_checkpoint(ckpt):
        cfg = _config(config) if config is not None else _stored_config(ckpt, path)
        info = {"kind": ckpt.get("kind"), "epoch": ckpt.get("epoch")}
    elif config is None:
        raise WpatError(f"{path}: not a wpat checkpoint (no format {FORMAT!r}); to evaluate a "
                        f"foreign state_dict, pass --config PRESET_OR_YAML naming its model and dataset")
    else:
        cfg = _config(config)
        info = {"kind": "foreign", "epoch": None}
    state = checkpoint_weights(ckpt, path)
    try:
        model = model_from_config(cfg)
    except WpatError as err:
        raise WpatError(f"{path}: {'stored config' if config is None else 'config'}: {err}") from None
    model.load_state_dict(fit_state_dict(model, state, str(path), cfg))
    return model, cfg, info


def checkpoint_weights(ckpt: Mapping[str, Any], path: str | os.PathLike) -> dict[str, Tensor]:
    """The state dict a loaded checkpoint holds: a wpat checkpoint's ``model``, or a foreign
    one's (plain, or under ``state_dict`` / ``model``); one WpatError if there is none."""
    if is_wpat_checkpoint(ckpt):
        state = ckpt.get("model")
    else:
        state = next((ckpt[k] for k in ("state_dict", "model") if isinstance(ckpt.get(k), dict)), ckpt)
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise WpatError(f"{path}: no model weights found (expected a state_dict of tensors)")
    if not all(isinstance(k, str) for k in state):
        raise WpatError(f"{path}: malformed state_dict (its keys must be parameter names)")
    return state


def wpat_names(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` under wpat's key names: prefixes stripped (:func:`_strip_all`) and a bare
    network's keys moved under ``net.`` (wpat models are ``Sequential(normalize, net)``)."""
    theirs = _strip_all(state)
    if not any(k.startswith(("net.", "normalize.")) for k in theirs):
        theirs = {f"net.{k}": v for k, v in theirs.items()}
    return theirs


def _config(config: str | Config) -> Config:
    return config if isinstance(config, Config) else load_config(str(config))


def _stored_config(ckpt: dict[str, Any], path: str | os.PathLike) -> Config:
    try:
        return config_from_dict(ckpt["config"])
    except WpatError as err:
        raise WpatError(f"{path}: stored config: {err}") from None
    except (KeyError, TypeError, AttributeError):
        raise WpatError(f"{path}: the checkpoint's stored config is missing or malformed") from None


def _strip(key: str) -> str:
    """Drop the prefixes of DataParallel ("module.") and torch.compile ("_orig_mod.")."""
    while key.startswith(("module.", "_orig_mod.")):
        key = key.split(".", 1)[1]
    return key


def _strip_all(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Keys without DataParallel/torch.compile prefixes, and without a "model." prefix that every
    key carries (a wrapper module named ``model``, as in some RobustBench checkpoints)."""
    theirs = {_strip(k): v for k, v in state.items()}
    if theirs and all(k.startswith("model.") for k in theirs):
        theirs = {_strip(k[len("model."):]): v for k, v in theirs.items()}
    return theirs


# The Wide ResNet of the TRADES code (yaodongyu/TRADES models/wideresnet.py), which the AWP and
# RWP authors' released WRN-34-10 / WRN-28-10 checkpoints use, and wpat's ``wide_resnet`` (a
# PreActResNet) name the same layers differently; the tensors and their meaning are the same:
# each BasicBlock is BN-ReLU-conv3x3-BN-ReLU-conv3x3 with a 1x1 convShortcut on the activated
# input where the width changes, exactly as wpat's PreActBlock.
_TRADES_BLOCK = re.compile(r"^block(\d+)\.layer\.(\d+)\.(bn1|conv1|bn2|conv2|convShortcut)\.(\w+)$")
_TRADES_OTHER = re.compile(r"^(conv1\.weight|bn1\.\w+|fc\.(weight|bias))$")
_TRADES_LAYERS = {"bn1": "bn1", "conv1": "conv1", "bn2": "bn2", "conv2": "conv2", "convShortcut": "shortcut"}
_TRADES_TOP = {"conv1": "stem", "bn1": "head.0", "fc": "head.4"}


def translate_trades_wrn(state: Mapping[str, Tensor]) -> dict[str, Tensor] | None:
    """A TRADES-code WideResNet state_dict under wpat's ``wide_resnet`` names, or None if
    ``state`` is not in that layout.

    ``conv1`` -> ``stem``; ``block{k}.layer.{i}.{bn1,conv1,bn2,conv2}`` ->
    ``blocks.{j}.{same}`` and ``...convShortcut`` -> ``blocks.{j}.shortcut``, where ``j``
    counts the layers of the blocks before ``k`` plus ``i``; ``bn1`` -> ``head.0``; ``fc`` ->
    ``head.4``. The unused ``sub_block1`` of the TRADES/RST code must be dropped before. The
    mapping is by name, so the order of the keys in the file does not matter.
    """
    layers: dict[int, int] = {}
    for key in state:
        match = _TRADES_BLOCK.match(key)
        if match:
            k, i = int(match.group(1)), int(match.group(2))
            layers[k] = max(layers.get(k, 0), i + 1)
        elif not _TRADES_OTHER.match(key):
            return None
    if not layers or sorted(layers) != list(range(1, len(layers) + 1)) or "fc.weight" not in state:
        return None
    offset, start = 0, {}
    for k in sorted(layers):
        start[k], offset = offset, offset + layers[k]
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        match = _TRADES_BLOCK.match(key)
        if match:
            k, i, layer, leaf = int(match.group(1)), int(match.group(2)), match.group(3), match.group(4)
            out[f"blocks.{start[k] + i}.{_TRADES_LAYERS[layer]}.{leaf}"] = value
        else:
            top, leaf = key.split(".", 1)
            out[f"{_TRADES_TOP[top]}.{leaf}"] = value
    return out


def _weights(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The entries that define the network: no normalization buffers, no BN batch counters."""
    return {k: v for k, v in state.items()
            if not k.startswith("normalize.") and not k.endswith("num_batches_tracked")}


def fit_state_dict(model: nn.Module, state: Mapping[str, Tensor], where: str, cfg: Config) -> dict[str, Tensor]:
    """``state`` as a full state_dict of ``model`` (a wpat ``Sequential(normalize, net)``).

    Its keys may carry "module." / "_orig_mod." prefixes (and "model." on every key) and may lack
    wpat's "net." prefix; keys of the unused ``sub_block1`` of the TRADES/RST Wide ResNet are
    dropped and that network's names are translated (:func:`translate_trades_wrn`). If the
    names then differ (another code base's layer names) but every tensor's shape matches
    in order, the tensors are taken in order. Normalization buffers it lacks (the authors'
    models normalize outside the network) are the config's dataset mean/std; a
    num_batches_tracked it lacks does not matter in eval mode. Anything else is one
    :class:`WpatError` naming both sides.
    """
    own = model.state_dict()
    theirs = _strip_all(state)
    if not any("sub_block" in k for k in own):  # the unused sub_block1 of the TRADES/RST WRN
        theirs = {k: v for k, v in theirs.items() if "sub_block" not in k}
    if not any(k.startswith(("net.", "normalize.")) for k in theirs):
        translated = translate_trades_wrn(theirs)
        if translated is not None and all(f"net.{k}" in own for k in translated):
            theirs = translated
        theirs = {f"net.{k}": v for k, v in theirs.items()}
    own_w, their_w = _weights(own), _weights(theirs)
    own_shapes, their_shapes = [v.shape for v in own_w.values()], [v.shape for v in their_w.values()]
    if own_w.keys() == their_w.keys() and all(own_w[k].shape == v.shape for k, v in their_w.items()):
        fitted = {**own, **their_w}
    elif own_shapes == their_shapes:
        fitted = {**own, **dict(zip(own_w, their_w.values()))}
    else:
        classes, arch = _describe(their_w)
        spec = dataset_spec(cfg.data.name)
        raise WpatError(
            f"{where}: checkpoint has {classes} output classes and the layout of {arch} "
            f"({len(their_w)} weight tensors) but the config builds {cfg.model.name} for "
            f"{cfg.data.name} ({spec.num_classes} classes, {len(own_w)} weight tensors{_difference(own_w, their_w)}); "
            f"pass a --config whose model and dataset match")
    for key in ("normalize.mean", "normalize.std"):
        if key in theirs and theirs[key].shape == own[key].shape:
            fitted[key] = theirs[key]
    return fitted


def _difference(own: dict[str, Tensor], theirs: dict[str, Tensor]) -> str:
    """", first difference: ..." -- the first tensor whose shape (or presence) differs."""
    for (k_own, v_own), (k_their, v_their) in zip(own.items(), theirs.items()):
        if v_own.shape != v_their.shape:
            name = k_own if k_own == k_their else f"{k_their} (model: {k_own})"
            return (f"; first difference: {name} is {list(v_their.shape)} in the checkpoint, "
                    f"{list(v_own.shape)} in the model")
    return ""


def _describe(weights: dict[str, Tensor]) -> tuple[Any, str]:
    """(output classes, the wpat architectures with this layout, or "an unknown network").

    An architecture matches by shapes, or else by key names alone (another width or class
    count of the same network)."""
    matrices = [v for v in weights.values() if v.dim() == 2]
    convs = [v for v in weights.values() if v.dim() == 4]
    if not matrices or not convs:
        return "an unknown number of", "an unknown network"
    classes, in_channels = matrices[-1].shape[0], convs[0].shape[1]
    by_shape, by_name = [], []
    for name in MODELS.names():
        try:
            with torch.device("meta"):  # shapes only: no memory, no initialisation cost
                candidate = _weights(build_model(name, num_classes=classes, in_channels=in_channels,
                                                 mean=[0.0] * in_channels, std=[1.0] * in_channels).state_dict())
        except WpatError:
            continue
        if [v.shape for v in candidate.values()] == [v.shape for v in weights.values()]:
            by_shape.append(name)
        elif list(candidate) == list(weights):
            by_name.append(name)
    found = by_shape or by_name
    return classes, "/".join(found) if found else "an unknown network"
