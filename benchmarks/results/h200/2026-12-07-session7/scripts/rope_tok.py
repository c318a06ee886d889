"""Prototype (issue 16): QK norm + NeoX RoPE with one program per TOK tokens, all of a token's Q and K heads
as one [TOK, H, HALF] tile pair, cos/sin loaded once per token (the library loads them per row). Full rotary,
power-of-two head counts, plain fp32 sum (no out-of-range rows): a bound on what the form could give.

    PYTHONPATH=$PWD/src python rope_tok.py            # on a GPU: checks against qknorm, times at 16384 tokens
Writes $OUT/rope_tok.txt. Under TRITON_INTERPRET=1 (CPU): the check only, T=5.
"""
import os

import torch
import triton
import triton.language as tl

import qknorm


@triton.jit
def _heads(X, toks, tok_ok, st, H: tl.constexpr, D: tl.constexpr, HALF: tl.constexpr, W, cos, sin, eps):
    h = tl.arange(0, H)
    j = tl.arange(0, HALF)
    base = X + toks.to(tl.int64)[:, None, None] * st + (h * D)[None, :, None]
    m = tok_ok[:, None, None]
    x1 = tl.load(base + j[None, None, :], mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(base + HALF + j[None, None, :], mask=m, other=0.0).to(tl.float32)
    ss = tl.sum(x1 * x1, axis=2) + tl.sum(x2 * x2, axis=2)
    r = 1.0 / tl.sqrt(ss / D + eps)
    w1 = tl.load(W + j).to(tl.float32)
    w2 = tl.load(W + HALF + j).to(tl.float32)
    y1 = x1 * r[:, :, None] * w1[None, None, :]
    y2 = x2 * r[:, :, None] * w2[None, None, :]
    o1 = y1 * cos[:, None, :] - y2 * sin[:, None, :]
    o2 = y2 * cos[:, None, :] + y1 * sin[:, None, :]
    ty = X.dtype.element_ty
    tl.store(base + j[None, None, :], o1.to(ty), mask=m)
    tl.store(base + HALF + j[None, None, :], o2.to(ty), mask=m)


@triton.jit
def rope_tok_kernel(QKV, WQ, WK, CS, P, T, st, css0, eps, HQ: tl.constexpr, HK: tl.constexpr, D: tl.constexpr,
                    HALF: tl.constexpr, TOK: tl.constexpr):
    toks = tl.program_id(0) * TOK + tl.arange(0, TOK)
    tok_ok = toks < T
    pos = tl.load(P + toks, mask=tok_ok, other=0).to(tl.int64)
    j = tl.arange(0, HALF)
    cs = CS + pos[:, None] * css0 + j[None, :]
    cos = tl.load(cs, mask=tok_ok[:, None], other=1.0).to(tl.float32)
    sin = tl.load(cs + HALF, mask=tok_ok[:, None], other=0.0).to(tl.float32)
    _heads(QKV, toks, tok_ok, st, HQ, D, HALF, WQ, cos, sin, eps)
    _heads(QKV + HQ * D, toks, tok_ok, st, HK, D, HALF, WK, cos, sin, eps)


def rope_tok(qkv, hq, hk, d, wq, wk, cs, pos, eps=1e-6, tok=1, warps=4):
    T = qkv.shape[0]
    rope_tok_kernel[(triton.cdiv(T, tok),)](qkv, wq, wk, cs, pos, T, qkv.stride(0), cs.stride(0), eps,
                                            HQ=hq, HK=hk, D=d, HALF=d // 2, TOK=tok, num_warps=warps)


def main():
    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    OUT = os.environ.get("OUT", ".")
    log = open(os.path.join(OUT, "rope_tok.txt"), "w")

    def say(s):
        print(s, flush=True)
        log.write(s + "\n")
        log.flush()

    T = 16384 if cuda else 5
    for hq, hk, d in ((32, 8, 128), (64, 4, 128)):
        g = torch.Generator(device=dev).manual_seed(0)
        qkv0 = torch.randn(T, (hq + 2 * hk) * d, device=dev, dtype=torch.bfloat16, generator=g)
        wq = torch.randn(d, device=dev, dtype=torch.bfloat16, generator=g)
        wk = torch.randn(d, device=dev, dtype=torch.bfloat16, generator=g)
        cs = torch.randn(40960, d, device=dev, generator=g)
        pos = torch.randint(0, 40960, (T,), device=dev, generator=g)
        a = qkv0.clone()
        q, k = a[:, :hq * d].view(T, hq, d), a[:, hq * d:(hq + hk) * d].view(T, hk, d)
        qknorm.qk_rms_norm_rope(q, k, wq, wk, cs, pos, q_out=q, k_out=k)
        b = qkv0.clone()
        rope_tok(b, hq, hk, d, wq, wk, cs, pos)
        diff = (a.float() - b.float()).abs().max().item()
        say(f"Hq={hq} Hkv={hk} D={d} T={T}: max |prototype - qknorm| {diff:.3g} (bf16; 0 or one ulp expected)")
        if not cuda:
            continue
        from qknorm.bench.timing import copy_gbps, time_graph
        copy = copy_gbps(dev)
        nbytes = 2 * T * (hq + hk) * d * 2
        sets = [qkv0.clone() for _ in range(2)]
        views = [(s[:, :hq * d].view(T, hq, d), s[:, hq * d:(hq + hk) * d].view(T, hk, d)) for s in sets]
        us = time_graph([lambda v=v: qknorm.qk_rms_norm_rope(v[0], v[1], wq, wk, cs, pos, q_out=v[0], k_out=v[1])
                         for v in views])
        say(f"  qknorm default     {us:8.2f} us {100 * nbytes / us / 1e3 / copy:5.1f}% of copy ({copy:.0f} GB/s)")
        for tok, warps in ((1, 4), (1, 8), (2, 8), (2, 16), (4, 16)):
            try:
                us = time_graph([lambda s=s: rope_tok(s, hq, hk, d, wq, wk, cs, pos, tok=tok, warps=warps)
                                 for s in sets])
                say(f"  prototype t{tok} w{warps:<2}    {us:8.2f} us {100 * nbytes / us / 1e3 / copy:5.1f}% of copy")
            except Exception as e:  # noqa: BLE001
                say(f"  prototype t{tok} w{warps} failed: {type(e).__name__}: {str(e)[:100]}")


if __name__ == "__main__":
    main()
