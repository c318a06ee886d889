"""Issue 11's adversarial inputs on the GPU, including the sizes past 2**31 that CPU tests cannot afford."""
import os
import sys
import time
import traceback

import torch

import qknorm

OUT = os.environ.get("OUT", ".")
log = open(os.path.join(OUT, "adversarial.txt"), "w")


def say(*a):
    s = " ".join(str(x) for x in a)
    print(s, flush=True)
    log.write(s + "\n")
    log.flush()


def case(name):
    def deco(fn):
        t0 = time.time()
        try:
            r = fn()
            say(f"PASS {name}: {r} ({time.time() - t0:.1f}s)")
        except Exception as e:  # noqa: BLE001
            say(f"FAIL {name}: {type(e).__name__}: {e}")
            say(traceback.format_exc())
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    return deco


def ref(x, w=None, eps=1e-6):
    xf = x.double()
    y = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
    return y if w is None else y * w.double()


@case("1 weight stride past int32")
def _():
    w = torch.empty(127 * (2**25 + 1) + 1, device="cuda").as_strided((128,), (2**25 + 1,))
    w.copy_(torch.randn(128, device="cuda"))
    x = torch.randn(3, 128, device="cuda")
    err = (qknorm.rms_norm(x, w).double() - ref(x, w)).abs().max().item()
    assert err < 1e-5, err
    return f"max err {err:.2e}"


@case("2 rows 2**31-65535, fp16 [N, 1]")
def _():
    n = 2**31 - 65535
    x = torch.randn(n, 1, device="cuda", dtype=torch.float16)
    y = qknorm.rms_norm(x)
    e = (x.float() / torch.sqrt(x.float() ** 2 + 1e-6))
    err = (y.float() - e).abs().max().item()
    assert err <= 1e-3 and not y.isnan().any(), err
    return f"{n} rows right (max err {err:.1e}, fp16)"


@case("2b fused add, 2**31+5 rows fp16 [N, 1]")
def _():
    n = 2**31 + 5
    x = torch.randn(n, 1, device="cuda", dtype=torch.float16)
    r = torch.randn(n, 1, device="cuda", dtype=torch.float16)
    s = (x.float() + r.float())
    e_y = (s / torch.sqrt(s * s + 1e-6)).half()
    e_r = s.half()
    del s
    qknorm.fused_add_rms_norm(x, r)
    assert torch.equal(r, e_r)
    err = (x.float() - e_y.float()).abs().max().item()
    assert err <= 1e-3, err
    return f"right (max err {err:.1e})"


@case("2c qk token_order config on [2**30+2**20, 1, 2] in place")
def _():
    n = 2**30 + 2**20
    q = torch.randn(n, 1, 2, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(n, 1, 2, device="cuda", dtype=torch.bfloat16)
    eq = (q.float() * torch.rsqrt(q.float().square().mean(-1, keepdim=True) + 1e-6)).bfloat16()
    ek = (k.float() * torch.rsqrt(k.float().square().mean(-1, keepdim=True) + 1e-6)).bfloat16()
    cfg = qknorm.KernelConfig(rows=64, block_d=2, num_warps=1, token_order=True)
    qknorm.qk_rms_norm(q, k, None, None, q_out=q, k_out=k, config=cfg)
    dq = (q != eq).sum().item()
    dk = (k != ek).sum().item()
    assert dq == 0 and dk == 0, (dq, dk)
    return "every row written and right"


@case("3 written tensors overlapping themselves")
def _():
    msgs = []
    for f in (lambda: qknorm.rms_norm(torch.randn(4, 8, device="cuda"), out=torch.zeros(8, device="cuda").expand(4, 8)),
              lambda: qknorm.fused_add_rms_norm(torch.randn(300, 8, device="cuda"),
                                                torch.zeros(8, device="cuda").expand(300, 8)),
              lambda: qknorm.qk_rms_norm(torch.randn(5, 4, 8, device="cuda"), torch.randn(5, 2, 8, device="cuda"), None,
                                         None, q_out=torch.zeros(8, device="cuda").expand(5, 4, 8))):
        try:
            f()
            raise AssertionError("no error")
        except ValueError as e:
            msgs.append(str(e)[:60])
    return msgs


@case("4 weight = x[0], out = x, 2**20 rows")
def _():
    x = torch.randn(2**20, 32, device="cuda")
    x0 = x.clone()
    qknorm.rms_norm(x, x[0], out=x)
    err = (x.double() - ref(x0, x0[0])).abs().max().item()
    assert err < 1e-4, err
    r = torch.randn(2**20, 32, device="cuda")
    x = torch.randn(2**20, 32, device="cuda")
    x0, r0 = x.clone(), r.clone()
    qknorm.fused_add_rms_norm(x, r, r[0])
    err2 = (x.double() - ref(x0 + r0, r0[0])).abs().max().item()
    assert err2 < 1e-4, err2
    return f"max err {err:.2e}, fused add {err2:.2e}"


@case("5/6 extremes and eps on GPU")
def _():
    out = []
    for sc, eps in ((1e20, 1e-6), (1e-25, 0.0)):
        for dt in (torch.float32, torch.bfloat16):
            x = (torch.randn(2, 64, device="cuda") * sc).to(dt)
            y = qknorm.rms_norm(x, eps=eps)
            err = (y.double() - ref(x, None, eps)).abs().max().item()
            assert err < 2e-2, (sc, dt, err)
            out.append(f"{sc:g}/{dt}: {err:.1e}")
    for e in (1e-40, 1e-50):
        y = qknorm.rms_norm(torch.zeros(2, 16, device="cuda"), eps=e)
        assert torch.equal(y, torch.zeros_like(y)), (e, y)
    return out


@case("7 gradients on the Triton path")
def _():
    x = torch.randn(64, 128, device="cuda", requires_grad=True)
    c = torch.randn(64, 128, device="cuda")
    ((qknorm.rms_norm(x) * c).sum() + (x * x).sum()).backward()
    g1 = x.grad.clone()
    x.grad = None
    ((torch.nn.functional.rms_norm(x, (128,), eps=1e-6) * c).sum() + (x * x).sum()).backward()
    err = (g1 - x.grad).abs().max().item()
    assert err < 1e-4, err
    return f"max grad diff {err:.2e}"
