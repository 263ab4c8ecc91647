"""wpat.data: readers of the official formats, downloads, on-device batching, validation split.

Dataset files are fabricated in tmp_path in the exact official formats; downloads are served by
a local HTTP server. Only Fashion-MNIST is real (Debian's copy, skipped when absent).
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import gzip
import hashlib
import http.server
import io
import pickle
import re
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from conftest import FASHION_MNIST_DIR, fashion_mnist_available
from wpat.data import (
    AUGMENTATIONS,
    DATASETS,
    SPECS,
    DeviceLoader,
    dataset_spec,
    load_dataset,
    split_validation,
)
from wpat.data import cifar, idx, svhn
from wpat.helpers.errors import WpatError

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _isolated_search_path(tmp_path, monkeypatch):
    """Keep the user's real cache and $WPAT_DATA out of every test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("WPAT_DATA", raising=False)


# ---------------------------------------------------------------- fabricated official files


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    header = bytes((0, 0, 0x08, array.ndim)) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def make_idx_split(directory: Path, split: str, n: int, gz: bool = True) -> tuple[np.ndarray, np.ndarray]:
    directory.mkdir(parents=True, exist_ok=True)
    images = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = RNG.integers(0, 10, n, dtype=np.uint8)
    suffix = ".gz" if gz else ""
    prefix = "train" if split == "train" else "t10k"
    write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
    return images, labels


def cifar_batch(n: int, label_key: bytes, num_classes: int) -> dict:
    # As in the originals: bytes keys, uint8 [N, 3072] data, labels as a list of ints.
    return {
        b"batch_label": b"fabricated batch",
        label_key: [int(v) for v in RNG.integers(0, num_classes, n)],
        b"data": RNG.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }


CIFAR_CASES = {  # name -> (folder, archive, {split: batch files}, label key, classes)
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz",
                {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}, b"labels", 10),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz",
                 {"train": ["train"], "test": ["test"]}, b"fine_labels", 100),
}


def make_cifar(directory: Path, name: str, n_per_batch: int = 3) -> dict[str, list[dict]]:
    folder, _, batches, label_key, classes = CIFAR_CASES[name]
    (directory / folder).mkdir(parents=True)
    written = {}
    for split, files in batches.items():
        written[split] = []
        for file in files:
            batch = cifar_batch(n_per_batch, label_key, classes)
            if name == "cifar100":
                batch[b"coarse_labels"] = [0] * n_per_batch
            with open(directory / folder / file, "wb") as handle:
                pickle.dump(batch, handle, protocol=2)
            written[split].append(batch)
    return written


def expected_cifar(batches: list[dict], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    images = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([b[label_key] for b in batches])
    return images, labels


def make_tar(archive: Path, source_dir: Path, folder: str, extra: dict[str, bytes] | None = None) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source_dir / folder, arcname=folder)
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


def make_svhn(path: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    images = RNG.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)  # H x W x C x N, as official
    labels = np.arange(n, dtype=np.uint8).reshape(n, 1) % 10 + 1    # 1..10, 10 = digit 0
    scipy.io.savemat(path, {"X": images, "y": labels})
    return images, labels


# ---------------------------------------------------------------- specs and the registry


def test_specs_cover_every_dataset_with_paper_statistics():
    assert DATASETS.names() == sorted(SPECS) == ["cifar10", "cifar100", "fashion_mnist", "mnist", "svhn"]
    cifar10 = dataset_spec("cifar10")
    assert (cifar10.num_classes, cifar10.shape) == (10, (3, 32, 32))
    assert cifar10.mean == (0.4914, 0.4822, 0.4465) and cifar10.std == (0.2471, 0.2435, 0.2616)
    assert dataset_spec("cifar100").num_classes == 100
    assert dataset_spec("fashion_mnist").mean == (0.2860,) and dataset_spec("mnist").std == (0.3081,)
    assert {s.name: s.augment for s in SPECS.values()} == {
        "cifar10": "crop_flip", "cifar100": "crop_flip",
        "svhn": "none", "mnist": "none", "fashion_mnist": "none",
    }
    for spec in SPECS.values():
        assert spec.augment in AUGMENTATIONS
        assert len(spec.mean) == len(spec.std) == spec.shape[0]


