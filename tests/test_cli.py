"""The command line answers at once: building the parser imports no heavy library."""

import subprocess
import sys

HEAVY = ("torch", "matplotlib", "pyautoattack", "scipy", "numpy")


def test_building_the_parser_imports_no_heavy_library():
    code = ("import sys, wpat.cli; wpat.cli.build_parser(); "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_presets_and_help_answer_without_torch():
    code = ("import sys, io, contextlib, wpat.cli\n"
            "buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n"
            "    assert wpat.cli.main(['presets']) == 0\n"
            "assert 'cifar10-preactresnet18-linf' in buf.getvalue()\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
    help_text = subprocess.run([sys.executable, "-m", "wpat.cli", "--help"], capture_output=True,
                               text=True, check=True).stdout
    assert "train" in help_text and "eval" in help_text


def test_overrides_may_follow_the_options():
    from wpat.cli import parse

    args = parse(["train", "fmnist-smallcnn-linf", "perturb.name=awp", "--no-progress", "run.seed=3"])
    assert args.config == "fmnist-smallcnn-linf" and args.overrides == ["perturb.name=awp", "run.seed=3"]
    assert args.no_progress


def test_an_unknown_option_is_still_a_usage_error(capsys):
    import pytest

    from wpat.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["train", "fmnist-smallcnn-linf", "--frobnicate", "run.seed=3"])
    assert stop.value.code == 2 and "unrecognized arguments: --frobnicate" in capsys.readouterr().err
