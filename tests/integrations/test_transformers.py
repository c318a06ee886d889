"""apply_qknorm on tiny random-weight transformers models (no downloads; CPU: the ops' PyTorch path)."""
import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from qknorm import functional as qf  # noqa: E402
from qknorm.integrations import transformers as qt  # noqa: E402
from qknorm.integrations.transformers import PatchedRMSNorm, apply_qknorm  # noqa: E402

_SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)


def _config(arch):
    t = transformers
    if arch == "llama":
        return t.LlamaConfig(**_SMALL), "LlamaRMSNorm"
    if arch == "mistral":
        return t.MistralConfig(**_SMALL, sliding_window=None), "MistralRMSNorm"
    if arch == "qwen2":
        return t.Qwen2Config(**_SMALL), "Qwen2RMSNorm"
    if arch == "qwen3":
        return t.Qwen3Config(**_SMALL, head_dim=16), "Qwen3RMSNorm"
    if arch == "qwen3_moe":
        return t.Qwen3MoeConfig(**_SMALL, head_dim=16, num_experts=4, num_experts_per_tok=2,
                                moe_intermediate_size=32, decoder_sparse_step=1), "Qwen3MoeRMSNorm"
    if arch == "gemma2":
        return t.Gemma2Config(**_SMALL, head_dim=16), "Gemma2RMSNorm"
    if arch == "gemma3":
        return t.Gemma3TextConfig(**_SMALL, head_dim=16), "Gemma3RMSNorm"
    if arch == "olmo2":
        return t.Olmo2Config(**_SMALL), "Olmo2RMSNorm"
    raise AssertionError(arch)


ARCHS = ["llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "gemma2", "gemma3", "olmo2"]


def _model(arch, dtype=torch.float32):
    cfg, norm_cls = _config(arch)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
    gemma = arch.startswith("gemma")
    with torch.no_grad():  # random norm weights, so a wrong weight (or a missing 1 + w) shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0 if gemma else 1.0, 0.3)
    return model, norm_cls


def _ids():
    return torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.parametrize("arch", ARCHS)
def test_patched_model_matches(arch, monkeypatch):
    model, norm_cls = _model(arch)
    ids = _ids()
    expected = [n for n, m in model.named_modules() if type(m).__name__ == norm_cls]
    weights = {n: m.weight for n, m in model.named_modules() if n in expected}
    eps = {n: getattr(m, "variance_epsilon", getattr(m, "eps", None)) for n, m in model.named_modules()
           if n in expected}
    with torch.no_grad():
        ref = model(ids).logits
        ref_gen = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    report = apply_qknorm(model)

    assert report.replaced_names == expected and not report.left_alone, str(report)
    assert all(r.original.endswith("." + norm_cls) for r in report.replaced)
    mods = dict(model.named_modules())
    for n in expected:  # same Parameter object, same eps, right offset
        assert isinstance(mods[n], PatchedRMSNorm)
        assert mods[n].weight is weights[n]
        assert mods[n].eps == eps[n]
        assert mods[n].weight_offset == (1.0 if arch.startswith("gemma") else 0.0)
    assert model.state_dict().keys() == state.keys()
    assert norm_cls in report.numerics and str(report)
    per_head = arch in ("qwen3", "qwen3_moe", "gemma3")
    assert not any("qk_rms_norm" in s for s in report.not_done), str(report)
    qk_names = [r for r in report.replaced if r.name.endswith(("q_norm", "k_norm"))]
    if per_head:
        assert qk_names and all("per-head" in r.note and "one qk_rms_norm launch" in r.note for r in qk_names)
    if arch == "olmo2":
        assert qk_names and all("full-width" in r.note for r in qk_names)

    calls, qk_calls, fused_calls = [], [], []
    real, real_qk, real_fused = qf.rms_norm, qf.qk_rms_norm, qt._fused_out
    monkeypatch.setattr(qf, "rms_norm", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(qf, "qk_rms_norm", lambda *a, **k: qk_calls.append(1) or real_qk(*a, **k))
    monkeypatch.setattr(qt, "_fused_out", lambda *a, **k: fused_calls.append(1) or real_fused(*a, **k))
    with torch.no_grad():
        out = model(ids).logits
    # every norm went through qknorm once per forward: per-head q/k norms as one launch per block, the
    # norm after each layer's residual add fused with it (not OLMo 2: its layers are post-norm)
    layers = model.config.num_hidden_layers
    fused = arch != "olmo2"
    assert len(qk_calls) == (layers if per_head else 0)
    assert len(fused_calls) == (layers if fused else 0)
    assert len(calls) == len(expected) - 2 * len(qk_calls) - len(fused_calls)
    assert report.fused_layers == ([f"model.layers.{i}" for i in range(layers)] if fused else [])
    assert any("post-norm" in s for s in report.not_done) == (not fused)
    assert _rel(out, ref) <= 1e-5
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(gen, ref_gen)


@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "qwen3_moe"])  # its experts refuse fp64 in transformers
def test_float64_model_is_the_model_bit_for_bit(arch):
    """fp64 is not a kernel dtype: the patched norms run the model's own formula, which computes in fp32 (the
    patched one kept fp64, 1e-7 away from the model's logits)."""
    model = _model(arch, torch.float64)[0]
    with torch.no_grad():
        ref = model(_ids()).logits
        apply_qknorm(model)
        assert torch.equal(model(_ids()).logits, ref)


