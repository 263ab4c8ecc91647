"""Extra data: the .npz and RST-pickle readers, their validation, and the streaming loader.

Files are fabricated in tmp_path: single and multi-part uncompressed .npz, a compressed one,
RST pickles of every protocol, and a pickle carrying code (refused, never run). The stream is
checked to be a function of (seed, epoch), resumable bitwise from any position, and to keep
host memory flat on a file larger than the memory it is allowed.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch

from wpat.data.extra import ExtraData, open_extra, read_rst_pickle, write_npz
from wpat.data.stream import ExtraStream, stream_order
from wpat.helpers.errors import WpatError

N = 700


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (N, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, N)


@pytest.fixture(scope="module")
def parts(tmp_path_factory, arrays):
    """The same N examples as three uncompressed parts (wpat's writer and numpy's own)."""
    images, labels = arrays
    root = tmp_path_factory.mktemp("parts")
    write_npz(root / "part0.npz", images[:250], labels[:250])
    np.savez(root / "part1.npz", image=images[250:600], label=labels[250:600].astype(np.int32))
    write_npz(root / "part2.npz", images[600:], labels[600:].astype(np.uint8))
    return [root / f"part{k}.npz" for k in range(3)]


def _same(data: ExtraData, images, labels, start=0, stop=N):
    x, y = data.read(start, stop)
    assert x.dtype == np.uint8 and y.dtype == np.int64
    np.testing.assert_array_equal(x, images[start:stop])
    np.testing.assert_array_equal(y, labels[start:stop])


def test_multi_part_npz_reads_as_one(parts, arrays):
    data = open_extra(parts)
    assert len(data) == N and data.labeled and data.shape == (3, 32, 32)
    for start, stop in [(0, N), (240, 260), (599, 601), (10, 11), (N, N)]:
        _same(data, *arrays, start, stop)
    assert len(open_extra(parts[0].parent)) == N  # a directory of parts
    assert len(open_extra(f"{parts[0]},{parts[2]}")) == 350  # a comma-separated list
    chunks = list(data.chunks(300))
    assert [c[0] for c in chunks] == [0, 300, 600] and sum(len(c[1]) for c in chunks) == N
    data.close()


def test_written_npz_is_a_plain_uncompressed_npz(parts, arrays):
    with zipfile.ZipFile(parts[0]) as z:
        assert {i.filename for i in z.infolist()} == {"image.npy", "label.npy"}
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
    with np.load(parts[0]) as f:
        np.testing.assert_array_equal(f["image"], arrays[0][:250])
        assert f["label"].dtype == np.int64


def test_compressed_npz_is_read_in_chunks(tmp_path, parts, arrays):
    np.savez_compressed(tmp_path / "c.npz", image=arrays[0], label=arrays[1])
    data = open_extra(tmp_path / "c.npz")
    for start, stop in [(300, 400), (0, 50), (650, N)]:  # backwards and forwards
        _same(data, *arrays, start, stop)
    with _stream(tmp_path / "c.npz") as compressed, _stream(parts) as stored:  # the same stream
        for n in (50, 300, 120):
            a, b = compressed.next_batch(n), stored.next_batch(n)
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_rst_pickle(tmp_path, arrays, protocol):
    path = tmp_path / "ti_500K_pseudo_labeled.pickle"
    with open(path, "wb") as f:
        pickle.dump({"data": arrays[0], "extrapolated_targets": list(arrays[1])}, f, protocol=protocol)
    _same(open_extra(path), *arrays)
    data, targets = read_rst_pickle(path)
    assert data.shape == (N, 32, 32, 3) and targets.shape == (N,)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickle_carrying_code_is_refused_and_never_run(tmp_path, arrays, protocol):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pickle"
    with open(path, "wb") as f:
        pickle.dump({"data": arrays[0][:4], "extrapolated_targets": _Payload(marker)}, f, protocol=protocol)
    with pytest.raises(WpatError) as err:
        open_extra(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "refused" in message
    assert "system" in message  # names the global it tried to load (posix.system / nt.system)
    assert not marker.exists()


def _expect_error(tmp_path, name, fragments, **kw):
    with pytest.raises(WpatError) as err:
        open_extra(tmp_path / name, **kw)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / name) in message
    for fragment in fragments:
        assert fragment in message, message


def test_wrong_files_end_with_one_line_each(tmp_path, arrays):
    images, labels = arrays
    np.savez(tmp_path / "float.npz", image=images[:8].astype(np.float32), label=labels[:8])
    _expect_error(tmp_path, "float.npz", ["uint8 [N,32,32,3]", "float32 [8, 32, 32, 3]"])
    np.savez(tmp_path / "nchw.npz", image=images[:8].transpose(0, 3, 1, 2), label=labels[:8])
    _expect_error(tmp_path, "nchw.npz", ["[N,32,32,3]", "[8, 3, 32, 32]"])
    np.savez(tmp_path / "lengths.npz", image=images[:8], label=labels[:7])
    _expect_error(tmp_path, "lengths.npz", ["7 labels for 8 images"])
    np.savez(tmp_path / "range.npz", image=images[:8], label=np.arange(8) + 5)
    _expect_error(tmp_path, "range.npz", ["0..9", "5..12"])
    np.savez(tmp_path / "negative.npz", image=images[:8], label=-np.ones(8, np.int64))
    _expect_error(tmp_path, "negative.npz", ["0..9", "-1..-1"])
    np.savez(tmp_path / "flabel.npz", image=images[:8], label=labels[:8].astype(np.float64))
    _expect_error(tmp_path, "flabel.npz", ["integers [N]", "float64"])
    np.savez(tmp_path / "2dlabel.npz", image=images[:8], label=labels[:8, None])
    _expect_error(tmp_path, "2dlabel.npz", ["integers [N]", "[8, 1]"])
    np.savez(tmp_path / "names.npz", x=images[:8], y=labels[:8])
    _expect_error(tmp_path, "names.npz", ["no 'image' array", "x, y"])
    np.savez(tmp_path / "nolabel.npz", image=images[:8])
    _expect_error(tmp_path, "nolabel.npz", ["no labels"])
    np.savez(tmp_path / "objects.npz", image=np.array([object()] * 8), label=labels[:8])
    _expect_error(tmp_path, "objects.npz", ["Python objects"])
    (tmp_path / "page.html").write_text("<html>sign in</html>")
    _expect_error(tmp_path, "page.html", ["not an extra data file"])
    (tmp_path / "cut.npz").write_bytes((tmp_path / "float.npz").read_bytes()[:5000])
    _expect_error(tmp_path, "cut.npz", ["not a readable .npz"])
    with open(tmp_path / "dict.pickle", "wb") as f:
        pickle.dump({"images": images[:8]}, f, protocol=4)
    _expect_error(tmp_path, "dict.pickle", ["'data' and 'extrapolated_targets'", "images"])
    with open(tmp_path / "short.pickle", "wb") as f:
        f.write(pickle.dumps({"data": images[:8], "extrapolated_targets": labels[:8]}, protocol=4)[:-100])
    _expect_error(tmp_path, "short.pickle", ["truncated or corrupt"])
    _expect_error(tmp_path, "missing.npz", ["not found"])


def test_truncated_stored_member_is_detected(tmp_path, arrays):
    write_npz(tmp_path / "whole.npz", arrays[0], arrays[1])
    # Keep the image member's header but cut its data: the zip directory is gone as well.
    (tmp_path / "cut.npz").write_bytes((tmp_path / "whole.npz").read_bytes()[: N * 3072 // 2])
    _expect_error(tmp_path, "cut.npz", ["not a readable .npz"])


def test_the_dataset_image_shape_is_accepted(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (20, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "hw.npz", image=images, label=np.arange(20) % 10)
    write_npz(tmp_path / "hwc.npz", images[:, None], np.arange(20) % 10, layout="NCHW")
    data = open_extra([tmp_path / "hw.npz", tmp_path / "hwc.npz"], shape=(1, 28, 28))
    x, _ = data.read(15, 25)
    assert x.shape == (10, 28, 28, 1)
    np.testing.assert_array_equal(x[:, :, :, 0], np.concatenate([images[15:], images[:5]]))
    _expect_error(tmp_path, "hw.npz", ["[N,32,32,3]"])  # the default is CIFAR's shape


# ---------------------------------------------------------------------------------- stream

def _stream(parts, **kw):
    options = dict(seed=3, block_size=32, window=3, prefetch=2)
    options.update(kw)
    return ExtraStream(open_extra(parts), 50, **options)


def _draw(stream, sizes):
    batches = [stream.next_batch(n) for n in sizes]
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def test_stream_order_is_a_block_shuffle_of_each_pass(parts, arrays):
    images, labels = arrays
    with _stream(parts, epoch=2) as stream:
        x, y = _draw(stream, [50] * 30)  # 1500 examples: two passes and a bit
    order = np.concatenate([stream_order(N, seed=3, epoch=2, pass_=p, block_size=32, window=3) for p in range(3)])
    for p in range(2):
        assert sorted(order[p * N:(p + 1) * N]) == list(range(N))  # each example once per pass
    assert not np.array_equal(order[:N], order[N:2 * N])  # each pass its own order
    assert x.dtype == torch.float32 and x.shape == (1500, 3, 32, 32) and x.is_contiguous()
    expected = torch.from_numpy(images[order[:1500]]).permute(0, 3, 1, 2).float().div(255)
    assert torch.equal(x, expected) and torch.equal(y, torch.from_numpy(labels[order[:1500]]))


def test_same_seed_and_epoch_give_the_same_batches(parts):
    with _stream(parts, augment="crop_flip") as a, _stream(parts, augment="crop_flip") as b:
        a.seek(1), b.seek(1)
        xa, ya = _draw(a, [50] * 8)
        xb, yb = _draw(b, [50] * 8)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        b.seek(2)
        assert not torch.equal(_draw(b, [50] * 8)[1], ya)  # another epoch, another order
    with _stream(parts, seed=4) as c:
        c.seek(1)
        assert not torch.equal(_draw(c, [50] * 8)[1], ya)  # another seed, another order


@pytest.mark.parametrize("augment", ["none", "crop_flip"])
def test_resuming_at_a_position_replays_the_rest_bitwise(parts, augment):
    sizes = [50, 7, 120, 50, 50, 33, 50, 50, 200, 50, 50, 50]  # crosses windows and a pass end
    with _stream(parts, augment=augment) as stream:
        stream.seek(5)
        whole = [stream.next_batch(n) for n in sizes]
    for k in (1, 4, 8):
        with _stream(parts, augment=augment, epoch=5, position=sum(sizes[:k])) as resumed:
            for (x, y), n in zip(whole[k:], sizes[k:]):
                rx, ry = resumed.next_batch(n)
                assert torch.equal(rx, x) and torch.equal(ry, y)


def test_state_round_trip_and_mismatch(parts):
    with _stream(parts) as stream:
        _draw(stream, [50, 50, 17])
        state = stream.state()
        assert state["position"] == 117 and all(isinstance(v, int) for v in state.values())
        after = _draw(stream, [50, 50])
        stream.load_state(state)
        again = _draw(stream, [50, 50])
        assert torch.equal(after[0], again[0]) and torch.equal(after[1], again[1])
    with _stream(parts, block_size=64) as other:
        with pytest.raises(WpatError, match="block_size 32 saved, 64 now"):
            other.load_state(state)
    with pytest.raises(WpatError, match="has no labels"):
        np.savez(parts[0].parent / "unlabeled.npz", image=np.zeros((4, 32, 32, 3), np.uint8))
        ExtraStream(open_extra(parts[0].parent / "unlabeled.npz", labels=False), 2)


def test_a_reading_error_reaches_the_training_thread(parts, monkeypatch):
    stream = _stream(parts)

    def broken(*args, **kwargs):
        raise WpatError("disk on fire")

    monkeypatch.setattr(stream.data, "read", broken)
    with pytest.raises(WpatError, match="disk on fire"):
        stream.next_batch()
    stream.close()


MEMORY_SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from wpat.data.extra import open_extra
    from wpat.data.stream import ExtraStream

    path, limit = sys.argv[1], int(sys.argv[2])
    data = open_extra(path)
    stream = ExtraStream(data, 256, block_size=256, window=8, prefetch=4)
    stream.next_batch()  # thread started, first window read
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seen = 256
    while seen < len(data):
        x, y = stream.next_batch()
        seen += len(y)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stream.close()
    print((peak - base) * 1024, seen)
""")


