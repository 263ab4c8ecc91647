"""AutoAttack through the authors' own code (``pyautoattack``): :class:`AutoAttack`."""

from __future__ import annotations

import hashlib
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pyautoattack
import torch
from torch import Tensor, nn

from wpat.attacks.base import ATTACKS, Attack, crafting_mode
from wpat.checkpoints.files import hash_tensors, save_atomic
from wpat.helpers.errors import check, is_count, is_number
from wpat.helpers.threat import BNMode, Norm

# pyautoattack's names of the norms.
PYAUTOATTACK_NORMS = {Norm.LINF: "Linf", Norm.L2: "L2"}
VERSIONS = ("standard", "plus", "rand")
ATTACK_NAMES = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
LOGGER = "auto-attack"  # the logger pyautoattack writes its verbose lines to


@ATTACKS.register("autoattack")
class AutoAttack(Attack):
    """AutoAttack, run by the authors' own code: ``AutoAttack(eps)(model, x, y) -> x_adv``.

    Croce & Hein, *Reliable Evaluation of Adversarial Robustness with an Ensemble of Diverse
    Parameter-free Attacks*, ICML 2020; the "AA" column of AWP Table 2 and RWP Table 2. It runs
    the code as published on PyPI (``pyautoattack``); nothing of it is re-implemented here, this
    class only adapts it to ``attack(model, x, y) -> x_adv``.

    The standard version runs APGD-CE, APGD-T (9 target classes), FAB-T (9 target classes) and
    Square (5000 queries), each on the examples the previous ones did not break; an example is
    robust only if it survives all four. ``pyautoattack.AutoAttack(model, *, eps, norm, version,
    seed, device)`` and ``run_standard_evaluation(x, y, *, batch_size, state_path)`` take
    keyword-only arguments; the latter returns the tuple ``(x_adv, y_adv)``: the adversarial
    examples (x itself where no attack succeeded) and the model's predictions on them, which
    are AutoAttack's own verdict. :meth:`run` returns both, :meth:`predictions` ``y_adv``, and
    calling the attack (or :meth:`perturb`) ``x_adv``; to count robust accuracy as AutoAttack
    does, use ``predictions(model, x, y) == y``.

    Progress: AutoAttack spends minutes on a batch. ``run`` and ``predictions`` take ``log``,
    a function that receives pyautoattack's own verbose lines while it attacks (the ones its
    ``verbose`` mode prints: the clean accuracy, each attack's successes per batch, the robust
    accuracy after each attack); ``wpat eval`` shows them under its progress line.

    Args:
        eps: radius of the threat model, > 0, pixel units of inputs in [0, 1] (papers: 8/255).
        norm: ``Norm.LINF`` / ``"linf"`` (default) or ``Norm.L2`` / ``"l2"`` (pyautoattack's
            ``"Linf"`` / ``"L2"``).
        version: ``"standard"`` (default), ``"plus"`` or ``"rand"``.
        attacks: a non-empty list of ``apgd-ce``, ``apgd-dlr``, ``apgd-t``, ``fab``, ``fab-t``,
            ``square``: runs pyautoattack's ``"custom"`` version with just those, e.g.
            ``["apgd-ce"]`` for a quick check (default None: ``version`` decides).
        seed: pyautoattack's seed (default 0), so a rerun gives the same result.
        batch_size: examples per pyautoattack batch (default 500).
        state_dir: a folder in which finished results are kept for resuming (default None).

    The model is attacked in eval mode on its own device; it can be any ``nn.Module`` mapping
    inputs in [0, 1] to logits. A trained wpat model (normalization inside) is exactly that, so
    it is accepted as is here, by ``pyautoattack.AutoAttack`` directly, and by RobustBench's
    ``benchmark(model, dataset=..., threat_model=..., eps=...)``, which expects the same contract.

    Resuming: pyautoattack 0.2.0 cannot read its own state file back (``state_path``): it saves
    the set of attacks as the text of a Python set, so ``EvaluationState.from_disk`` never
    matches the attacks to run and raises, and its restore branch leaves ``y_adv`` unset. With
    ``state_dir`` this wrapper resumes per call instead: each finished call stores its
    adversarial examples and predictions there under a hash of the inputs, labels, model weights
    and settings, and a call that finds its file returns them without attacking. Evaluated in
    batches, an interrupted evaluation loses at most the batch in progress.
    """

    def __init__(self, eps: float, *, norm: Norm | str = Norm.LINF, version: str = "standard",
                 attacks: Sequence[str] | None = None, seed: int = 0, batch_size: int = 500,
                 state_dir: str | Path | None = None) -> None:
        super().__init__(bn_mode=BNMode.EVAL)
        check(is_number(eps) and eps > 0, "AutoAttack eps", eps, "a number > 0 (pixel units)")
        check(is_count(batch_size), "AutoAttack batch_size", batch_size, "an integer >= 1")
        norm = Norm.parse(norm, "AutoAttack norm")
        if attacks is not None:
            check(bool(attacks) and set(attacks) <= set(ATTACK_NAMES), "AutoAttack attacks", list(attacks),
                  f"a non-empty list of {', '.join(ATTACK_NAMES)}")
            version = "custom"
        else:
            check(version in VERSIONS, "AutoAttack version", version,
                  f"one of {', '.join(VERSIONS)} (or give attacks=[...] for a custom run)")
        self.eps, self.norm, self.version, self.seed = eps, norm, version, seed
        self.attacks = list(attacks) if attacks is not None else None
        self.batch_size = batch_size
        self.state_dir = Path(state_dir) if state_dir is not None else None

    def run(self, model: nn.Module, x: Tensor, y: Tensor,
            log: Callable[[str], None] | None = None) -> tuple[Tensor, Tensor]:
        """``(x_adv, y_adv)``: the adversarial examples and AutoAttack's predictions on them.

        One evaluation gives both; a call with a ``state_dir`` that already holds this call's
        result returns the stored pair without attacking. ``log`` receives pyautoattack's
        verbose lines as they come (None: they are not shown).
        """
        with crafting_mode(model, self.bn_mode), torch.enable_grad():
            x_adv, y_adv = self._evaluate(model, x.detach(), y, log)
        return x_adv.detach(), y_adv.detach()

    def predictions(self, model: nn.Module, x: Tensor, y: Tensor,
                    log: Callable[[str], None] | None = None) -> Tensor:
        """AutoAttack's own per-example predictions ``y_adv`` (pyautoattack's verdict): an
        example is robust iff ``predictions(model, x, y) == y``; ``log`` as for :meth:`run`."""
        return self.run(model, x, y, log)[1]

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return self._evaluate(model, x, y)[0]

    def _evaluate(self, model: nn.Module, x: Tensor, y: Tensor,
                  log: Callable[[str], None] | None = None) -> tuple[Tensor, Tensor]:
        done = self._result_path(model, x, y)
        if done is not None and done.is_file():
            stored = torch.load(done, map_location=x.device, weights_only=True)
            # A file from before the predictions were kept is evaluated again (and replaced).
            if "y_adv" in stored:
                if log is not None:
                    log(f"finished before, read from {done}")
                x_adv = x.clone()
                x_adv[stored["index"]] = stored["x_adv"]
                return x_adv, stored["y_adv"].to(y.device)
        device = next((p.device for p in model.parameters()), x.device)  # the model's
        adversary = pyautoattack.AutoAttack(model, attacks=self.attacks, device=device,
                                            eps=self.eps, norm=PYAUTOATTACK_NORMS[self.norm],
                                            seed=self.seed, version=self.version)
        with verbose_lines(log):
            x_adv, y_adv = adversary.run_standard_evaluation(x, y, batch_size=self.batch_size)
        if done is not None:
            # Only the examples an attack changed: the others are x itself.
            index = (x_adv != x).flatten(1).any(1).nonzero().squeeze(1)
            done.parent.mkdir(parents=True, exist_ok=True)
            save_atomic({"index": index.cpu(), "x_adv": x_adv[index].cpu(), "y_adv": y_adv.cpu()},
                        done)
        return x_adv, y_adv

    def _result_path(self, model: nn.Module, x: Tensor, y: Tensor) -> Path | None:
        """Where this exact call's result is kept: a hash of everything it depends on."""
        if self.state_dir is None:
            return None
        digest = hashlib.sha256(repr((self.eps, self.norm.value, self.version, self.attacks,
                                      self.seed, pyautoattack.__version__)).encode())
        hash_tensors(digest, (x, y, *model.state_dict().values()))
        return self.state_dir / f"autoattack-{digest.hexdigest()[:20]}.pt"


class _Forward(logging.Handler):
    def __init__(self, log: Callable[[str], None]) -> None:
        super().__init__(logging.DEBUG)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        self.log(record.getMessage())


@contextmanager
def verbose_lines(log: Callable[[str], None] | None) -> Iterator[None]:
    """While the block runs, pyautoattack's verbose lines (debug messages of its logger, which
    nothing shows by default) go to ``log`` and nowhere else; the logger is restored after."""
    if log is None:
        yield
        return
    logger = logging.getLogger(LOGGER)
    handler = _Forward(log)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # shown once, through log, not again by the root logger
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