def test_static_cache_generate():
    model, _ = _model("qwen3")
    ids = _ids()
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, cache_implementation="static")
    with torch.no_grad():
        ref = model.generate(ids, **kw)
        apply_qknorm(model)
        assert torch.equal(model.generate(ids, **kw), ref)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_gradients_match(arch):
    model, _ = _model(arch)
    model.train(False)
    patched = copy.deepcopy(model)
    apply_qknorm(patched)
    ids = _ids()
    grads = []
    for m in (model, patched):
        m.zero_grad()
        m(ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n, g in grads[0].items():
        assert _rel(grads[1][n], g) <= 1e-4, n


def test_bf16_within_model_noise():
    """bf16: the patched model's logits are as close to the fp32 model's as the unpatched bf16 model's
    are (qknorm rounds once where Llama rounds twice; stated bound: at most 1.5x the model's own
    bf16 error plus 1e-3)."""
    ids = _ids()
    m32, _ = _model("llama")
    with torch.no_grad():
        ref = m32(ids).logits
        m16 = copy.deepcopy(m32).to(torch.bfloat16)
        own = _rel(m16(ids).logits, ref)
        apply_qknorm(m16)
        ours = _rel(m16(ids).logits, ref)
    assert ours <= 1.5 * own + 1e-3, (ours, own)


def test_cast_then_weight_output_dtype():
    """Llama's ``weight * n.to(x.dtype)`` promotes: fp32 weight, bf16 input -> fp32 output; kept."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(32, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.3)
    holder = nn.Sequential(norm)
    apply_qknorm(holder)
    x = torch.randn(3, 32, dtype=torch.bfloat16)
    with torch.no_grad():
        a, b = norm(x), holder[0](x)
    assert a.dtype == b.dtype == torch.float32
    assert _rel(b, a) <= 2 ** -7  # Llama rounds n to bf16 first; qknorm does not
    x64 = torch.randn(3, 32, dtype=torch.float64)  # not a kernel dtype: the model's formula in PyTorch
    with torch.no_grad():
        assert torch.equal(holder[0](x64), norm(x64))  # the model computes fp64 inputs in fp32 too


class MyRMSNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.variance_epsilon = eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)


def test_unknown_norm_left_alone():
    model, _ = _model("llama")
    custom = MyRMSNorm(64)
    model.model.norm = custom
    report = apply_qknorm(model)
    assert model.model.norm is custom
    assert report.left_alone_names == ["model.norm"]
    assert "unknown norm class" in report.left_alone[0].reason
    assert "model.norm" not in report.replaced_names and len(report.replaced) == 4
    assert "model.norm" in str(report) and "unknown norm class" in str(report)

    only = nn.Sequential(MyRMSNorm(16), nn.LayerNorm(16))
    before = list(only)
    report = apply_qknorm(only)
    assert list(only) == before and not report.replaced
    assert report.left_alone_names == ["0", "1"]


def test_look_alike_class_fails_probe():
    """A class that claims to be LlamaRMSNorm but computes something else is caught by the probe."""
    class Fake(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(d) * 0.5)
            self.variance_epsilon = 1e-6

        def forward(self, x):  # Gemma's (1 + w): not Llama's formula
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + self.weight)

    Fake.__module__ = "transformers.models.llama.modeling_llama"
    Fake.__name__ = Fake.__qualname__ = "LlamaRMSNorm"
    holder = nn.Sequential(Fake(32))
    fake = holder[0]
    report = apply_qknorm(holder)
    assert holder[0] is fake and not report.replaced
    assert "probe" in report.left_alone[0].reason


def test_hooked_module_left_alone():
    model, _ = _model("llama")
    model.model.norm.register_forward_hook(lambda *a: None)
    report = apply_qknorm(model)
    assert report.left_alone_names == ["model.norm"] and "hook" in report.left_alone[0].reason


def test_idempotent_and_fuse_residual_reported():
    model, _ = _model("llama")
    first = apply_qknorm(model, fuse_residual=False)
    assert len(first.replaced) == 5 and not first.not_done and not first.fused_layers
    second = apply_qknorm(model)  # the norms are qknorm's already; the layers get the fused forward now
    assert not second.replaced and len(second.left_alone) == 5
    assert all("already patched" in r.reason for r in second.left_alone)
    assert second.fused_layers == ["model.layers.0", "model.layers.1"] and not second.not_done
    third = apply_qknorm(model)
    assert not third.replaced and not third.fused_layers and not third.not_done
    assert "fused residual add" in str(second)


@pytest.mark.parametrize("arch,under_compile", [("qwen3", "inductor"), ("qwen3", "kernels"), ("gemma3", "inductor")])
def test_patched_model_pickles(arch, under_compile):
    """``torch.save(model)`` / ``torch.load`` of a patched model: the classes made at run time (fused
    layers, paired attention, the norms' compile-path classes) come back, so do the logits and the
    pairing; ``copy.deepcopy`` too."""
    import io
    model, _ = _model(arch)
    apply_qknorm(model, under_compile=under_compile)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    ids = _ids()
    with torch.no_grad():
        want = model(ids).logits
        for other in (loaded, copy.deepcopy(model)):
            assert torch.equal(other(ids).logits, want)
    before = [(n, type(m)) for n, m in model.named_modules()]
    assert [(n, type(m)) for n, m in loaded.named_modules()] == before
    assert str(loaded) == str(model)
    for layer in model.model.layers:  # compile()d modules pickle and copy as torch's own: without the compiled forward
        layer.compile()
        layer.self_attn.compile()
    buf = io.BytesIO()
    torch.save(model, buf)
    copied = copy.deepcopy(model)
    assert all(getattr(m, "_compiled_call_impl", None) is None for m in copied.modules())

    def paired(mod):
        return [m for m in mod.modules() if isinstance(m, PatchedRMSNorm) and m._pair is not None]
    mods = set(map(id, loaded.modules()))
    assert len(paired(loaded)) == len(paired(model))
    assert all(id(m._pair.q) in mods and id(m._pair.k) in mods for m in paired(loaded))  # the loaded model's own


def test_not_a_module():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        apply_qknorm(object())


def test_import_qknorm_does_not_import_transformers():
    code = ("import sys, qknorm, qknorm.integrations, qknorm.integrations.transformers; "
            "assert 'transformers' not in sys.modules, 'transformers imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def _compiled_targets(model, ids):
    targets = []

    def backend(gm, example_inputs):
        targets.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    try:
        with torch.no_grad():
            out = torch.compile(model, backend=backend, fullgraph=True)(ids).logits
    finally:
        torch._dynamo.reset()
    return out, targets


def test_torch_compile_fullgraph_uses_qknorm_ops_when_asked():
    """under_compile="kernels": torch.compile(fullgraph=True) traces the patched norms as
    torch.ops.qknorm custom ops."""
    model, _ = _model("qwen3")
    ids = _ids()
    with torch.no_grad():
        ref = model(ids).logits
    report = apply_qknorm(model, under_compile="kernels")
    out, targets = _compiled_targets(model, ids)
    assert sum("qknorm" in t for t in targets) == len(report.replaced)
    assert _rel(out, ref) <= 1e-5


def test_torch_compile_traces_the_models_own_norms_by_default():
    """The default (under_compile="inductor"): the compiled patched model's graph is the compiled
    unpatched model's (no qknorm op, the same calls), so Inductor fuses the norms as it would;
    eager calls still take qknorm's kernels."""
    model, _ = _model("qwen3")
    ids = _ids()
    with torch.no_grad():
        ref = model(ids).logits
    ref_out, ref_targets = _compiled_targets(model, ids)
    apply_qknorm(model)
    out, targets = _compiled_targets(model, ids)
    assert not any("qknorm" in t for t in targets)
    assert sorted(targets) == sorted(ref_targets)
    assert _rel(out, ref) <= 1e-5 and _rel(ref_out, ref) <= 1e-5
    with pytest.raises(ValueError, match="under_compile"):
        apply_qknorm(model, under_compile="triton")


def test_torch_rms_norm_modules():
    holder = nn.Sequential(nn.RMSNorm(32, eps=1e-5), nn.RMSNorm(32), nn.RMSNorm(32, elementwise_affine=False),
                           nn.RMSNorm((4, 8)))
    with torch.no_grad():
        holder[0].weight.normal_(1.0, 0.3)
    originals = list(holder)
    x = torch.randn(3, 32)
    report = apply_qknorm(holder)
    assert report.replaced_names == ["0", "1", "2"]
    assert report.left_alone_names == ["3"] and "trailing" in report.left_alone[0].reason
    assert holder[0].weight is originals[0].weight and holder[2].weight is None
    with torch.no_grad():
        for i in range(3):
            assert _rel(holder[i](x), originals[i](x)) <= 1e-6


def _paired_block(model):
    attn = model.model.layers[0].self_attn
    return attn, attn.q_norm._pair


def test_qk_pairing_runs_where_it_is_exact():
    """The pairing defers q_norm only where the in-place launch equals the two modules' results:
    not with autograd, not for a promoting weight dtype, not for inference tensors outside
    inference mode; each falls back to two separate calls with the same values."""
    model, _ = _model("qwen3")
    apply_qknorm(model)
    attn, pair = _paired_block(model)
    assert pair is not None and pair.q is attn.q_norm and pair.k is attn.k_norm
    q, k = torch.randn(2, 3, 4, 16), torch.randn(2, 3, 2, 16)
    with torch.no_grad():
        want_q, want_k = attn.q_norm._own(q.clone()), attn.k_norm._own(k.clone())
        qd = q.clone()
        yd = attn.q_norm(qd)  # called on its own (not from the block's forward): no deferral
        assert yd is not qd and pair.pending is None
        torch.testing.assert_close(yd, want_q, rtol=1e-6, atol=1e-6)
        pair.armed = True  # as inside the block's forward
        q1, k1 = q.clone(), k.clone()
        assert attn.q_norm(q1) is q1 and pair.pending is q1  # deferred: returned as it is
        assert attn.k_norm(k1) is k1 and pair.pending is None
    torch.testing.assert_close(q1, want_q, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(k1, want_k, rtol=1e-6, atol=1e-6)
    # autograd: no deferral, the differentiable path
    qg = q.clone().requires_grad_()
    yq = attn.q_norm(qg)
    assert yq is not qg and pair.pending is None and yq.requires_grad
    # inference tensors outside inference mode cannot be written in place: no deferral
    with torch.inference_mode():
        qi = q.clone()
    with torch.no_grad():
        yi = attn.q_norm(qi)
    assert yi is not qi and pair.pending is None
    torch.testing.assert_close(yi, want_q, rtol=1e-6, atol=1e-6)
    pair.disarm()


def test_qk_pairing_never_leaves_q_unnormalised():
    """q_norm called twice without k_norm (a forward with another order): the pending q is
    normalised in place, a warning says so, and the pairing is off for that block."""
    model, _ = _model("qwen3")
    apply_qknorm(model)
    attn, pair = _paired_block(model)
    q = torch.randn(3, 4, 16)
    with torch.no_grad():
        want = attn.q_norm._own(q.clone())
        pair.armed = True  # as inside the block's forward
        q1, q2 = q.clone(), q.clone()
        attn.q_norm(q1)
        with pytest.warns(RuntimeWarning, match="q_norm was called twice"):
            y2 = attn.q_norm(q2)
        torch.testing.assert_close(q1, want, rtol=1e-6, atol=1e-6)
        assert not pair.enabled and pair.pending is None and y2 is not q2
        torch.testing.assert_close(y2, want, rtol=1e-6, atol=1e-6)
        # a forward that raises between q_norm and k_norm: the block's end normalises the pending q
        pair.enabled = True
        q3 = q.clone()
        assert attn.q_norm(q3) is q3 and pair.pending is q3
        pair.disarm()
    torch.testing.assert_close(q3, want, rtol=1e-6, atol=1e-6)
    assert pair.pending is None and not pair.armed


def test_hooks_see_what_the_model_would_give_them():
    """Hooks added after apply_qknorm: one on q_norm sees the normalised Q (q_norm then runs on its
    own), one on the norm a fused layer folds into its add is called (the layer steps aside from
    the fused launch); a hook that changes the output changes the logits as it does unpatched."""
    ref_model, _ = _model("qwen3")
    model = copy.deepcopy(ref_model)
    apply_qknorm(model)
    ids = _ids()
    seen = {}
    for m in (ref_model, model):
        layer = m.model.layers[0]
        layer.self_attn.q_norm.register_forward_hook(lambda mod, a, out, m=m: seen.__setitem__(id(m), out.clone()))
        layer.post_attention_layernorm.register_forward_hook(lambda mod, a, out: out * 0.5)
    with torch.no_grad():
        ref = ref_model(ids).logits
        out = model(ids).logits
    assert _rel(seen[id(model)], seen[id(ref_model)]) <= 1e-5
    assert _rel(out, ref) <= 1e-5


def test_attention_with_another_order_is_not_paired():
    """A class named Qwen3Attention whose forward reads Q before calling k_norm fails the
    probe: its norms run separately and the report says why; the output is unchanged."""
    from transformers.models.qwen3 import modeling_qwen3 as mq

    class Reordered(mq.Qwen3Attention):
        def forward(self, hidden_states, position_embeddings, attention_mask=None, **kw):
            shape = (*hidden_states.shape[:-1], -1, self.head_dim)
            q = self.q_norm(self.q_proj(hidden_states).view(shape))
            q_copy = q * 1.0  # read before k_norm ran
            k = self.k_norm(self.k_proj(hidden_states).view(shape))
            return self.o_proj((q_copy[..., :k.shape[-2], :] + k).flatten(-2).repeat(1, 1, 2)), None

    Reordered.__module__, Reordered.__name__ = mq.__name__, "Qwen3Attention"
    Reordered.__qualname__ = "Qwen3Attention"
    model, _ = _model("qwen3")
    for layer in model.model.layers:
        layer.self_attn.__class__ = Reordered
    ids = _ids()
    with torch.no_grad():
        ref = model(ids).logits
    report = apply_qknorm(model)
    attn = model.model.layers[0].self_attn
    assert attn.q_norm._pair is None and attn.k_norm._pair is None
    assert any("one qk_rms_norm launch" in s and "probe" in s for s in report.not_done), str(report)
    assert all("its own rms_norm launch" in r.note for r in report.replaced if r.name.endswith("q_norm"))
    with torch.no_grad():
        assert _rel(model(ids).logits, ref) <= 1e-5


@pytest.mark.parametrize("arch", ["qwen3", "gemma3"])
def test_fused_residual_keeps_inputs_and_hidden_states(arch):
    """The fused add + norm writes two new tensors: the layer's input (the previous layer's output,
    the embeddings, what ``output_hidden_states`` returns) is never written, and every hidden state
    equals the unpatched model's."""
    model, _ = _model(arch)
    ids = _ids()
    with torch.no_grad():
        ref = model(ids, output_hidden_states=True).hidden_states
    report = apply_qknorm(model)
    assert report.fused_layers
    with torch.no_grad():
        got = model(ids, output_hidden_states=True).hidden_states
        layer = model.model.layers[0]
        h = torch.randn(1, 3, 64)
        h0 = h.clone()
        pe = model.model.rotary_emb(h, torch.arange(3)[None]) if arch == "qwen3" else None
        if pe is not None:
            layer(h, attention_mask=None, position_embeddings=pe)
            assert torch.equal(h, h0), "the layer input was written"
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        assert _rel(a, b) <= 1e-5


def test_layer_with_another_forward_is_not_fused():
    """A class named LlamaDecoderLayer whose forward is post-norm (OLMo 2's order) fails the probe:
    the layer keeps its own forward and the report says why; logits unchanged."""
    from transformers.models.llama import modeling_llama as ml

    class PostNorm(ml.LlamaDecoderLayer):
        def forward(self, hidden_states, attention_mask=None, position_embeddings=None, **kw):
            h, _ = self.self_attn(hidden_states=hidden_states, attention_mask=attention_mask,
                                  position_embeddings=position_embeddings, **kw)
            hidden_states = hidden_states + self.input_layernorm(h)
            return hidden_states + self.post_attention_layernorm(self.mlp(hidden_states))

    PostNorm.__module__, PostNorm.__name__, PostNorm.__qualname__ = ml.__name__, "LlamaDecoderLayer", "LlamaDecoderLayer"
    model, _ = _model("llama")
    for layer in model.model.layers:
        layer.__class__ = PostNorm
    ids = _ids()
    with torch.no_grad():
        ref = model(ids).logits
    report = apply_qknorm(model)
    assert not report.fused_layers and type(model.model.layers[0]) is PostNorm
    assert any(s.startswith("fuse_residual") and "probe" in s for s in report.not_done), str(report)
    with torch.no_grad():
        assert _rel(model(ids).logits, ref) <= 1e-5
