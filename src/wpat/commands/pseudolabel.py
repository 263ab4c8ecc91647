"""``wpat pseudolabel MODEL EXTRA OUT.npz``: label unlabeled extra images with a trained model.

MODEL is a run directory (its ``best.pt``, else ``last.pt``) or a checkpoint; a foreign
state_dict needs ``--config``. EXTRA is an ``.npz`` with ``image`` (uint8 NHWC), a directory or
comma-separated list of part files, or RST's pickle (read with a restricted unpickler; prefer
``.npz``). OUT is written as an uncompressed ``.npz`` with ``image`` and ``label``. Finished
chunks are kept in ``OUT.parts/`` and reused when the command is run again after an
interruption. See :mod:`wpat.training.pseudolabel`.
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="a run directory or a checkpoint file")
    parser.add_argument("extra", metavar="EXTRA",
                        help="unlabeled images: an .npz (image), part files (comma-separated or a directory) "
                             "or RST's pickle")
    parser.add_argument("out", metavar="OUT.npz", help="where the images and their labels are written")
    parser.add_argument("--config", metavar="PRESET_OR_YAML",
                        help="the model's config (required for a foreign state_dict)")
    parser.add_argument("--batch-size", type=int, default=500, metavar="B", help="images per batch (default 500)")
    parser.add_argument("--chunk-size", type=int, default=10_000, metavar="N",
                        help="images per resumable chunk (default 10000)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or lines")


def run(args: argparse.Namespace) -> int:
    from wpat.training.pseudolabel import pseudolabel  # torch-heavy: imported only when labelling

    summary = pseudolabel(args.model, args.extra, args.out, config=args.config, batch_size=args.batch_size,
                          device=args.device, chunk_size=args.chunk_size, progress=not args.no_progress)
    counts = summary["class_counts"]
    share = ", ".join(f"{k}: {100 * c / max(summary['examples'], 1):.1f}%" for k, c in enumerate(counts))
    reused = f"; {summary['reused']} of {summary['chunks']} chunks reused" if summary["reused"] else ""
    print(f"wrote {summary['out']}: {summary['examples']} images labelled in {summary['seconds']:.1f} s{reused}")
    print(f"labels per class: {share}")
    return 0
