"""backend.py: how TRITON_INTERPRET is read — as Triton reads it, and the same in kernels/_interp_compat.py."""
import os

import pytest

from qknorm import backend

VALUES = ["1", "true", "True", "TRUE", "yes", "on", "y", " 1 ", "0", "false", "False", "", "2", "no", "off", "x"]


@pytest.mark.parametrize("value", VALUES)
def test_triton_interpret_is_read_as_triton_reads_it(monkeypatch, value):
    monkeypatch.setenv("TRITON_INTERPRET", value)
    ours = backend.interpreter_on()
    try:
        from triton._C.libtriton import getenv_bool  # Triton's own parser (triton.knobs)
    except ImportError:  # a Triton without it: the rule as written in knobs
        theirs = value.lower() in ("1", "true", "yes", "on", "y")
    else:
        theirs = getenv_bool("TRITON_INTERPRET", False)
    assert ours == theirs, (value, ours, theirs)
    # kernels/_interp_compat.py's copy of the rule (the kernels import only triton)
    src = open(os.path.join(os.path.dirname(backend.__file__), "kernels", "_interp_compat.py")).read()
    assert 'os.environ.get("TRITON_INTERPRET", "").lower() not in ("1", "true", "yes", "on", "y")' in src
    assert tuple(backend.INTERPRET_ON) == ("1", "true", "yes", "on", "y")
