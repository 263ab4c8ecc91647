"""The authors' released Wide ResNets load into wpat and compute what the TRADES code computes.

AWP's released TRADES-AWP WRN-34-10 and RST-AWP WRN-28-10 use the WideResNet of the TRADES code
(yaodongyu/TRADES models/wideresnet.py, also RobustBench's ``WideResNet``): ``conv1``; blocks
``block1..3`` of pre-activation BasicBlocks ``layer.{i}`` (``bn1``, ``conv1``, ``bn2``,
``conv2``, and a 1x1 ``convShortcut`` where the width changes); an unused ``sub_block1`` between
block1 and block2; then ``bn1``, ReLU, 8x8 average pooling, ``fc``. No normalization inside.
They are saved as a raw state_dict with DataParallel's ``module.`` prefix, or wrapped as the RST
code does (``dict(num_classes=..., state_dict=..., normalize_input=...)``).

The state dicts here are fabricated with exactly those names and shapes: by shape only (on the
meta device) for WRN-34-10 and WRN-28-10, and with real random values for small widths of the
same layout, whose logits are compared with a direct re-implementation of the TRADES forward.
``wpat eval FILE --config CFG`` runs end to end on a fabricated CIFAR-10 ``test_batch`` in the
official python-pickle format, under a tmp ``data.root``.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wpat.cli import main
from wpat.configuration.config import load_config
from wpat.training.loading import fit_state_dict, model_from_checkpoint
from wpat.training.experiment import model_from_config

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def trades_wrn_shapes(depth: int, widen: int, num_classes: int = 10, sub_block1: bool = True) -> dict[str, tuple]:
    """Key -> shape of the TRADES WideResNet's state_dict, in definition order."""
    n = (depth - 4) // 6
    channels = [16, 16 * widen, 32 * widen, 64 * widen]
    shapes: dict[str, tuple] = {"conv1.weight": (channels[0], 3, 3, 3)}

    def bn(prefix: str, c: int) -> None:
        shapes.update({f"{prefix}.{leaf}": (() if leaf == "num_batches_tracked" else (c,)) for leaf in BN})

    blocks = [("block1", channels[0], channels[1])]
    if sub_block1:
        blocks.append(("sub_block1", channels[0], channels[1]))
    blocks += [("block2", channels[1], channels[2]), ("block3", channels[2], channels[3])]
    for name, c_in, c_out in blocks:
        for i in range(n):
            first = c_in if i == 0 else c_out
            p = f"{name}.layer.{i}"
            bn(f"{p}.bn1", first)
            shapes[f"{p}.conv1.weight"] = (c_out, first, 3, 3)
            bn(f"{p}.bn2", c_out)
            shapes[f"{p}.conv2.weight"] = (c_out, c_out, 3, 3)
            if first != c_out:
                shapes[f"{p}.convShortcut.weight"] = (c_out, first, 1, 1)
    bn("bn1", channels[3])
    shapes["fc.weight"] = (num_classes, channels[3])
    shapes["fc.bias"] = (num_classes,)
    return shapes


