"""``qknorm selfcheck`` (``selfcheck.py``): every public op checked against fp64, a wrong op reported, and a
backend that cannot run here refused in one line."""
import pytest
import torch

import qknorm
from qknorm import cli, selfcheck

OPS = [n for n in qknorm.__all__ if n not in ("explain", "KernelConfig", "get_backend", "set_backend", "use_backend",
                                              "__version__")]


def test_every_public_op_is_checked_and_passes(capsys):
    assert selfcheck.run("cpu")
    out = capsys.readouterr().out
    names = {line.split()[1] for line in out.splitlines()[1:]}
    assert names == set(OPS), f"checked {sorted(names)}, public ops {sorted(OPS)}"
    assert out.count(" ok\n") == 3 * len(OPS)


def test_a_wrong_op_fails_the_check(monkeypatch, capsys):
    real = selfcheck.rms_norm_quant

    def off_by_a_bit(x, w, **kw):
        codes, scales = real(x, w, **kw)
        return codes, scales * 1.2

    monkeypatch.setattr(selfcheck, "rms_norm_quant", off_by_a_bit)
    assert not selfcheck.run("cpu")
    fails = [line for line in capsys.readouterr().out.splitlines() if line.endswith("FAIL")]
    assert len(fails) == 3 and all("rms_norm_quant" in line for line in fails)


def test_triton_backend_on_the_cpu_without_the_interpreter_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(selfcheck, "interpreter_on", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with qknorm.use_backend("triton"):
        assert cli.main(["selfcheck"]) == 2
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            selfcheck.run("cpu")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("qknorm selfcheck: QKNORM_BACKEND=triton")
