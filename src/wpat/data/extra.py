"""Extra training data: RST's pseudo-labelled pickle and generated-data ``.npz`` files.

    from wpat.data.extra import open_extra, write_npz

    extra = open_extra(["part0.npz", "part1.npz"], shape=(3, 32, 32), num_classes=10)
    images, labels = extra.read(0, 512)     # uint8 [512, 32, 32, 3] (NHWC), int64 [512]

Formats (each a reader in :data:`EXTRA_FORMATS`, picked by the file's first bytes):

- ``npz``: arrays ``image`` (uint8 ``[N, H, W, C]``, NHWC as the DM-AT code writes them, or
  ``[N, H, W]`` when C = 1) and ``label`` (any integer dtype, ``[N]``). Uncompressed members are
  read by offset without loading them (:mod:`wpat.data.npz`), so host memory stays bounded
  whatever the file size; compressed members are decompressed in chunks, which is slow for
  random access (rewrite such files uncompressed once with :func:`write_npz`).
- ``rst_pickle``: the RST release ``ti_500K_pseudo_labeled.pickle``, a dict with ``data``
  (uint8 ``[N, 32, 32, 3]``) and ``extrapolated_targets`` (integers ``[N]``). Unpickling can run
  code, so it goes through :class:`RestrictedUnpickler`, which admits only NumPy array
  reconstruction and plain containers and refuses any other global by name before anything is
  called. The whole pickle is held in memory (about twice the array size while loading).
  **Prefer ``.npz``**: convert a pickle once with ``write_npz(out, *read_rst_pickle(path))``.

Several files (parts) are combined in the order given. Shapes, dtypes, label ranges and lengths
are checked when opening; every problem is one :class:`~wpat.helpers.errors.WpatError` naming the file
and what was expected. wpat writes ``.npz`` only (uncompressed ``image``/``label``).
"""

from __future__ import annotations

import _codecs
import glob
import importlib
import math
import os
import pickle
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from wpat.data.npz import MemoryArray, NpzWriter, npz_arrays
from wpat.helpers.errors import WpatError
from wpat.helpers.registry import Registry

EXTRA_FORMATS = Registry("extra data format")
LABEL_SCAN_ROWS = 1 << 20  # labels checked in chunks of this many entries (8 MiB as int64)


def _numpy(module: str, name: str):
    """``numpy._core.<module>.<name>`` (NumPy 2) or ``numpy.core.<module>.<name>`` (NumPy 1)."""
    try:
        return getattr(importlib.import_module(f"numpy._core.{module}"), name)
    except (ImportError, AttributeError):
        return getattr(importlib.import_module(f"numpy.core.{module}"), name)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes, restricted to latin-1."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return _codecs.encode(text, "latin1")


def _allowed_globals() -> dict[str, object]:
    allowed: dict[str, object] = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype,
                                  "_codecs.encode": _latin1_encode}
    for core in ("numpy.core", "numpy._core"):
        allowed[f"{core}.multiarray._reconstruct"] = _numpy("multiarray", "_reconstruct")
        allowed[f"{core}.multiarray.scalar"] = _numpy("multiarray", "scalar")
        allowed[f"{core}.numeric._frombuffer"] = _numpy("numeric", "_frombuffer")  # protocol 5
    for builtins in ("builtins", "__builtin__"):  # plain containers (protocols 0-2 say __builtin__)
        for kind in (set, frozenset, bytearray):
            allowed[f"{builtins}.{kind.__name__}"] = kind
    return allowed


class Refused(pickle.UnpicklingError):
    """A pickle asked for something outside the allow list (the message says what)."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles NumPy arrays, numbers, strings and plain containers only.

    ``find_class`` returns an object from a fixed allow list (array reconstruction, ``dtype``,
    NumPy scalars, latin-1 bytes of old protocols, ``set``/``frozenset``/``bytearray``); any other
    global is refused with an :class:`UnpicklingError` before it is imported, so no code in the
    file is ever run.
    """

    _allowed = None

    def find_class(self, module: str, name: str) -> object:
        if RestrictedUnpickler._allowed is None:
            RestrictedUnpickler._allowed = _allowed_globals()
        found = self._allowed.get(f"{module}.{name}")
        if found is None:
            raise Refused(f"the global {module}.{name!s}")
        return found

    def persistent_load(self, pid: object) -> object:
        raise Refused("a persistent id (an object stored outside the pickle)")


