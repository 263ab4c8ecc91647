"""Datasets: readers of the official file formats, specs, on-device batching and augmentation.

    from wpat.data import load_dataset, dataset_spec, DeviceLoader

    x, y = load_dataset("fashion_mnist", "train")             # uint8 [N,1,28,28], int64 [N]
    spec = dataset_spec("fashion_mnist")
    loader = DeviceLoader(x, y, 128, shuffle=True, drop_last=True, augment=spec.augment)

    # Cutout 14 and mixup (α = 1.4): y is then float soft targets [B, 10].
    loader = DeviceLoader(x, y, 128, shuffle=True, drop_last=True, augment=spec.augment,
                          cutout=14, mix="mixup", mix_alpha=1.4, num_classes=10)
"""

# The reader modules register themselves in DATASETS on import.
from wpat.data import cifar, idx, svhn  # noqa: F401
from wpat.data.datasets import DATASETS, SPLITS, load_dataset
from wpat.data.download import Source, fetch
from wpat.data.extra import EXTRA_FORMATS, ExtraData, open_extra, read_rst_pickle, write_npz
from wpat.data.loader import AUGMENTATIONS, DeviceLoader
from wpat.data.locate import cache_dir, search_dirs
from wpat.data.mixing import MIXES, cutmix, cutout, mixup
from wpat.data.specs import SPECS, DatasetSpec, dataset_spec
from wpat.data.split import split_validation
from wpat.data.stream import ExtraStream

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "MIXES",
    "SPECS",
    "SPLITS",
    "DatasetSpec",
    "DeviceLoader",
    "EXTRA_FORMATS",
    "ExtraData",
    "ExtraStream",
    "Source",
    "cache_dir",
    "cutmix",
    "cutout",
    "dataset_spec",
    "fetch",
    "load_dataset",
    "mixup",
    "open_extra",
    "read_rst_pickle",
    "search_dirs",
    "split_validation",
    "write_npz",
]
