"""Data-parallel training: N ranks compute what one process computes on the global batch.

Two gloo processes on the CPU stand for two GPUs. The perturbation tests use a model without
BatchNorm, whose batch statistics would otherwise differ per share (``run.sync_bn`` is for that).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from conftest import fashion_mnist_available
from wpat.helpers import distributed
from wpat.perturb import RWP, AWP
from wpat.training.step import train_step

WORLD = 2


def failure(done) -> str:
    """What a failed launch printed: the processes' own messages come first, torchrun's report last."""
    return done.stderr[:3000] + "\n...\n" + done.stderr[-1500:]


def torchrun(*args):
    """A two-process ``torchrun`` command. ``--standalone`` lets the operating system pick a free
    rendezvous port, so runs of the suite side by side never meet on a fixed one."""
    return [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", str(WORLD), *args]


def problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5))
    x, y = torch.rand(16, 1, 4, 4), torch.randint(0, 5, (16,))
    with torch.no_grad():  # order the batch: rank 0's share holds the 8 highest losses
        order = F.cross_entropy(model(x), y, reduction="none").argsort(descending=True)
    x, y = x[order], y[order]
    delta = 0.05 * torch.randn_like(x)  # a fixed attack, so only the perturbation differs
    return model, x, y, delta


def step(model, x, y, delta, make, world=distributed.World()):
    x, y, delta = world.share(x), world.share(y), world.share(delta)
    attack = lambda m, a, b: (a + delta).clamp(0, 1)  # noqa: E731
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    from wpat.objectives import OBJECTIVES, Batch

    _, stats = train_step(model, Batch(x, y), attack, OBJECTIVES.build("at"), make(), optimizer)
    return stats


# name -> the perturbation, given the c_min that splits the two shares
MAKERS = {
    "at": lambda c_min: None,
    "awp": lambda c_min: AWP(gamma=0.1),
    "rwp-partial": lambda c_min: RWP(gamma=0.1, c_min=c_min, steps=3),
}


def c_min_between(model, x, y):
    """A c_min between the two shares' losses: rank 1 has every example below, rank 0 none."""
    with torch.no_grad():
        losses = F.cross_entropy(model(x), y, reduction="none")
    return float((losses[:8].min() + losses[8:].max()) / 2)


