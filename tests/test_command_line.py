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


@pytest.mark.parametrize("argv", [[], ["nope"], ["--op", "qk"]])
def test_missing_or_unknown_command_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    assert "usage: qknorm" in capsys.readouterr().err


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