def test_streaming_a_large_file_keeps_host_memory_flat(tmp_path):
    n = 68_000  # 209 MB of 32x32x3 images, well above the 40 MB the stream may grow by
    path = tmp_path / "large.npz"
    pattern = np.random.default_rng(0).integers(0, 256, (4_000, 32, 32, 3), dtype=np.uint8)
    from wpat.data.npz import NpzWriter

    with NpzWriter(path) as writer:
        writer.write("image", (n, 32, 32, 3), np.uint8, (pattern for _ in range(n // 4_000)))
        writer.write("label", (n,), np.int64, [np.arange(n) % 10])
    size = path.stat().st_size
    assert size > 200e6
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(path), str(size)],
                         capture_output=True, text=True, check=True).stdout.split()
    growth, seen = int(out[0]), int(out[1])
    assert seen >= n
    assert growth < 40e6, f"RSS grew by {growth / 1e6:.0f} MB while streaming a {size / 1e6:.0f} MB file"


@pytest.mark.parametrize("overrides, key, validation", [
    (["data.extra_fraction=0.5"], "data.extra:", False),  # a preset may leave the path to the user
    (["data.extra_fraction=0.5", "data.extra=somewhere.npz", "data.classes=[0,1]"], "data.classes:", True),
])
def test_extra_data_settings_are_refused_before_any_data_is_read(tmp_path, overrides, key, validation, monkeypatch):
    """A class subset with extra data is refused by the validation every command and every sweep
    runs (``experiment.build_components``); extra data without a source when training starts.
    Either way `wpat train` exits 2 before reading the dataset and leaves no run directory."""
    from wpat.training import experiment
    from wpat.cli import main
    from wpat.configuration.config import load_config

    def no_data(*args, **kwargs):
        raise AssertionError("data was read before the configuration was checked")

    monkeypatch.setattr(experiment, "load_dataset", no_data)
    if validation:
        with pytest.raises(WpatError, match=key):
            experiment.build_components(load_config(None, overrides))
    else:
        experiment.build_components(load_config(None, overrides))
    assert main(["train", "fmnist-smallcnn-linf", *overrides, f"run.out_dir={tmp_path}", "run.name=r"]) == 2
    assert not (tmp_path / "r").exists()