def worker(rank, init_file, name, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    model, x, y, delta = problem()
    c_min = c_min_between(model, x, y)
    stats = step(model, x, y, delta, lambda: MAKERS[name](c_min), distributed.current())
    # evaluation counts: an uneven shard of 15 examples
    from wpat.measurements.metrics import correct

    world = distributed.current()
    flags = correct(model, world.shard(x[:15]), world.shard(y[:15]))
    hits = distributed.total(flags.sum())
    if rank == 0:
        torch.save({"state": model.state_dict(), "stats": stats, "hits": hits}, out)
    dist.destroy_process_group()
    # The worker's result is on disk: leave without the interpreter's teardown, where a spawned
    # child's native threads have aborted it at random ("terminate called without an active
    # exception", SIGABRT) after every check had passed.
    os._exit(0)


@pytest.mark.parametrize("name", ["at", "awp", "rwp-partial"])
def test_two_ranks_compute_what_one_process_computes_on_the_global_batch(tmp_path, name):
    out = tmp_path / "rank0.pt"
    mp.spawn(worker, args=(str(tmp_path / "init"), name, str(out)), nprocs=WORLD, join=True)
    got = torch.load(out)
    model, x, y, delta = problem()
    c_min = c_min_between(model, x, y)
    stats = step(model, x, y, delta, lambda: MAKERS[name](c_min))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(got["state"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    for key, value in stats.items():  # the same statistics, decided over the global batch
        torch.testing.assert_close(got["stats"][key].float(), value.float(), rtol=1e-5, atol=1e-6, msg=key)
    if name.startswith("rwp"):  # rank 0 alone had no example below c_min, yet did not stop
        assert float(stats["rwp_frac_below"]) == 0.5 and float(stats["perturb_steps"]) > 0
    from wpat.measurements.metrics import correct

    assert int(got["hits"]) == int(correct(model, x[:15], y[:15]).sum())


@pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")
def test_torchrun_trains_writes_once_and_resumes_at_another_rank_count(tmp_path):
    common = ["fmnist-smallcnn-linf", "model.small_cnn.width=4", "data.train_subset=256", "data.test_subset=64",
              "data.batch_size=64", "eval.n_train=32", "attack.steps=1", "eval.steps=1", "perturb.rwp.steps=2",
              "run.threads=1", f"run.out_dir={tmp_path}", "run.name=ddp", "run.progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(torchrun("-m", "wpat", "train", *common, "schedule.epochs=1"),
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, failure(done)
    assert done.stdout.count("| best") == 1  # one table, from rank 0
    run = tmp_path / "ddp"
    assert {"best.pt", "last.pt", "metrics.jsonl", "config.yaml"} <= {p.name for p in run.iterdir()}
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert len(ckpt["rng_ranks"]) == 2 and ckpt["epoch"] == 1
    # resume with one process: the global batch means the same, so the run just continues
    ckpt["config"]["schedule"]["epochs"] = 2
    torch.save(ckpt, run / "last.pt")
    again = subprocess.run([sys.executable, "-m", "wpat", "train", "--resume", str(run)],
                           capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2


@pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")
@pytest.mark.parametrize("case", ["indivisible", "mismatch"])
def test_bad_rank_setups_end_with_one_message_from_rank_0(tmp_path, case):
    common = ["fmnist-smallcnn-linf", "model.small_cnn.width=4", "data.train_subset=256", "data.test_subset=64",
              "eval.n_train=32", "attack.steps=1", "run.threads=1", f"run.out_dir={tmp_path}", "run.name=bad"]
    if case == "indivisible":
        extra = ["data.batch_size=63"]
        launcher = torchrun("-m", "wpat", "train")
        done = subprocess.run([*launcher, *common, *extra], capture_output=True, text=True, timeout=300)
        expected = "does not divide"
    else:  # each rank reads its own override through the environment
        script = ("import os, sys; from wpat.cli import main; "
                  "sys.exit(main(sys.argv[1:] + [f\"attack.steps={1 + int(os.environ['RANK'])}\"]))")
        launcher = torchrun("--no-python", sys.executable, "-c", script, "train")
        done = subprocess.run([*launcher, *common, "data.batch_size=64"], capture_output=True, text=True, timeout=300)
        expected = "different configs"
    errors = [line for line in done.stderr.splitlines() if line.startswith("wpat: error:")]
    assert done.returncode != 0 and len(errors) == 1 and expected in errors[0], failure(done)
    assert not (tmp_path / "bad").exists()


@pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")
def test_a_stopped_two_rank_run_resumes_to_the_same_result(tmp_path):
    """2 ranks for 2 epochs in one go, and 2 ranks stopped after epoch 1 then resumed with 2
    ranks, end with bitwise the same weights (each rank's generators are in last.pt)."""
    common = ["fmnist-smallcnn-linf", "model.small_cnn.width=4", "data.train_subset=256", "data.test_subset=64",
              "data.batch_size=64", "eval.n_train=32", "attack.steps=1", "eval.steps=1", "perturb.rwp.steps=2",
              "run.threads=1", f"run.out_dir={tmp_path}", "run.progress=false", "run.deterministic=true",
              "schedule.name=constant"]  # the same rates whatever schedule.epochs says
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def torchrun_wpat(*args):
        done = subprocess.run(torchrun("-m", "wpat", "train", *args), capture_output=True, text=True, env=env,
                              timeout=300)
        assert done.returncode == 0, failure(done)

    torchrun_wpat(*common, "schedule.epochs=2", "run.name=whole")
    torchrun_wpat(*common, "schedule.epochs=1", "run.name=cut")
    ckpt = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    ckpt["config"]["schedule"]["epochs"] = 2  # the same run, stopped after its first epoch
    torch.save(ckpt, tmp_path / "cut" / "last.pt")
    torchrun_wpat("--resume", str(tmp_path / "cut"))
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")
def test_every_rank_leaves_the_process_group_when_its_run_ends(tmp_path):
    """A process that exits with its gloo group alive can abort in Python's shutdown (rank 1:
    SIGABRT, "terminate called without an active exception") and fail a finished run: the
    command leaves the group it joined, on every rank, before returning."""
    script = ("import torch.distributed as dist, sys; from wpat.cli import main; code = main(sys.argv[1:]); "
              "print('rank', dist.get_rank() if dist.is_initialized() else '-', 'joined' if dist.is_initialized() "
              "else 'left', 'exit', code, flush=True)")
    done = subprocess.run(torchrun("--no-python", sys.executable, "-c", script, "train", "fmnist-smallcnn-linf",
                                   "model.small_cnn.width=4", "data.train_subset=128", "data.test_subset=32",
                                   "data.batch_size=64", "eval.n_train=32", "attack.steps=1", "eval.steps=1",
                                   "perturb.rwp.steps=2", "run.threads=1", "schedule.epochs=1", "run.progress=false",
                                   f"run.out_dir={tmp_path}", "run.name=r"),
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("rank ")]
    assert lines == ["rank - left exit 0"] * WORLD, done.stdout[-1500:] + failure(done)
    assert done.returncode == 0


def trainer_worker(rank, init_file, out_dir, out):
    os.environ.update(WORLD_SIZE=str(WORLD), RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    from wpat.configuration.config import load_config
    from wpat.training.parts import build_parts

    cfg = load_config("fmnist-smallcnn-linf", ["model.small_cnn.width=4", "data.train_subset=128",
                                               "data.test_subset=32", "data.batch_size=64", "run.threads=1",
                                               f"run.out_dir={out_dir}"])
    with distributed.session():  # a group the caller joined stays joined
        model = build_parts(cfg).model
    assert dist.is_initialized()
    weights = torch.cat([t.flatten().float() for t in model.state_dict().values()])
    gathered = distributed.gather(weights)
    if rank == 0:
        torch.save(gathered, out)
    dist.destroy_process_group()
    # The worker's result is on disk: leave without the interpreter's teardown, where a spawned
    # child's native threads have aborted it at random ("terminate called without an active
    # exception", SIGABRT) after every check had passed.
    os._exit(0)


@pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")
def test_every_rank_starts_from_the_same_weights(tmp_path):
    out = tmp_path / "weights.pt"
    mp.spawn(trainer_worker, args=(str(tmp_path / "init"), str(tmp_path), str(out)), nprocs=WORLD, join=True)
    first, second = torch.load(out)
    assert torch.equal(first, second)
