"""The columns of AWP and RWP Table 2: one registered attack per column, built from a threat model.

Each entry of :data:`COLUMNS` is registered with its Table-2 header as metadata
(``COLUMNS.info("pgd20")["label"] == "PGD-20"``), and every builder takes the same arguments,
``(threat, *, seed=0, state_dir=None)``, so :func:`build_column` passes all of them to every
column and the registry's strict rule (an undeclared option is an error) holds. A column that
has no use for ``seed`` (the torch RNG is seeded by the protocol before each column) or
``state_dir`` (only AutoAttack resumes) ignores it. A column is a setting of an attack, not an
attack of its own: each builds its attack through the ``ATTACKS`` registry (FGSM is ``fgsm``,
PGD-20 and PGD-100 are ``pgd``, CW∞ is ``cw``), with the options the papers give it.

What defines a column's measurement beyond the examples, the threat model, the seed and the
batch size is metadata too: ``attacked=False`` for the clean column (none of those apply to
it), ``defines={...}`` for settings of its own (AutoAttack's version and pyautoattack's);
:func:`column_settings` puts them together for ``eval.json``.

The settings follow docs/design.md, "Evaluation conventions": eval-mode BatchNorm while
crafting, random starts for the PGD-type attacks, the threat model's ε and PGD step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import pyautoattack

from wpat.attacks import ATTACKS
from wpat.helpers.errors import WpatError
from wpat.measurements.metrics import Attack
from wpat.helpers.registry import Registry
from wpat.helpers.threat import BNMode, ThreatModel

COLUMNS = Registry("evaluation attack")
DEFAULT_ATTACKS = ("natural", "fgsm", "pgd20", "pgd100", "cw")  # spsa and aa are slow
TABLE_ORDER = ("natural", "fgsm", "pgd20", "pgd100", "cw", "spsa", "aa-apgd", "aa", "aa-plus")  # Table 2, left to right
AA_VERSION = "standard"  # the AA column's AutoAttack version (the papers')
# AutoAttack's cheaper check: its first two attacks alone, through pyautoattack's "custom" version
# (APGD-CE with that version's 5 restarts, APGD-T with 9 target classes), without FAB-T and Square.
AA_APGD = ("apgd-ce", "apgd-t")


@COLUMNS.register("natural", label="Natural", attacked=False)
def natural(threat: ThreatModel, *, seed: int = 0, state_dir: Path | None = None) -> None:
    """No attack: accuracy on the clean test examples."""
    return None


@COLUMNS.register("fgsm", label="FGSM")
def fgsm(threat: ThreatModel, *, seed: int = 0, state_dir: Path | None = None) -> Attack:
    """One step of size ε from x, no random start (PGD-1 with α = ε); for an L2 threat model
    along the L2-normalised gradient."""
    return ATTACKS.build("fgsm", eps=threat.eps, norm=threat.norm, bn_mode=BNMode.EVAL)


def pgd_column(steps: int) -> Callable[..., Attack]:
    """The builder of the PGD-``steps`` column (PGD-20, PGD-100)."""

    def build(threat: ThreatModel, *, seed: int = 0, state_dir: Path | None = None) -> Attack:
        return ATTACKS.build("pgd", **threat.as_dict(), steps=steps, bn_mode=BNMode.EVAL)

    build.__name__ = build.__qualname__ = f"pgd{steps}"
    build.__doc__ = (f"PGD-{steps} on cross-entropy with the threat model's step size, one "
                     f"uniform random start.")
    return build


COLUMNS.register("pgd20", label="PGD-20")(pgd_column(20))
COLUMNS.register("pgd100", label="PGD-100")(pgd_column(100))


@COLUMNS.register("cw", label="CW∞")
def cw(threat: ThreatModel, *, seed: int = 0, state_dir: Path | None = None) -> Attack:
    """AWP §5.1: "CW∞ (L∞ version of CW loss optimized by PGD-100)", random start, PGD's step."""
    return ATTACKS.build("cw", **threat.as_dict(), steps=100, bn_mode=BNMode.EVAL)