def test_unknown_dataset_and_split_are_user_errors():
    with pytest.raises(WpatError, match="unknown dataset 'imagenet'.*cifar10, cifar100"):
        dataset_spec("imagenet")
    with pytest.raises(WpatError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet", "train")
    with pytest.raises(WpatError, match="unknown split 'val'"):
        load_dataset("mnist", "val")


# ---------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, name, gz):
    images, labels = make_idx_split(tmp_path, "test", 7, gz)
    x, y = load_dataset(name, "test", root=tmp_path)
    assert x.dtype == torch.uint8 and x.shape == (7, 1, 28, 28)
    assert y.dtype == torch.int64
    assert np.array_equal(x[:, 0].numpy(), images) and np.array_equal(y.numpy(), labels)


def test_wpat_data_directory_is_searched_and_root_comes_first(tmp_path, monkeypatch):
    _, env_labels = make_idx_split(tmp_path / "env" / "mnist", "train", 4)
    monkeypatch.setenv("WPAT_DATA", str(tmp_path / "env"))
    assert np.array_equal(load_dataset("mnist", "train")[1].numpy(), env_labels)
    _, root_labels = make_idx_split(tmp_path / "root", "train", 5)
    assert np.array_equal(load_dataset("mnist", "train", root=tmp_path / "root")[1].numpy(), root_labels)


def test_missing_dataset_lists_the_places_searched_and_the_fixes(tmp_path, monkeypatch):
    monkeypatch.setenv("WPAT_DATA", str(tmp_path / "env"))
    with pytest.raises(WpatError) as error:
        load_dataset("mnist", "train", root=tmp_path / "nowhere")
    message = str(error.value)
    assert "train-images-idx3-ubyte.gz" in message
    for place in (tmp_path / "nowhere", tmp_path / "env" / "mnist", tmp_path / "cache" / "wpat" / "mnist"):
        assert str(place) in message
    assert "$WPAT_DATA" in message and "data.download=true" in message and "data.root" in message


def test_truncated_idx_names_file_and_expected_size(tmp_path):
    make_idx_split(tmp_path, "train", 6)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    header = bytes((0, 0, 8, 3)) + struct.pack(">3I", 6, 28, 28)
    path.write_bytes(gzip.compress(header + bytes(1000)))
    with pytest.raises(WpatError, match=re.escape(f"{path}: truncated: expected 4704 image bytes, found 1000")):
        load_dataset("mnist", "train", root=tmp_path)


@pytest.mark.parametrize(
    "content, problem",
    [
        (gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 0)), "magic number 00000801, expected 00000803"),
        (gzip.compress(b"not an idx file at all"), "not an IDX image file"),
        (b"\x1f\x8b garbage that is not gzip", "corrupt"),
        (gzip.compress(bytes(2000))[:100], "corrupt"),  # gzip stream cut short
    ],
)
def test_corrupt_idx_is_reported_with_its_file_name(tmp_path, content, problem):
    make_idx_split(tmp_path, "train", 3)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(WpatError, match=problem) as error:
        load_dataset("mnist", "train", root=tmp_path)
    assert str(path) in str(error.value)


def test_idx_label_count_and_range_are_checked(tmp_path):
    make_idx_split(tmp_path, "train", 3)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    write_idx(labels, np.array([1, 2], dtype=np.uint8))
    with pytest.raises(WpatError, match="2 labels for the 3 images"):
        load_dataset("mnist", "train", root=tmp_path)
    write_idx(labels, np.array([1, 2, 12], dtype=np.uint8))
    with pytest.raises(WpatError, match=r"labels must lie in 0\.\.9, found 1\.\.12"):
        load_dataset("mnist", "train", root=tmp_path)


