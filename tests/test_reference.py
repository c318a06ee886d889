"""reference.py's shared numerics: the tolerance per dtype and the relative L2 error that tune,
selfcheck and the bench's gate all use (the reference norms themselves: tests/kernels, tests/ops)."""
import math

import torch

from qknorm import reference, tuned_table
from qknorm.bench import common


def test_one_tolerance_table_and_one_dtype_map():
    assert set(reference.TOL) == set(tuned_table.DTYPES.values())
    assert tuned_table.DTYPE_NAMES == {v: k for k, v in tuned_table.DTYPES.items()}
    # the bench and the library share the same objects, not copies
    assert common.TOL is reference.TOL and common.rel_l2 is reference.rel_l2
    assert common.DTYPES is tuned_table.DTYPES and common.DTYPE_NAMES is tuned_table.DTYPE_NAMES


def test_rel_l2():
    ref = torch.tensor([3.0, 4.0])
    assert reference.rel_l2(ref, ref) == 0.0
    assert reference.rel_l2(torch.tensor([3.0, 4.5]), ref) == 0.1
    assert reference.rel_l2(torch.tensor([3.0, 4.5], dtype=torch.bfloat16), ref.double()) == 0.1  # any dtypes, fp64
    assert reference.rel_l2(torch.tensor([1.0, 0.0]), torch.zeros(2)) == 1.0  # zero reference: the absolute norm


def test_rel_l2_non_finite_is_inf_and_survives_max():
    ref = torch.ones(4)
    for bad in (float("nan"), float("inf")):
        out = torch.ones(4)
        out[2] = bad
        assert reference.rel_l2(out, ref) == math.inf
    nan = torch.full((4,), float("nan"))
    # a NaN error would vanish in max(ok, nan); inf does not
    assert max(reference.rel_l2(ref, ref), reference.rel_l2(nan, ref)) == math.inf
