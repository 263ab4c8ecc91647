"""Robustness evaluation in the protocol of AWP and RWP Table 2, one layer per job:

- :mod:`~wpat.evaluation.columns`: the attacks of Table 2 (:data:`COLUMNS`), each registered with
  its header and built from a threat model by :func:`build_column`;
- :mod:`~wpat.evaluation.masking`: the gradient-masking checks;
- :mod:`~wpat.evaluation.protocol`: :func:`evaluate_model` and :func:`evaluate_checkpoint`, every
  attack on the same first N test examples, in fp32 with fixed seeds;
- :mod:`~wpat.evaluation.report`: the table, ``eval.json`` and ``eval.md``.

Loading checkpoints (also foreign state_dicts) is :mod:`wpat.loading`; accuracy helpers are
:mod:`wpat.metrics`.
"""

from wpat.evaluation.columns import (COLUMNS, DEFAULT_ATTACKS, build_column, check_attack_names,
                                     label, labels)
from wpat.evaluation.masking import masking_checks, ordering_warnings
from wpat.evaluation.protocol import (column_correct, evaluate_checkpoint, evaluate_model,
                                      first_test_examples, same_weights)
from wpat.evaluation.report import (default_out_dir, markdown_report, prepare_out_dir,
                                    report_warnings, results_table, write_report)

__all__ = [
    "COLUMNS", "DEFAULT_ATTACKS", "build_column", "check_attack_names", "column_correct",
    "default_out_dir", "evaluate_checkpoint", "evaluate_model", "first_test_examples", "label",
    "labels", "markdown_report", "masking_checks", "ordering_warnings", "prepare_out_dir",
    "report_warnings", "results_table", "same_weights", "write_report",
]