@pytest.mark.skipif(not fashion_mnist_available(), reason=f"{FASHION_MNIST_DIR} absent")
def test_real_fashion_mnist_loads_from_the_system_copy():
    for split, n in (("train", 60000), ("test", 10000)):
        x, y = load_dataset("fashion_mnist", split)
        assert x.shape == (n, 1, 28, 28) and x.dtype == torch.uint8
        assert y.shape == (n,) and y.dtype == torch.int64
        assert torch.equal(torch.bincount(y), torch.full((10,), n // 10))  # balanced, labels 0..9
        assert 0.25 < x.float().mean().item() / 255 < 0.32  # mean ~0.2860 (test ~0.2868)


# ---------------------------------------------------------------- CIFAR-10 / CIFAR-100


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("form", ["folder", "archive"])
def test_cifar_round_trip(tmp_path, name, form):
    folder, archive, _, label_key, _ = CIFAR_CASES[name]
    written = make_cifar(tmp_path / "src", name)
    root = tmp_path / "src"
    if form == "archive":
        root = tmp_path / "packed"
        root.mkdir()
        make_tar(root / archive, tmp_path / "src", folder)
    for split in ("train", "test"):
        images, labels = expected_cifar(written[split], label_key)
        x, y = load_dataset(name, split, root=root)
        assert x.dtype == torch.uint8 and x.shape == (len(labels), 3, 32, 32)
        assert np.array_equal(x.numpy(), images) and np.array_equal(y.numpy(), labels)


def test_archive_members_escaping_the_folder_are_never_written(tmp_path):
    make_cifar(tmp_path / "src", "cifar10", n_per_batch=2)
    root = tmp_path / "root"
    root.mkdir()
    evil = {"../escaped.txt": b"x", str(tmp_path / "absolute.txt"): b"x",
            "cifar-10-batches-py/../../escaped2.txt": b"x"}
    make_tar(root / "cifar-10-python.tar.gz", tmp_path / "src", "cifar-10-batches-py", evil)
    x, _ = load_dataset("cifar10", "test", root=root)
    assert x.shape == (2, 3, 32, 32)
    assert not any((tmp_path / name).exists() for name in ("escaped.txt", "escaped2.txt", "absolute.txt"))
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-python.tar.gz"]


def test_cifar_archive_that_is_truncated_or_incomplete_is_reported(tmp_path):
    make_cifar(tmp_path / "src", "cifar10", n_per_batch=2)
    archive = make_tar(tmp_path / "cifar-10-python.tar.gz", tmp_path / "src", "cifar-10-batches-py")
    archive.write_bytes(archive.read_bytes()[:300])
    with pytest.raises(WpatError, match="corrupt or truncated archive") as error:
        load_dataset("cifar10", "test", root=tmp_path)
    assert str(archive) in str(error.value)

    (tmp_path / "src" / "cifar-10-batches-py" / "test_batch").unlink()
    make_tar(archive, tmp_path / "src", "cifar-10-batches-py")
    with pytest.raises(WpatError, match=re.escape(f"{archive}: missing cifar-10-batches-py/test_batch")):
        load_dataset("cifar10", "test", root=tmp_path)


class _CodePayload:
    """Unpickling this calls exec(), which creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",)


def test_pickle_carrying_code_is_refused_and_never_runs(tmp_path):
    make_cifar(tmp_path, "cifar10", n_per_batch=2)
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _CodePayload(marker), b"labels": [0]}, protocol=2)
    pickle.loads(payload)  # the payload is live: plain pickle runs it
    assert marker.exists()
    marker.unlink()

    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(payload)
    with pytest.raises(WpatError, match=r"refused global (__builtin__|builtins)\.exec") as error:
        load_dataset("cifar10", "test", root=tmp_path)
    assert str(batch) in str(error.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "mutate, problem",
    [
        (lambda b: b.update({b"data": b[b"data"][:, :100]}), r"expected a dict with b'data' \(uint8 \[N,3072\]\)"),
        (lambda b: b.pop(b"labels"), "b'labels'"),
        (lambda b: b.update({b"labels": b[b"labels"][:1]}), "list of N ints"),
    ],
)
def test_cifar_batch_with_wrong_content_is_reported(tmp_path, mutate, problem):
    written = make_cifar(tmp_path, "cifar10", n_per_batch=2)
    batch = written["test"][0]
    mutate(batch)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(WpatError, match=problem) as error:
        load_dataset("cifar10", "test", root=tmp_path)
    assert str(path) in str(error.value)


def test_truncated_or_missing_cifar_batch_is_reported(tmp_path):
    make_cifar(tmp_path, "cifar10", n_per_batch=2)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(WpatError, match="not a valid CIFAR batch pickle") as error:
        load_dataset("cifar10", "train", root=tmp_path)
    assert str(path) in str(error.value)
    path.unlink()
    with pytest.raises(WpatError, match="data_batch_3: cannot read"):
        load_dataset("cifar10", "train", root=tmp_path)


# ---------------------------------------------------------------- SVHN


def test_svhn_round_trip_maps_label_10_to_digit_0(tmp_path):
    images, labels = make_svhn(tmp_path / "train_32x32.mat", 12)
    x, y = load_dataset("svhn", "train", root=tmp_path)
    assert x.dtype == torch.uint8 and x.shape == (12, 3, 32, 32)
    assert np.array_equal(x.numpy(), images.transpose(3, 2, 0, 1))
    assert y.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]
    assert x[4, 1, 7, 3].item() == images[7, 3, 1, 4]  # [n, c, h, w] <- [h, w, c, n]


def test_corrupt_or_invalid_svhn_file_is_reported(tmp_path):
    path = tmp_path / "test_32x32.mat"
    make_svhn(path, 4)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(WpatError, match="not a readable MATLAB file") as error:
        load_dataset("svhn", "test", root=tmp_path)
    assert str(path) in str(error.value)

    scipy.io.savemat(path, {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1], [11]], np.uint8)})
    with pytest.raises(WpatError, match=r"labels in 'y' must be integers in 1\.\.10"):
        load_dataset("svhn", "test", root=tmp_path)
    scipy.io.savemat(path, {"X": np.zeros((28, 28, 3, 2), np.uint8), "y": np.array([[1], [2]], np.uint8)})
    with pytest.raises(WpatError, match=r"expected 'X' of uint8 \[32,32,3,N\], found uint8 \[28, 28, 3, 2\]"):
        load_dataset("svhn", "test", root=tmp_path)


# ---------------------------------------------------------------- downloads


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_root(tmp_path, monkeypatch):
    """(directory served, base URL) of a local HTTP server on a random port."""
    for variable in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_verifies_checksum_and_lands_in_the_cache(tmp_path, http_root, monkeypatch):
    served, url = http_root
    images, labels = make_idx_split(served, "train", 5)
    checksums = {p.name: _md5(p) for p in served.iterdir()}
    # The first mirror is down: the next one is tried.
    monkeypatch.setitem(idx.MIRRORS, "mnist", (url + "missing/", url))
    monkeypatch.setitem(idx.MD5, "mnist", checksums)

    x, y = load_dataset("mnist", "train", download=True)
    assert np.array_equal(x[:, 0].numpy(), images) and np.array_equal(y.numpy(), labels)
    cache = tmp_path / "cache" / "wpat" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(checksums)

    for path in served.iterdir():  # present now: no second download needed
        path.unlink()
    assert torch.equal(load_dataset("mnist", "train", download=True)[1], y)


def test_download_with_wrong_checksum_fails_and_leaves_no_file(tmp_path, http_root, monkeypatch):
    served, url = http_root
    make_svhn(served / "train_32x32.mat", 3)
    wrong = "0" * 32
    monkeypatch.setitem(svhn.SOURCES, "train", svhn.Source("train_32x32.mat", (url + "train_32x32.mat",), wrong))
    actual = _md5(served / "train_32x32.mat")
    with pytest.raises(WpatError, match=f"checksum mismatch: expected md5 {wrong}, got {actual}"):
        load_dataset("svhn", "train", download=True)
    assert list((tmp_path / "cache" / "wpat" / "svhn").iterdir()) == []


def test_cifar_archive_download(tmp_path, http_root, monkeypatch):
    served, url = http_root
    written = make_cifar(tmp_path / "src", "cifar100", n_per_batch=2)
    archive = make_tar(served / "cifar-100-python.tar.gz", tmp_path / "src", "cifar-100-python")
    source = cifar.Source(archive.name, (url + archive.name,), _md5(archive))
    monkeypatch.setitem(cifar.LAYOUTS, "cifar100", dataclasses.replace(cifar.LAYOUTS["cifar100"], archive=source))
    _, y = load_dataset("cifar100", "test", download=True)
    assert np.array_equal(y.numpy(), expected_cifar(written["test"], b"fine_labels")[1])
    assert (tmp_path / "cache" / "wpat" / "cifar100" / archive.name).is_file()


# ---------------------------------------------------------------- DeviceLoader


def _indexed_data(n: int, shape=(3, 8, 8)) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images whose label is their own index, so a batch tells where it came from."""
    return torch.randint(0, 256, (n, *shape), dtype=torch.uint8), torch.arange(n)


def test_loader_yields_float_batches_in_unit_range():
    x, y = _indexed_data(10)
    loader = DeviceLoader(x, y, 4, shuffle=False, drop_last=False)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    xb, yb = batches[0]
    assert xb.dtype == torch.float32 and yb.dtype == torch.int64 and xb.shape == (4, 3, 8, 8)
    assert xb.min() >= 0 and xb.max() <= 1
    assert torch.equal(xb, x[:4].float() / 255) and torch.equal(yb, y[:4])


def test_loader_drop_last_and_batch_size_checks():
    x, y = _indexed_data(10)
    loader = DeviceLoader(x, y, 4, shuffle=True, drop_last=True)
    assert len(loader) == 2 and [len(b[1]) for b in loader] == [4, 4]
    with pytest.raises(WpatError, match="batch_size 11 exceeds the 10 examples"):
        DeviceLoader(x, y, 11, shuffle=True, drop_last=True)
    assert [len(b[1]) for b in DeviceLoader(x, y, 11, shuffle=True, drop_last=False)] == [10]
    with pytest.raises(WpatError, match="unknown augmentation 'jitter'.*crop_flip, flip, none"):
        DeviceLoader(x, y, 4, shuffle=True, drop_last=True, augment="jitter")
    with pytest.raises(WpatError, match="expected uint8 images"):
        DeviceLoader(x.float(), y, 4, shuffle=True, drop_last=True)


def _epoch(loader: DeviceLoader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def test_epoch_is_reproducible_and_epochs_differ():
    x, y = _indexed_data(64)
    loader = DeviceLoader(x, y, 16, shuffle=True, drop_last=False, augment="crop_flip", seed=3)
    first, second = _epoch(loader), _epoch(loader)  # iterating advances the epoch
    assert sorted(first[1].tolist()) == list(range(64))  # a permutation: each example once
    assert not torch.equal(first[1], second[1])
    loader.set_epoch(1)
    replay = _epoch(loader)
    assert torch.equal(replay[0], second[0]) and torch.equal(replay[1], second[1])  # order and crops

    other = DeviceLoader(x, y, 16, shuffle=True, drop_last=False, augment="crop_flip", seed=3)
    other.set_epoch(1)
    assert torch.equal(_epoch(other)[0], second[0])  # a fresh loader (a resumed run) agrees
    reseeded = DeviceLoader(x, y, 16, shuffle=True, drop_last=False, augment="crop_flip", seed=4)
    assert not torch.equal(_epoch(reseeded)[1], first[1])


def _crop_flip_candidates(image: torch.Tensor) -> list[torch.Tensor]:
    h, w = image.shape[-2:]
    padded = torch.nn.functional.pad(image, (4, 4, 4, 4))
    crops = [padded[:, top : top + h, left : left + w] for top in range(9) for left in range(9)]
    return crops + [crop.flip(-1) for crop in crops]


def test_crop_flip_is_a_shifted_or_flipped_copy_that_differs_per_example():
    x, y = _indexed_data(24)
    loader = DeviceLoader(x, y, 24, shuffle=True, drop_last=True, augment="crop_flip")
    xb, yb = next(iter(loader))
    matches = []
    for out, source in zip(xb, yb):
        candidates = _crop_flip_candidates(x[source].float() / 255)
        found = [i for i, c in enumerate(candidates) if torch.equal(out, c)]
        assert found, "output is not a padded crop (optionally flipped) of its source image"
        matches.append(found[0])
    assert len(set(matches)) > 12  # offsets and flips are drawn per example

    same = DeviceLoader(x[:1].expand(32, -1, -1, -1), torch.zeros(32, dtype=torch.long), 32,
                        shuffle=False, drop_last=True, augment="crop_flip")
    out, _ = next(iter(same))
    assert len({tuple(o.flatten().tolist()) for o in out}) > 16


def test_crop_offsets_span_four_pixels_each_way_and_flip_half_the_time():
    image = torch.zeros(1, 1, 16, 16, dtype=torch.uint8)
    image[0, 0, 6, 5] = 255  # ≥ 4 px from every border, so it is never cropped away
    image[0, 0, 6, 7] = 128  # lands left of the bright pixel exactly when the crop is flipped
    n = 4000
    loader = DeviceLoader(image.expand(n, -1, -1, -1), torch.zeros(n, dtype=torch.long), n,
                          shuffle=False, drop_last=True, augment="crop_flip")
    out = next(iter(loader))[0].flatten(1)
    bright, dim = out.argmax(1), (out * (out < 1)).argmax(1)
    rows, cols = bright // 16, bright % 16
    flipped = cols > dim % 16
    assert set((rows - 6).tolist()) == set(range(-4, 5))
    assert set(torch.where(flipped, cols - 10, cols - 5).tolist()) == set(range(-4, 5))  # 10 = mirror of 5
    assert 0.45 < flipped.float().mean().item() < 0.55


def test_flip_returns_the_image_or_its_mirror_both_occurring():
    x, y = _indexed_data(40)
    xb, yb = next(iter(DeviceLoader(x, y, 40, shuffle=False, drop_last=True, augment="flip")))
    source = x.float() / 255
    same = [torch.equal(o, s) for o, s in zip(xb, source)]
    mirrored = [torch.equal(o, s.flip(-1)) for o, s in zip(xb, source)]
    assert all(a or b for a, b in zip(same, mirrored))
    assert 5 < sum(mirrored) < 35


# ---------------------------------------------------------------- validation split


def test_split_validation_is_a_fixed_disjoint_subset():
    x, y = _indexed_data(50)
    x_train, y_train, x_val, y_val = split_validation(x, y, 10, seed=1)
    assert len(y_val) == 10 and len(y_train) == 40
    assert sorted(torch.cat([y_train, y_val]).tolist()) == list(range(50))
    assert torch.equal(x_val, x[y_val]) and torch.equal(x_train, x[y_train])
    assert y_train.tolist() == sorted(y_train.tolist())  # original order kept
    assert torch.equal(split_validation(x, y, 10, seed=1)[3], y_val)
    assert not torch.equal(split_validation(x, y, 10, seed=2)[3], y_val)


def test_split_validation_zero_and_bad_sizes():
    x, y = _indexed_data(5)
    x_train, y_train, x_val, y_val = split_validation(x, y, 0, seed=0)
    assert torch.equal(x_train, x) and x_val.shape == (0, 3, 8, 8) and y_val.shape == (0,)
    for bad in (-1, 5, 2.5, True):
        with pytest.raises(WpatError, match=r"n_val must be an integer in 0\.\.4"):
            split_validation(x, y, bad, seed=0)
