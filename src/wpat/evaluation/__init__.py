"""Robustness evaluation in the protocol of AWP and RWP Table 2, one layer per job:

- :mod:`~wpat.evaluation.columns`: the attacks of Table 2 (:data:`COLUMNS`), each registered with
  its header and built from a threat model by :func:`build_column`;
- :mod:`~wpat.evaluation.masking`: the gradient-masking checks;
- :mod:`~wpat.evaluation.protocol`: :func:`evaluate_model` and :func:`evaluate_checkpoint`, every
  attack on the same first N test examples, in fp32 with fixed seeds;
- :mod:`~wpat.evaluation.results`: ``eval.json``, which accumulates the results of every
  evaluation;
- :mod:`~wpat.evaluation.report`: the table with each number's settings and ``eval.md``.

Loading checkpoints (also foreign state_dicts) is :mod:`wpat.training.loading`; accuracy helpers are
:mod:`wpat.measurements.metrics`.
"""

from wpat.evaluation.columns import (COLUMNS, DEFAULT_ATTACKS, build_column, check_attack_names,
                                     column_settings, label, labels)
from wpat.evaluation.masking import masking_checks, model_checks, ordering_warnings
from wpat.evaluation.protocol import (column_correct, evaluate_checkpoint, evaluate_model,
                                      first_test_examples)
from wpat.evaluation.report import (describe_settings, markdown_report, report_warnings, results_table,
                                    settings_lines, write_report)
from wpat.evaluation.results import default_out_dir, merge_reports, prepare_out_dir, read_report

__all__ = [
    "COLUMNS", "DEFAULT_ATTACKS", "build_column", "check_attack_names", "column_correct",
    "column_settings", "default_out_dir", "describe_settings", "evaluate_checkpoint",
    "evaluate_model", "first_test_examples", "label", "labels", "markdown_report",
    "masking_checks", "merge_reports", "model_checks", "ordering_warnings", "prepare_out_dir",
    "read_report", "report_warnings", "results_table", "settings_lines", "write_report",
]
