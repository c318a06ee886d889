"""validate.py: the shared argument rules (the ops' own rules: tests/ops/test_<op>.py)."""
import pytest
import torch

import qknorm
from helpers import packed_qkv


@pytest.mark.gpu
def test_device_mismatch():
    x = torch.randn(4, 64, device="cuda")
    with pytest.raises(ValueError, match="weight is on cpu but x is on cuda"):
        qknorm.rms_norm(x, torch.randn(64))
    qkv, q, k, _ = packed_qkv(2, 2, 1, 64, torch.float32, "cuda")
    with pytest.raises(ValueError, match="k is on cpu but q is on cuda"):
        qknorm.qk_rms_norm(q, k.cpu(), None, None)


def test_backend_triton_on_cpu_without_interpreter(monkeypatch):
    # Not TRITON_INTERPRET=0 itself: kernels first imported under it would be compiled-mode functions that
    # the interpreted kernels of later tests cannot call.
    monkeypatch.setattr(qknorm.backend, "interpreter_on", lambda: False)
    with qknorm.use_backend("triton"):
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            qknorm.rms_norm(torch.randn(2, 8))


def test_bad_backend_name():
    with pytest.raises(ValueError, match="backend must be one of"):
        qknorm.set_backend("cuda")


def test_qk_pair_rules():
    from qknorm import validate
    q, k = torch.zeros(2, 4, 8), torch.zeros(2, 1, 8)
    assert validate.qk_pair(q, k, None, None) == 8
    with pytest.raises(ValueError, match="q_weight and k_weight must both be tensors or both be None"):
        validate.qk_pair(q, k, torch.ones(8), None)
    with pytest.raises(TypeError, match="q and k must have the same dtype"):
        validate.qk_pair(q, k.half(), None, None)
    with pytest.raises(ValueError, match="same head_dim"):
        validate.qk_pair(q, torch.zeros(2, 1, 4), None, None)
    with pytest.raises(ValueError, match=r"q must be \[T, Hq, head_dim\]"):
        validate.qk_pair(q[0], k, None, None, three_d=True)


def test_rotary_rules():
    from qknorm import validate
    q = torch.zeros(3, 2, 16)
    cs, pos = torch.zeros(10, 16), torch.zeros(3, dtype=torch.int64)
    assert validate.rotary(q, cs, pos, None, True) == 16
    assert validate.rotary(q, cs[:, :8], pos, 8, False) == 8
    with pytest.raises(ValueError, match="rotary_dim must be even"):
        validate.rotary(q, cs, pos, 7, True)
    with pytest.raises(ValueError, match="pass rotary_dim for partial rotary"):
        validate.rotary(q, cs[:, :8], pos, None, True)
    with pytest.raises(TypeError, match="positions must be int32 or int64"):
        validate.rotary(q, cs, pos.float(), None, True)
    with pytest.raises(TypeError, match="is_neox must be a Python bool"):
        validate.rotary(q, cs, pos, None, 1)
    validate.positions_in_range(torch.tensor([0, 9]), 10)
    with pytest.raises(ValueError, match=r"positions must be in \[0, 9\]"):
        validate.positions_in_range(torch.tensor([0, 10]), 10)