def read_rst_pickle(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(data uint8 [N,32,32,3], extrapolated_targets int64 [N])`` of an RST pickle, loaded
    with :class:`RestrictedUnpickler`; unchecked shapes (see :func:`open_extra`)."""
    path = Path(path)
    try:
        with open(path, "rb", buffering=1 << 20) as f:
            obj = RestrictedUnpickler(f).load()
    except Refused as err:
        raise WpatError(f"{path}: refused: the pickle would load {err}, which is not NumPy array "
                        f"data; nothing in it was run (only arrays, numbers, strings and plain "
                        f"containers are accepted; prefer .npz files)") from None
    except MemoryError:
        raise WpatError(f"{path}: not enough memory to unpickle it (a pickle is loaded whole, about "
                        f"twice its size); convert it to .npz once on a larger machine") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError) as err:
        raise WpatError(f"{path}: not a readable pickle, truncated or corrupt "
                        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    except OSError as err:
        raise WpatError(f"{path}: cannot read the file ({err.strerror or err})") from None
    if not isinstance(obj, dict) or not {"data", "extrapolated_targets"} <= set(obj):
        found = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise WpatError(f"{path}: expected RST's dict with 'data' and 'extrapolated_targets', found {found}")
    data, targets = obj["data"], obj["extrapolated_targets"]
    if not isinstance(data, np.ndarray):
        raise WpatError(f"{path}: 'data' must be a NumPy uint8 array, found {type(data).__name__}")
    return data, np.asarray(targets)


@EXTRA_FORMATS.register("npz", magic=b"PK\x03\x04")
def _npz(path: Path) -> dict[str, object]:
    arrays = npz_arrays(path)
    if "image" not in arrays:
        raise WpatError(f"{path}: no 'image' array (found: {', '.join(sorted(arrays)) or 'none'}); "
                        f"expected 'image' (uint8 NHWC) and 'label' (integers)")
    return {"image": arrays["image"], "label": arrays.get("label")}


@EXTRA_FORMATS.register("rst_pickle", magic=b"\x80")
def _rst_pickle(path: Path) -> dict[str, object]:
    data, targets = read_rst_pickle(path)
    return {"image": MemoryArray(data, f"{path}: 'data'"),
            "label": MemoryArray(targets, f"{path}: 'extrapolated_targets'")}


def expand_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Files named by ``paths``: a file, a directory (its ``*.npz`` in name order), a glob
    pattern, a comma-separated list or a sequence of these."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    out: list[Path] = []
    for item in items:
        for text in str(item).split(",") if isinstance(item, str) else [item]:
            path = Path(text)
            if path.is_dir():
                found = sorted(path.glob("*.npz"))
            elif any(c in str(text) for c in "*?["):
                found = sorted(Path(p) for p in glob.glob(str(text)))
            else:
                found = [path]
            if not found:
                raise WpatError(f"extra data: nothing matches {str(text)!r}")
            out += found
    return out


class ExtraData:
    """Extra images (and labels) from one or several files, read by example range.

    Attributes: ``shape`` (C, H, W) of one image; ``labeled``; ``len()`` examples; ``paths``.
    """

    def __init__(self, parts: list[tuple[Path, object, object]], shape: tuple[int, int, int]) -> None:
        self.parts, self.shape = parts, shape
        self.paths = [p for p, _, _ in parts]
        self.labeled = all(label is not None for _, _, label in parts)
        self.starts = np.cumsum([0] + [len(image) for _, image, _ in parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def read(self, start: int, stop: int, out: tuple[np.ndarray, np.ndarray | None] | None = None
             ) -> tuple[np.ndarray, np.ndarray | None]:
        """Examples ``[start, stop)``: uint8 images ``[n, H, W, C]`` and int64 labels ``[n]``
        (None if unlabeled), whichever parts they come from; in new arrays, or in ``out``
        (C-contiguous arrays of those shapes), filled without intermediate copies."""
        c, h, w = self.shape
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"extra data: examples [{start}, {stop}) outside [0, {len(self)})")
        if out is None:
            out = (np.empty((stop - start, h, w, c), np.uint8),
                   np.empty(stop - start, np.int64) if self.labeled else None)
        images, labels = out
        for k, (_, image, label) in enumerate(self.parts):
            lo, hi = max(start, int(self.starts[k])), min(stop, int(self.starts[k + 1]))
            if lo < hi:
                offset = int(self.starts[k])
                image.read(lo - offset, hi - offset, out=images[lo - start:hi - start])
                if labels is not None:
                    label.read(lo - offset, hi - offset, out=labels[lo - start:hi - start])
        return images, labels

    def chunks(self, size: int, start: int = 0) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
        """``(first index, images, labels)`` for consecutive chunks of ``size`` examples."""
        for lo in range(start, len(self), size):
            yield (lo, *self.read(lo, min(lo + size, len(self))))

    def close(self) -> None:
        for _, image, label in self.parts:
            image.close()
            if label is not None:
                label.close()

    def __enter__(self) -> "ExtraData":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_extra(paths: str | os.PathLike | Sequence[str | os.PathLike], *,
               shape: tuple[int, int, int] = (3, 32, 32), num_classes: int | None = 10,
               labels: bool = True) -> ExtraData:
    """Open extra data files (see the module docstring) as one :class:`ExtraData`.

    Args:
        paths: a file, several (parts, combined in order), a directory of ``.npz`` or a pattern.
        shape: one image as (C, H, W) of the dataset being trained (CIFAR: (3, 32, 32),
            Fashion-MNIST: (1, 28, 28)); files store it as [H, W, C] (or [H, W] when C = 1).
        num_classes: labels must lie in 0..num_classes-1 (None: only non-negative).
        labels: False ignores labels (files without ``label`` are accepted: data to pseudo-label).
    """
    parts = []
    for path in expand_paths(paths):
        if not path.is_file():
            raise WpatError(f"extra data file not found: {path}")
        with open(path, "rb") as f:
            head = f.read(8)
        fmt = next((n for n in EXTRA_FORMATS.names() if head.startswith(EXTRA_FORMATS.info(n)["magic"])), None)
        if fmt is None:
            raise WpatError(f"{path}: not an extra data file (expected an .npz archive or RST's pickle; "
                            f"starts with bytes {head.hex(' ') or 'none: empty'})")
        arrays = EXTRA_FORMATS.get(fmt)(path)
        image, label = arrays["image"], arrays["label"] if labels else None
        _check_images(path, image, shape)
        if labels:
            _check_labels(path, image, label, num_classes)
        parts.append((path, image, label))
    return ExtraData(parts, tuple(shape))


def _check_images(path: Path, image, shape: tuple[int, int, int]) -> None:
    c, h, w = shape
    accepted = [(h, w, c)] + ([(h, w)] if c == 1 else [])
    if image.dtype != np.uint8 or len(image.shape) < 1 or tuple(image.shape[1:]) not in accepted:
        wanted = " or ".join(f"[N,{','.join(map(str, s))}]" for s in accepted)
        raise WpatError(f"{path}: images must be uint8 {wanted} (NHWC), found {image.dtype} "
                        f"{list(image.shape)}")


def _check_labels(path: Path, image, label, num_classes: int | None) -> None:
    if label is None:
        raise WpatError(f"{path}: no labels ('label' array); pseudo-label it first with `wpat pseudolabel`")
    if label.dtype.kind not in "iu" or len(label.shape) != 1:
        raise WpatError(f"{path}: labels must be integers [N], found {label.dtype} {list(label.shape)}")
    if len(label) != len(image):
        raise WpatError(f"{path}: {len(label)} labels for {len(image)} images; expected one label per image")
    if len(label) == 0:
        return
    low, high = math.inf, -math.inf
    for start in range(0, len(label), LABEL_SCAN_ROWS):
        chunk = label.read(start, min(start + LABEL_SCAN_ROWS, len(label)))
        low, high = min(low, int(chunk.min())), max(high, int(chunk.max()))
    if low < 0 or (num_classes is not None and high >= num_classes):
        allowed = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
        raise WpatError(f"{path}: labels must lie in {allowed}, found {low}..{high}")


def write_npz(path: str | os.PathLike, image, label=None, *, layout: str = "NHWC") -> Path:
    """Write ``image`` (uint8, ``layout`` "NHWC" or wpat's "NCHW"; NumPy or CPU torch) and
    ``label`` (integers, stored int64) as an uncompressed ``.npz`` that :func:`open_extra`
    reads, atomically. Returns the path."""
    image = np.asarray(image)
    if layout == "NCHW":
        image = image.transpose(0, 2, 3, 1)
    elif layout != "NHWC":
        raise WpatError(f"write_npz: layout must be NHWC or NCHW, got {layout!r}")
    if image.dtype != np.uint8 or image.ndim != 4:
        raise WpatError(f"write_npz: images must be uint8 [N,H,W,C], found {image.dtype} {list(image.shape)}")
    with NpzWriter(path) as writer:
        writer.write("image", image.shape, np.uint8, [image])
        if label is not None:
            label = np.asarray(label)
            if label.shape != (len(image),) or label.dtype.kind not in "iu":
                raise WpatError(f"write_npz: expected {len(image)} integer labels, found {label.dtype} "
                                f"{list(label.shape)}")
            writer.write("label", label.shape, np.int64, [label])
    return Path(path)
