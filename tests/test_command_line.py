"""``qknorm`` command line (``qknorm.cli``): it routes each command to the tool's own parser
and ``main``. (Not named test_cli.py: tests/bench/test_cli.py has that basename.)"""
import sys

import pytest

from qknorm import cli


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in ("bench", "explain", "selfcheck", "tune"):
        assert name in out


@pytest.mark.parametrize("argv,says", [([], "the following arguments are required: COMMAND"),
                                       (["benchmark"], "invalid choice: 'benchmark' (choose from 'bench'"),
                                       (["--op", "qk"], "unrecognized arguments: --op"),
                                       (["--bogus", "bench"], "unrecognized arguments: --bogus")])
def test_missing_or_unknown_command_is_one_line_exit_2(argv, says, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("qknorm: error: ") and err.count("\n") == 1 and says in err, err
    assert "qknorm -h" in err


def test_version(capsys):
    from qknorm import __version__
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"qknorm {__version__}\n"


@pytest.mark.parametrize("command", ["bench", "explain", "tune", "selfcheck"])
def test_a_bad_option_of_a_command_is_one_line_naming_it(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--no-such-flag"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == (f"qknorm {command}: error: unrecognized arguments: --no-such-flag "
                   f"(see 'qknorm {command} -h')\n")


def test_the_module_runs_as_a_program():
    """`python -m qknorm.cli` (what the `qknorm` script runs): version, help, an unknown command,
    and no warning about the module being imported twice."""
    import subprocess
    run = [sys.executable, "-m", "qknorm.cli"]
    r = subprocess.run(run + ["--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("qknorm ") and r.stderr == ""
    r = subprocess.run(run + ["benchmark"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1 and "invalid choice" in r.stderr


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_each_command_reaches_its_own_parser(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: qknorm {command}")


def test_arguments_go_to_the_tool(monkeypatch):
    seen = []
    monkeypatch.setattr(sys.modules["qknorm.explain"], "main", lambda argv: seen.append(argv) or 7)
    assert cli.main(["explain", "--op", "rms", "--tokens", "3"]) == 7
    assert seen == [["--op", "rms", "--tokens", "3"]]


@pytest.mark.parametrize("argv,words", [
    (["--ops", "rms", "--hidden", "99999999"], ["--hidden", "99999999", "MiB", "nothing to measure"]),
    (["--ops", "qk", "--head-dims", "128,2000000"], ["--head-dims", "2000000", "MiB", "nothing to measure"]),
])
def test_tune_widths_that_leave_no_grid_point_are_one_line(argv, words, capsys):
    """`qknorm tune --dry-run --hidden 99999999` printed '0 grid points' and exit 0 (a GPU run then
    measured nothing): a width whose single row is over the grid's cap is a usage error."""
    with pytest.raises(SystemExit) as e:
        cli.main(["tune", "--dry-run"] + argv)
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and captured.err.startswith("qknorm tune: error: ")
    assert all(w in captured.err for w in words), captured.err


def test_output_into_a_closed_pipe_is_no_traceback():
    # `qknorm tune --dry-run | head -1`: the reader stops early. The read end is closed before
    # the command starts, so every write fails (no timing involved).
    import os
    import subprocess
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([sys.executable, "-m", "qknorm.cli", "tune", "--dry-run"], stdout=w,
                           stderr=subprocess.PIPE, text=True, timeout=600)  # hang guard only
    finally:
        os.close(w)
    assert p.returncode == 141 and "Traceback" not in p.stderr, p.stderr
