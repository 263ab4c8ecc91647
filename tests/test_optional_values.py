"""Optional config values: "the user chose none" is not "the user said nothing".

Only YAML's null leaves an optional value unset: a file's ``null`` or ``~``, a stored None, or
``null``/``~`` on the command line. The word ``none`` is a value: ``data.augment=none`` chooses
no augmentation, where unset means the dataset's default (crop and flip on CIFAR). Where the
word cannot be a value (a number, a list, a BN mode) it is refused with one line naming the key.
Every optional field of the config tree is covered, found from the dataclasses themselves.
"""

import pickle
from pathlib import Path
from typing import Union, get_args, get_origin, get_type_hints

import numpy as np
import pytest
import torch
import yaml

from conftest import SEED
from wpat.checkpoints.files import load_checkpoint
from wpat.configuration.config import Config, config_from_dict, dump_config, load_config
from wpat.helpers.errors import WpatError
from wpat.training.loop import train
from wpat.training.parts import Parts, build_parts


def optional_fields() -> dict[str, type]:
    """``section.key`` -> the declared type, for every field that may be unset (None)."""
    found = {}
    for section, section_type in get_type_hints(Config).items():
        for key, hint in get_type_hints(section_type).items():
            if get_origin(hint) is Union and type(None) in get_args(hint):
                found[f"{section}.{key}"] = next(a for a in get_args(hint) if a is not type(None))
    return found


OPTIONAL = optional_fields()
WORDS = sorted(k for k, t in OPTIONAL.items() if t is str and k != "attack.bn_mode")  # "none" is a value
NOT_WORDS = sorted(k for k in OPTIONAL if k not in WORDS)  # numbers, lists, a closed set without "none"


def get(cfg: Config, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def yaml_config(tmp_path: Path, key: str, text: str) -> str:
    section, name = key.split(".")
    path = tmp_path / "mine.yaml"
    path.write_text(f"{section}:\n  {name}: {text}\n")
    return str(path)


def test_the_audit_finds_every_optional_field():
    assert sorted(OPTIONAL) == ["attack.bn_mode", "attack.later_alpha", "attack.later_eps", "attack.later_from",
                                "attack.later_steps", "data.augment", "data.classes", "data.extra", "data.root",
                                "eval.alpha", "model.mean", "model.std", "run.init_from", "run.lsc_threshold", "run.name"]


@pytest.mark.parametrize("key", sorted(OPTIONAL))
def test_null_and_only_null_leaves_an_optional_value_unset(tmp_path, key):
    for spelling in ("null", "~", "NULL"):
        assert get(load_config(None, [f"{key}={spelling}"]), key) is None or key == "run.name"
    for text in ("null", "~", ""):
        cfg = load_config(yaml_config(tmp_path, key, text))
        assert get(cfg, key) is None or key == "run.name"  # an unset run.name is the file's name
    assert get(config_from_dict(load_config(None).to_dict()), key) is None or key == "run.name"


# What a value needs to take effect at all (a value without effect is refused: docs/design.md).
TAKES_EFFECT_WITH = {"data.extra": ["data.extra_fraction=0.5"]}


@pytest.mark.parametrize("key", WORDS)
def test_the_word_none_stays_a_word_through_override_yaml_dump_and_resume(tmp_path, key):
    override = load_config(None, [f"{key}=none", *TAKES_EFFECT_WITH.get(key, [])])
    from_yaml = load_config(yaml_config(tmp_path, key, "none"), TAKES_EFFECT_WITH.get(key, []))
    assert get(override, key) == "none" and get(from_yaml, key) == "none"
    stored = config_from_dict(override.to_dict())  # what --resume rebuilds from last.pt
    assert get(stored, key) == "none"
    dump_config(override, tmp_path / "config.yaml")  # what the run directory shows
    section, name = key.split(".")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())[section][name] == "none"
    assert get(load_config(str(tmp_path / "config.yaml")), key) == "none"


@pytest.mark.parametrize("key", NOT_WORDS)
def test_the_word_none_is_refused_where_it_cannot_be_a_value(tmp_path, key):
    for source, overrides in ((None, [f"{key}=none"]), (yaml_config(tmp_path, key, "none"), [])):
        with pytest.raises(WpatError, match=rf"^{key}: 'none' ") as err:
            load_config(source, overrides)
        assert "\n" not in str(err.value)


def test_a_refused_none_says_how_to_unset(tmp_path):
    with pytest.raises(WpatError, match=r"eval.alpha: 'none' is not a valid float \(null leaves eval.alpha unset\)"):
        load_config(None, ["eval.alpha=none"])


# ---------------------------------------------------------------------- end to end on CIFAR-10


def write_cifar10(root: Path, n_per_batch: int) -> torch.Tensor:
    """A fabricated CIFAR-10 in the official layout; returns its training images [N, 3, 32, 32]."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_images = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        batch = {b"data": data, b"labels": [int(v) for v in rng.integers(0, 10, n_per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        if name != "test_batch":
            train_images.append(torch.from_numpy(data).view(-1, 3, 32, 32))
    return torch.cat(train_images)


def unaugmented(parts: Parts, images: torch.Tensor) -> bool:
    """Whether every image of an epoch's batches is one of the training images as stored."""
    stored = {bytes(image.flatten().tolist()) for image in images}
    parts.loader.set_epoch(0)
    for x, _ in parts.loader:
        for image in (x * 255).round().to(torch.uint8):
            if bytes(image.flatten().tolist()) not in stored:
                return False
    return True


def test_augment_none_on_cifar_trains_and_resumes_without_augmentation(tmp_path):
    images = write_cifar10(tmp_path / "data", n_per_batch=16)
    tiny = ["data.name=cifar10", f"data.root={tmp_path / 'data'}", "data.batch_size=40", "data.test_subset=16",
            "model.name=small_cnn", "model.small_cnn.width=4", "attack.steps=1", "eval.steps=1",
            "eval.n_train=16", "schedule.epochs=1", "perturb.name=none", "run.progress=false",
            "run.tensorboard=false", f"run.out_dir={tmp_path / 'runs'}", f"run.seed={SEED}"]

    default = load_config(None, [*tiny, "run.name=default"])
    assert not unaugmented(build_parts(default), images)  # CIFAR's default crops and flips

    cfg = load_config(None, [*tiny, "data.augment=none", "run.name=plain"])
    run_dir = Path(train(cfg)["run_dir"])
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["augment"] == "none"
    stored = config_from_dict(load_checkpoint(run_dir / "last.pt")["config"])  # as `wpat train --resume` does
    assert stored.data.augment == "none"
    assert unaugmented(build_parts(stored, fresh=False), images)