def fabricate(shapes: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values of a trained network's kind: He-scaled convs, BN statistics near 0/1."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith(("running_mean", ".bias")):
            state[key] = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1:  # BN weight
            state[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = int(np.prod(shape[1:]))
            state[key] = torch.randn(shape, generator=g) * (2 / fan_in) ** 0.5
    return state


def trades_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The TRADES WideResNet forward in eval mode, written from its description."""

    def bn(t: torch.Tensor, p: str) -> torch.Tensor:
        return F.batch_norm(t, state[f"{p}.running_mean"], state[f"{p}.running_var"],
                            state[f"{p}.weight"], state[f"{p}.bias"], training=False, eps=1e-5)

    out = F.conv2d(x, state["conv1.weight"], padding=1)
    for k, stride in ((1, 1), (2, 2), (3, 2)):
        i = 0
        while f"block{k}.layer.{i}.conv1.weight" in state:
            p, s = f"block{k}.layer.{i}", stride if i == 0 else 1
            shortcut = state.get(f"{p}.convShortcut.weight")
            if shortcut is not None:  # not equalInOut: x itself becomes relu(bn1(x))
                out = F.relu(bn(out, f"{p}.bn1"))
                a = out
            else:
                a = F.relu(bn(out, f"{p}.bn1"))
            h = F.relu(bn(F.conv2d(a, state[f"{p}.conv1.weight"], stride=s, padding=1), f"{p}.bn2"))
            h = F.conv2d(h, state[f"{p}.conv2.weight"], padding=1)
            out = (out if shortcut is None else F.conv2d(out, shortcut, stride=s)) + h
            i += 1
    out = F.relu(bn(out, "bn1"))
    out = F.avg_pool2d(out, 8).flatten(1)
    return F.linear(out, state["fc.weight"], state["fc.bias"])


def expected_name(key: str, n: int) -> str:
    """wpat's name of a TRADES key (n layers per block), written independently of wpat.training.loading."""
    parts = key.split(".")
    if parts[0] == "conv1":
        return "net.stem.weight"
    if parts[0] == "bn1":
        return f"net.head.0.{parts[1]}"
    if parts[0] == "fc":
        return f"net.head.4.{parts[1]}"
    k, i, layer, leaf = int(parts[0][-1]), int(parts[2]), parts[3], parts[4]
    layer = "shortcut" if layer == "convShortcut" else layer
    return f"net.blocks.{(k - 1) * n + i}.{layer}.{leaf}"


def write_config(tmp_path: Path, model: str = "", data_root: Path | None = None) -> Path:
    """A config for the authors' checkpoints: the TRADES preset, no normalization inside."""
    path = tmp_path / "released.yaml"
    lines = ["base: cifar10-wrn34-10-trades", "model:", "  mean: [0, 0, 0]", "  std: [1, 1, 1]", model]
    if data_root is not None:
        lines += ["data:", f"  root: {data_root}"]
    path.write_text("\n".join(line for line in lines if line) + "\n")
    return path


@pytest.mark.parametrize("depth, model_name, sub_block1", [
    (34, "", False), (34, "", True),  # TRADES-AWP WRN-34-10, with or without sub_block1
    (28, "  name: wrn28_10", True),  # RST-AWP WRN-28-10 (RobustBench's Wu2020AdversarialNet)
])
def test_full_size_key_mapping_on_meta(depth, model_name, sub_block1, tmp_path):
    """Every TRADES tensor of WRN-34-10 / WRN-28-10 lands on the wpat tensor of the same role
    and shape; sub_block1 is dropped; no memory is allocated (meta device)."""
    cfg = load_config(str(write_config(tmp_path, model_name)))
    assert cfg.model.mean == [0, 0, 0] and cfg.model.std == [1, 1, 1]
    shapes = trades_wrn_shapes(depth, 10, sub_block1=sub_block1)
    with torch.device("meta"):
        model = model_from_config(cfg)
        theirs = {f"module.{k}": torch.empty(s) for k, s in shapes.items()}
    n = (depth - 4) // 6
    fitted = fit_state_dict(model, theirs, "released.pt", cfg)
    assert fitted.keys() == model.state_dict().keys()
    used = {k: v for k, v in shapes.items() if "sub_block" not in k and not k.endswith("num_batches_tracked")}
    for key in used:
        assert fitted[expected_name(key, n)] is theirs[f"module.{key}"], key
    own_weights = [k for k in fitted if not k.startswith("normalize.") and not k.endswith("num_batches_tracked")]
    assert len(own_weights) == len(used)
    assert sum(1 for k in used if "convShortcut" in k) == 3  # layer.0 of every block (widen 10)


def save_variants(state: dict[str, torch.Tensor], tmp_path: Path) -> list[Path]:
    """The ways the released files are saved: DataParallel raw state_dict, RST's wrapper, and a
    file whose keys are in sorted (not definition) order."""
    raw = tmp_path / "trades-awp.pt"
    torch.save({f"module.{k}": v for k, v in state.items()}, raw)
    rst = tmp_path / "rst-awp.pt"
    torch.save(dict(num_classes=10, state_dict={f"module.{k}": v for k, v in state.items()},
                    normalize_input=False), rst)
    shuffled = tmp_path / "sorted.pt"
    torch.save({k: state[k] for k in sorted(state)}, shuffled)
    return [raw, rst, shuffled]


@pytest.mark.parametrize("depth, widen, sub_block1", [(16, 2, True), (16, 2, False), (10, 1, True)])
def test_small_width_logits_match_the_trades_forward(depth, widen, sub_block1, tmp_path):
    """Same layout, small width: wpat's model from the file gives the TRADES forward's logits
    (widen 1 has no convShortcut in block1, widen 2 has one in layer 0 of every block)."""
    state = fabricate(trades_wrn_shapes(depth, widen, sub_block1=sub_block1))
    if sub_block1:  # the unused block must not matter: make it garbage
        state.update({k: torch.full_like(v, 1e6) for k, v in state.items()
                      if k.startswith("sub_block1") and v.is_floating_point()})
    config = write_config(tmp_path, f"  name: wide_resnet\n  wide_resnet: {{depth: {depth}, widen: {widen}}}")
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    reference = trades_forward(state, x)
    for path in save_variants(state, tmp_path):
        model, cfg, info = model_from_checkpoint(path, str(config))
        assert info["kind"] == "foreign"
        with torch.no_grad():
            logits = model.eval()(x)
        torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-4 * reference.abs().max().item())


def write_cifar10_test_batch(root: Path, images: np.ndarray, labels: list[int]) -> None:
    """``cifar-10-batches-py/test_batch`` as the official archive has it: a protocol-2 pickle of a
    dict with bytes keys, b"data" uint8 [N, 3072] (R, G, B planes, row-major)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": labels,
             b"data": images.reshape(len(images), 3 * 32 * 32),
             b"filenames": [f"img_{i}.png".encode() for i in range(len(images))]}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))


def test_wpat_eval_of_a_released_file_end_to_end(tmp_path, capsys):
    """``wpat eval FILE --config CFG --attacks natural --n-examples 8`` exits 0 and reports the
    accuracy the TRADES forward gives on the same images."""
    state = fabricate(trades_wrn_shapes(16, 2), seed=3)
    path = save_variants(state, tmp_path)[1]  # the RST wrapper with module. prefixes
    images = np.random.default_rng(0).integers(0, 256, size=(10, 3, 32, 32), dtype=np.uint8)
    predicted = trades_forward(state, torch.from_numpy(images[:8]).float() / 255).argmax(1).tolist()
    labels = predicted[:5] + [(p + 1) % 10 for p in predicted[5:]] + [0, 0]  # 5 of 8 right
    write_cifar10_test_batch(tmp_path / "data", images, labels)
    config = write_config(tmp_path, "  name: wide_resnet\n  wide_resnet: {depth: 16, widen: 2}", tmp_path / "data")
    out = tmp_path / "out"
    assert main(["eval", str(path), "--config", str(config), "--attacks", "natural", "--n-examples", "8",
                 "--no-checks", "--no-progress", "--out", str(out)]) == 0
    entry = json.loads((out / "eval.json").read_text())["checkpoints"]["rst-awp"]
    assert entry["kind"] == "foreign" and entry["settings"]["natural"]["n_examples"] == 8
    assert entry["accuracy"]["natural"] == pytest.approx(5 / 8)
    assert "62.50" in capsys.readouterr().out


@pytest.mark.slow
def test_full_size_wrn34_10_forward(tmp_path):
    """WRN-34-10 itself (46M parameters, ~185 MB file): the loaded model's logits equal the
    TRADES forward's. Slow on a CPU; run with ``pytest -m slow``."""
    state = fabricate(trades_wrn_shapes(34, 10))
    path = tmp_path / "wrn34.pt"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    model, _, _ = model_from_checkpoint(path, str(write_config(tmp_path)))
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference, logits = trades_forward(state, x), model.eval()(x)
    torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-4 * reference.abs().max().item())
