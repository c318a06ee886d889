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


def test_tensor_rule():
    from qknorm import validate
    validate.tensor("x", torch.zeros(2))
    with pytest.raises(TypeError, match=r"^x must be a torch.Tensor, got list$"):
        validate.tensor("x", [1.0])
    with pytest.raises(TypeError, match=r"^out must be a torch.Tensor or None, got int$"):
        validate.tensor("out", 3, "a torch.Tensor or None")
    with pytest.raises(ValueError, match="x is a negated view"):  # dense: the sign lives in a flag
        validate.tensor("x", torch.zeros(2)._neg_view())


def test_index_tensor_rule():
    from qknorm import validate
    validate.index_tensor("slot_mapping", torch.zeros(3, dtype=torch.int32))
    validate.index_tensor("slot_mapping", torch.zeros(3, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"^slot_mapping must be int32 or int64, got int16$"):
        validate.index_tensor("slot_mapping", torch.zeros(3, dtype=torch.int16))
    with pytest.raises(TypeError, match=r"^positions must be a torch.Tensor, got list$"):
        validate.index_tensor("positions", [0, 1])


def test_scale_tensor_rule():
    from qknorm import validate
    x = torch.zeros(2, 8)
    validate.scale_tensor("scale", torch.ones(1), "x", x)
    validate.scale_tensor("k_scale", torch.ones(()), "q", x)
    with pytest.raises(TypeError, match=r"^scale must be a 1-element float32 torch.Tensor or None, got float$"):
        validate.scale_tensor("scale", 1.0, "x", x)
    with pytest.raises(TypeError, match=r"^scale_ub must be a 1-element float32 tensor, got float64 with 1 elements$"):
        validate.scale_tensor("scale_ub", torch.ones(1, dtype=torch.float64), "x", x)
    with pytest.raises(ValueError, match=r"^v_scale must be a 1-element float32 tensor, got float32 with 2 elements$"):
        validate.scale_tensor("v_scale", torch.ones(2), "q", x)
    with pytest.raises(ValueError, match="scale is a negated view"):  # read as raw memory by the kernels
        validate.scale_tensor("scale", torch.ones(1)._neg_view(), "x", x)
    with pytest.raises(ValueError, match=r"^scale is on meta but x is on cpu$"):
        validate.scale_tensor("scale", torch.ones(1, device="meta"), "x", x)


def test_python_bool_rule():
    from qknorm import validate
    validate.python_bool("scale_ue8m0", False)
    with pytest.raises(TypeError, match=r"^scale_ue8m0 must be a Python bool, got int 1$"):
        validate.python_bool("scale_ue8m0", 1)


def test_same_shape_and_dtype_rules():
    from qknorm import validate
    x = torch.zeros(2, 8)
    validate.same_shape("out", torch.zeros(2, 8, dtype=torch.int8), "x", x)
    validate.same_dtype("v", torch.zeros(3), "q", x)
    with pytest.raises(ValueError, match=r"^out must have the shape of x \(2, 8\), got \(8,\)$"):
        validate.same_shape("out", torch.zeros(8), "x", x)
    with pytest.raises(TypeError, match=r"^v must have the dtype of q \(float32\), got bfloat16$"):
        validate.same_dtype("v", x.bfloat16(), "q", x)


def test_qk_activations_rule():
    """Q and K without a common width (the tensor-parallel shards use it): dtype and device only."""
    from qknorm import validate
    validate.qk_activations(torch.zeros(2, 4, 8), torch.zeros(2, 1, 16))
    with pytest.raises(TypeError, match=r"^q and k must have the same dtype, got q float32 and k float16$"):
        validate.qk_activations(torch.zeros(2, 8), torch.zeros(2, 8).half())
    with pytest.raises(ValueError, match=r"k must be \[T, Hkv, head_dim\]"):
        validate.qk_activations(torch.zeros(2, 1, 8), torch.zeros(2, 8), three_d=True)


def test_rope_pair_rules():
    from qknorm import validate
    q, k = torch.zeros(3, 4, 16), torch.zeros(3, 1, 16)
    assert validate.rope_pair("op", q, k, None, None, 16) == 16
    with pytest.raises(ValueError, match=r"^q and k must have the same number of tokens \(dim 0\): q has 3, k has 2$"):
        validate.rope_pair("op", q, k[:2], None, None, 16)
    with pytest.raises(ValueError, match=r"^head_dim 16 is not supported by some_op \(at most 8: the whole head is "
                                         r"kept in registers\)$"):
        validate.rope_pair("some_op", q, k, None, None, 8)


@pytest.mark.parametrize("impl_backend", ["torch", "triton"])
def test_weight_offset_past_fp32s_range_is_refused(impl_backend):
    """weight_offset=1e39 passed (a finite float64) and gave +-inf: the kernels offset the weight in fp32. Now the
    ValueError naming it, on every backend and for the modules, as eps already had."""
    if impl_backend == "triton" and not qknorm.backend.interpreter_on() and not torch.cuda.is_available():
        pytest.skip("QKNORM_BACKEND=triton on the CPU needs TRITON_INTERPRET=1")
    dev = "cuda" if impl_backend == "triton" and torch.cuda.is_available() else "cpu"
    x, w = torch.randn(2, 8, device=dev), torch.randn(8, device=dev)
    with qknorm.use_backend(impl_backend):
        for v in (1e39, -1e39, float("inf")):
            with pytest.raises(ValueError, match="weight_offset must be a finite number within fp32's range"):
                qknorm.rms_norm(x, w, weight_offset=v)
        qknorm.rms_norm(x, w, weight_offset=3e38)  # inside the range: taken (its result may overflow, as w * 3e38)
    with pytest.raises(ValueError, match="weight_offset must be a finite number within fp32's range"):
        qknorm.nn.RMSNorm(8, weight_offset=1e39)