@COLUMNS.register("spsa", label="SPSA")
def spsa(threat: ThreatModel, *, seed: int = 0, state_dir: Path | None = None) -> Attack:
    """AWP §5.1: 100 iterations, δ = 0.001, learning rate 0.01, 256 samples per estimate."""
    return ATTACKS.build("spsa", eps=threat.eps, steps=100, delta=0.001, lr=0.01, samples=256,
                         norm=threat.norm)


@COLUMNS.register("aa", label="AA", defines={"autoattack": AA_VERSION,
                                                      "pyautoattack": pyautoattack.__version__})
def aa(threat: ThreatModel, *, seed: int = 0, state_dir: Path | None = None) -> Attack:
    """AutoAttack, standard version, through pyautoattack with ``seed``; resumable from
    ``state_dir``. Its column counts AutoAttack's own verdict (see
    :func:`wpat.evaluation.protocol.column_correct`)."""
    return ATTACKS.build("autoattack", eps=threat.eps, norm=threat.norm, version=AA_VERSION, seed=seed,
                         state_dir=state_dir)


@COLUMNS.register("aa-plus", label="AA+", defines={"autoattack": "plus",
                                                   "pyautoattack": pyautoattack.__version__})
def aa_plus(threat: ThreatModel, *, seed: int = 0, state_dir: Path | None = None) -> Attack:
    """AutoAttack's plus version (APGD-CE and APGD-DLR with 5 restarts, FAB and FAB-T, Square,
    APGD-T): stronger and several times slower than the standard version."""
    return ATTACKS.build("autoattack", eps=threat.eps, norm=threat.norm, version="plus", seed=seed,
                         state_dir=state_dir)


@COLUMNS.register("aa-apgd", label="AA (APGD-CE, APGD-T)",
                  defines={"autoattack": "+".join(AA_APGD), "pyautoattack": pyautoattack.__version__})
def aa_apgd(threat: ThreatModel, *, seed: int = 0, state_dir: Path | None = None) -> Attack:
    """A cheaper AutoAttack: its APGD-CE and APGD-T alone (no FAB-T, no Square), to set
    against the standard version where every checkpoint cannot have it."""
    return ATTACKS.build("autoattack", eps=threat.eps, norm=threat.norm, attacks=list(AA_APGD), seed=seed,
                         state_dir=state_dir)


def build_column(name: str, threat: ThreatModel, *, seed: int = 0,
                 state_dir: str | Path | None = None) -> Attack | None:
    """The attack of column ``name`` (None for ``natural``) in ``threat``'s ball."""
    return COLUMNS.build(name, threat, seed=seed,
                         state_dir=Path(state_dir) if state_dir is not None else None)


def column_settings(name: str, threat: ThreatModel, *, seed: int, batch_size: int) -> dict[str, Any]:
    """What defines column ``name``'s measurement besides the examples it is measured on: for an
    attack, the threat model (norm, ε, PGD step), the seed, the batch size (random starts and
    AutoAttack's per-call seeding follow the batches) and the column's own settings; for the
    clean column nothing."""
    info = COLUMNS.info(name)
    if not info.get("attacked", True):
        return {}
    return {"norm": threat.norm.value, "eps": threat.eps, "step": threat.alpha, "seed": seed,
            "batch_size": batch_size, **info.get("defines", {})}


def label(name: str) -> str:
    """The Table-2 header of column ``name`` ("PGD-20"); a one-line error for an unknown name."""
    return COLUMNS.info(name)["label"]


def labels(names: Sequence[str] | None = None) -> dict[str, str]:
    """Column name -> Table-2 header, for ``names`` (default: every registered column)."""
    return {name: label(name) for name in (COLUMNS.names() if names is None else names)}


def check_attack_names(names: Sequence[str]) -> list[str]:
    """``names`` as a list, each a registered column; a one-line error otherwise."""
    if not names:
        raise WpatError(f"no attacks given; choose from {', '.join(COLUMNS.names())}")
    for name in names:
        COLUMNS.get(name)  # a one-line error listing the valid names
    return list(names)
