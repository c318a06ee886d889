"""Every kernel compiles ahead of time to sm_90 cubins without a GPU (Triton's own compiler and
ptxas): what the interpreter cannot check — constexpr branches, tuples over ``tl.static_range``
(rows kept as register tiles), reshapes/joins, the exact and native FP8 casts, mRoPE, PDL — is
lowered for Hopper in CI. One subprocess (no ``TRITON_INTERPRET``) compiles them all."""
import os
import subprocess
import sys

import pytest

_AOT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from qknorm.kernels.fused_add import fused_add_rms_norm_kernel, fused_add_rms_norm_out_kernel
from qknorm.kernels.qk_norm import qk_rms_norm_kernel, qk_rms_norm_tokens_kernel
from qknorm.kernels.qk_norm_rope import qk_rms_norm_rope_kernel
from qknorm.kernels.qk_norm_rope_cache import qk_norm_rope_cache_kernel
from qknorm.kernels.rms_norm import rms_norm_kernel
from qknorm.kernels.rms_norm_quant import rms_norm_quant_kernel

FLOATS = {"eps", "eps_tiny", "w_offset", "ub"}


def compile_(kernel, ptrs, consts, num_warps=4):
    names = list(kernel.arg_names)
    sig = {n: ptrs.get(n) or ("constexpr" if n in consts else "fp32" if n in FLOATS else "i32") for n in names}
    src = ASTSource(fn=kernel, signature=sig, constexprs={(names.index(n),): v for n, v in consts.items()})
    ck = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    assert "cubin" in ck.asm, (kernel.__name__, consts)


rows = {"X": "*bf16", "Y": "*bf16", "W": "*fp32"}
base = {"HAS_WEIGHT": True, "ROWS": 1, "PERSISTENT": False, "USE_PDL": True}
for d, block, chunked in ((4096, 4096, 0), (5120, 1024, 5), (5000, 1024, 1)):
    compile_(rms_norm_kernel, rows, dict(base, D=d, BLOCK_D=block, CHUNKED=chunked))
    compile_(fused_add_rms_norm_kernel, {"X": "*bf16", "R": "*bf16", "W": "*bf16"},
             dict(base, D=d, BLOCK_D=block, CHUNKED=chunked, PERSISTENT=True))
compile_(fused_add_rms_norm_out_kernel, {"X": "*bf16", "R": "*bf16", "Y": "*bf16", "RO": "*bf16", "W": "*bf16"},
         dict(base, D=5000, BLOCK_D=1024, CHUNKED=1))
compile_(qk_rms_norm_kernel, {"XQ": "*bf16", "YQ": "*bf16", "WQ": "*bf16", "XK": "*bf16", "YK": "*bf16",
                              "WK": "*bf16"},
         dict(base, D=128, ROWS=16, BLOCK_D=128, CHUNKED=0), num_warps=8)
# tiles of several rows (rows.row_normalized's parallel scaled sum), persistent; the token-ordered QK kernel
compile_(rms_norm_kernel, rows, dict(base, D=96, ROWS=32, BLOCK_D=128, CHUNKED=0, PERSISTENT=True), num_warps=8)
# one-warp tiles of several rows: one range test per program (RANGE_BRANCH), QK's two kernels too
compile_(rms_norm_kernel, rows, dict(base, D=128, ROWS=8, BLOCK_D=128, CHUNKED=0, RANGE_BRANCH=True), num_warps=1)
compile_(qk_rms_norm_kernel, {"XQ": "*bf16", "YQ": "*bf16", "WQ": "*bf16", "XK": "*bf16", "YK": "*bf16",
                              "WK": "*bf16"},
         dict(base, D=128, ROWS=8, BLOCK_D=128, CHUNKED=0, RANGE_BRANCH=True), num_warps=1)
for lo in (False, True):  # the fused add's two kernels, persistent, with and without the third sum
    compile_(fused_add_rms_norm_kernel, {"X": "*bf16", "R": "*bf16", "W": "*bf16"},
             dict(base, D=256, ROWS=4, BLOCK_D=256, CHUNKED=0, PERSISTENT=True, LO_SUMS=lo, RANGE_BRANCH=True),
             num_warps=1)
    compile_(fused_add_rms_norm_out_kernel, {"X": "*fp32", "R": "*fp32", "Y": "*fp32", "RO": "*fp32", "W": "*fp32"},
             dict(base, D=256, ROWS=4, BLOCK_D=256, CHUNKED=0, LO_SUMS=lo, RANGE_BRANCH=True), num_warps=1)
compile_(qk_rms_norm_tokens_kernel, {"XQ": "*bf16", "YQ": "*bf16", "WQ": "*bf16", "XK": "*bf16", "YK": "*bf16",
                                     "WK": "*fp32"},
         dict(HAS_WEIGHT=True, D=128, ROWS=8, BLOCK_D=128, PERSISTENT=True, USE_PDL=True), num_warps=4)
compile_(qk_rms_norm_tokens_kernel, {"XQ": "*bf16", "YQ": "*bf16", "WQ": "*bf16", "XK": "*bf16", "YK": "*bf16",
                                     "WK": "*fp32"},
         dict(HAS_WEIGHT=True, D=128, ROWS=8, BLOCK_D=128, PERSISTENT=False, RANGE_BRANCH=True), num_warps=1)
# eps below 2**-100 (LO_SUMS: the third sum) and fp32 outputs (factors kept split): one-row, several-row, chunked
f32 = {"X": "*fp32", "Y": "*fp32", "W": "*fp32"}
for rows_, d, block, chunked in ((1, 4096, 4096, 0), (16, 128, 128, 0), (2, 5000, 1024, 1), (1, 5120, 1024, 5)):
    for lo in (False, True):
        compile_(rms_norm_kernel, f32, dict(base, D=d, ROWS=rows_, BLOCK_D=block, CHUNKED=chunked, LO_SUMS=lo))
    compile_(rms_norm_kernel, rows, dict(base, D=d, ROWS=rows_, BLOCK_D=block, CHUNKED=chunked, LO_SUMS=True))
compile_(qk_rms_norm_tokens_kernel, {"XQ": "*fp32", "YQ": "*fp32", "WQ": "*fp32", "XK": "*fp32", "YK": "*fp32",
                                     "WK": "*fp32"},
         dict(HAS_WEIGHT=True, D=128, ROWS=8, BLOCK_D=128, PERSISTENT=False, USE_PDL=False, LO_SUMS=True))
quant = {"X": "*bf16", "R": "*bf16", "W": "*bf16", "SC": "*fp32", "SIN": "*fp32", "DBG": "*bf16"}
for out_ty, out, qmax, group, gp, native, static in (("*fp8e4nv", 1, 448.0, 128, 128, True, False),
                                                     ("*fp8e5", 2, 57344.0, 40, 64, False, False),
                                                     ("*i8", 0, 127.0, 0, 0, False, True)):
    one_pass = static or group == 0 or group == gp
    compile_(rms_norm_quant_kernel, dict(quant, Y=out_ty),
             dict(base, D=7168, HAS_RESIDUAL=True, STATIC=static, GROUP=group, GP=gp, UB=0, UE8M0=group == 128,
                  OUT=out, QMAX=qmax, NATIVE_CAST=native, BLOCK_D=8192, CHUNKED=False, ONE_PASS=one_pass,
                  DEBUG=False, LO_SUMS=group == 40))
for static in (False, True):  # rows wider than a tile: the two-pass forms (amax pass, quantising pass)
    compile_(rms_norm_quant_kernel, dict(quant, Y="*fp8e4nv"),
             dict(base, D=7168, HAS_RESIDUAL=True, STATIC=static, GROUP=0, GP=0, UB=0, UE8M0=False, OUT=1,
                  QMAX=448.0, NATIVE_CAST=True, BLOCK_D=2048, CHUNKED=True, ONE_PASS=False, DEBUG=False))
cache = {"CS": "*fp32", "P": "*i64", "XQ": "*bf16", "YQ": "*bf16", "WQ": "*bf16", "XK": "*bf16", "WK": "*bf16",
         "KC": "*fp8e4nv", "KO": "*bf16", "XV": "*bf16", "VC": "*fp8e4nv", "SM": "*i64", "KSC": "*fp32",
         "VSC": "*fp32"}
for is_neox, mrope, has_tail, form in ((True, True, False, "split"), (False, False, True, "split"),
                                      (True, True, True, "load"), (True, False, True, "gather"),
                                      (False, True, True, "load")):
    compile_(qk_norm_rope_cache_kernel, cache,
             dict(HAS_WEIGHT=True, IS_NEOX=is_neox, HAS_TAIL=has_tail, MROPE=mrope, HAS_KOUT=True, K_FP8=1,
                  V_FP8=1, K_QMAX=448.0, V_QMAX=448.0, NATIVE_CAST=True, WIDE=form == "load", ROWS=4,
                  BLOCK_H=32 if has_tail else 64, BLOCK_T=64, BLOCK_V=128, WHOLE=form != "split",
                  BLOCK_D=128, PARTNER_LOAD=form == "load", PERSISTENT=False, USE_PDL=True,
                  LO_SUMS=form == "gather"))
rope = {"CS": "*fp32", "P": "*i64", "XQ": "*fp32", "YQ": "*fp32", "WQ": "*fp32", "XK": "*fp32", "YK": "*fp32",
        "WK": "*fp32"}
for rows_, warps in ((16, 4), (1, 1)):  # the split form (fp32: one tile, dispatch.ROPE_FP32_TILE), one-row programs
    compile_(qk_rms_norm_rope_kernel, rope,
             dict(HAS_WEIGHT=True, IS_NEOX=True, HAS_TAIL=False, ROWS=rows_, BLOCK_H=128, BLOCK_T=1, WHOLE=False,
                  BLOCK_D=256, PARTNER_LOAD=False, PERSISTENT=False, USE_PDL=False), num_warps=warps)
for form in ("load", "gather"):  # the whole-row forms
    compile_(qk_rms_norm_rope_kernel, dict(rope, XQ="*bf16", YQ="*bf16", XK="*bf16", YK="*bf16"),
             dict(HAS_WEIGHT=True, IS_NEOX=True, HAS_TAIL=True, ROWS=4, BLOCK_H=32, BLOCK_T=256, WHOLE=True,
                  BLOCK_D=256, PARTNER_LOAD=form == "load", PERSISTENT=True, USE_PDL=True), num_warps=2)
print("compiled")
"""


def _compile_script(script: str):
    """Run ``script`` in a Python without ``TRITON_INTERPRET`` (Triton's compiler, not the
    interpreter); skip where this Triton has no ahead-of-time compile API."""
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no ahead-of-time compile API in this Triton: {e}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=1800)  # hang guard only


def test_every_kernel_compiles_for_sm90_without_a_gpu():
    r = _compile_script(_AOT)
    if r.returncode and "ptxas" in r.stderr.lower() and "not found" in r.stderr.lower():
        pytest.skip("no ptxas to assemble cubins")
    assert r.returncode == 0 and "compiled" in r.stdout, r.stderr[-3000:]


_LAYOUT = r"""
import re
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from qknorm.kernels.fused_add import fused_add_rms_norm_kernel
from qknorm.kernels.rms_norm import rms_norm_kernel
from qknorm.kernels.rms_norm_quant import rms_norm_quant_kernel

FLOATS = {"eps", "eps_tiny", "w_offset", "ub"}


def ttgir(kernel, ptrs, consts, num_warps, x_rows_aligned=True):
    # as a real call specialises: unit strides and single leading dims are constexpr 1, pointers
    # and row strides divisible by 16 (x's row strides not, for a strided x whose rows are not
    # 16-byte aligned, e.g. x[:, 8:] of a [T, 168] fp32 tensor)
    names = list(kernel.arg_names)
    consts = dict({n: 1 for n in names if n in ("xsd", "ysd", "rsd", "ws", "N1", "N2")}, **consts)
    sig = {n: "constexpr" if n in consts else ptrs.get(n) or ("fp32" if n in FLOATS else "i32") for n in names}
    div = [n for n in names if n not in consts and (sig[n].startswith("*") or re.fullmatch(r"[yr]s[012]", n)
                                                    or (x_rows_aligned and re.fullmatch(r"xs[012]", n)))]
    src = ASTSource(fn=kernel, signature=sig, constexprs={(names.index(n),): v for n, v in consts.items()},
                    attrs={(names.index(n),): [["tt.divisibility", 16]] for n in div})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps}).asm["ttgir"]


def sum_layout(ir):
    # the layout of the first reduction's operand: the row's sum of squares
    lay = dict(re.findall(r"^(#\w+) = (#ttg\.\w+<\{[^\n]*\}>)", ir, re.M))
    for line in ir.splitlines():
        if line.strip().startswith("}) : (tensor<"):
            return lay[re.findall(r"tensor<[^>]*, (#\w+)>", line)[0]]


bad = []
QPTRS = {"R": "*bf16", "W": "*bf16", "SC": "*fp32", "SIN": "*fp32", "DBG": "*fp32", "Y": "*fp8e4nv"}
# (D, BLOCK_D, ROWS, num_warps, x dtype, groups): the H100 table's picks for 256 x 3000 rows, 128 x 33+,
# 8192 x 1 (one-pass forms: per token, groups of 64); D = 160 (groups of 40: the two-pass form)
for d, bd, rows, nw, xt, groups in ((256, 256, 4, 2, "*bf16", (0, 64)), (128, 128, 16, 8, "*bf16", (0, 64)),
                                    (8192, 8192, 1, 16, "*bf16", (0, 64)), (160, 256, 1, 1, "*fp32", (0, 40)),
                                    (160, 256, 4, 4, "*fp32", (40,)), (160, 256, 2, 2, "*bf16", (40,))):
    for aligned in (True, False):
        base = dict(HAS_WEIGHT=True, ROWS=rows, PERSISTENT=False, USE_PDL=False, D=d, BLOCK_D=bd, CHUNKED=0)
        for fused in (False, True):
            ref = sum_layout(ttgir(fused_add_rms_norm_kernel if fused else rms_norm_kernel,
                                   {"X": xt, "Y": xt, "R": xt, "W": "*bf16"}, base, nw, aligned))
            for group in groups:
                gp = 1 << max(group - 1, 0).bit_length() if group else 0
                q = dict(base, HAS_RESIDUAL=fused, STATIC=False, GROUP=group, GP=gp, UB=0, UE8M0=False, OUT=1,
                         QMAX=448.0, NATIVE_CAST=True, ONE_PASS=gp == group, DEBUG=False, CHUNKED=False)
                got = sum_layout(ttgir(rms_norm_quant_kernel, dict(QPTRS, X=xt, R=xt), q, nw, aligned))
                if got != ref:
                    bad.append(f"D={d} rows={rows} warps={nw} x={xt} aligned={aligned} fused={fused} group={group}: "
                               f"{got} vs {ref}")
print("\n".join(bad) if bad else "same layouts")
"""


def test_quant_kernel_sums_squares_in_rms_norms_layout():
    """The fused quant kernel's sum of squares has the row layout of rms_norm's (fused add's)
    kernel under the same config, so ``n`` has their bits and is batch-invariant. Its 8-bit code
    store asks for 16 codes per thread; unless capped (``rms_norm_quant.code_cols``) Triton
    gave the whole tile that layout where a thread holds 16 elements (96 of 144 combinations of
    widths, row counts, modes differed; on an H100 the codes then changed with the call's row
    count). Also the two-pass form (groups that are not a power of two: its first pass only
    reads, ``rms_norm_quant._layout_anchor``) and x rows that are not 16-byte aligned (a strided
    x: the layout then came from the loads alone, and fp32 n differed on an H100). Checked on the
    sm_90 TTGIR, without a GPU."""
    r = _compile_script(_LAYOUT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "same layouts", r.stdout


_TOKENS_LAYOUT = _LAYOUT.split("bad = []")[0] + r"""
from qknorm.kernels.qk_norm import qk_rms_norm_kernel, qk_rms_norm_tokens_kernel


def qk_ttgir(kernel, consts, num_warps, dt="*bf16"):
    # as a packed [T, H, D] QKV view specialises: unit column and weight strides and N2 are constexpr 1,
    # pointers and the token/head strides divisible by 16
    names = list(kernel.arg_names)
    consts = dict({n: 1 for n in names if re.fullmatch(r"[qk](xsd|ysd|ws|N2|xs2|ys2)", n)}, **consts)
    sig = {n: "constexpr" if n in consts else dt if re.fullmatch(r"[XYW][QK]", n)
           else "fp32" if n in FLOATS else "i32" for n in names}
    div = [n for n in names if n not in consts and (sig[n].startswith("*") or re.fullmatch(r"[qk][xy](s[01]|t|h)", n))]
    src = ASTSource(fn=kernel, signature=sig, constexprs={(names.index(n),): v for n, v in consts.items()},
                    attrs={(names.index(n),): [["tt.divisibility", 16]] for n in div})
    ck = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    return ck.asm["ttgir"], ck.asm["ptx"]


bad = []
for d, rows, nw, dt in ((128, 32, 8, "*bf16"), (128, 32, 4, "*bf16"), (64, 64, 4, "*bf16"), (256, 8, 4, "*bf16"),
                        (128, 16, 4, "*fp32"), (64, 8, 1, "*fp16")):
    base = dict(HAS_WEIGHT=True, ROWS=rows, PERSISTENT=False, USE_PDL=False, D=d, BLOCK_D=d)
    ref, _ = qk_ttgir(qk_rms_norm_kernel, dict(base, CHUNKED=0), nw, dt)
    got, ptx = qk_ttgir(qk_rms_norm_tokens_kernel, base, nw, dt)
    if sum_layout(got) != sum_layout(ref):
        bad.append(f"D={d} rows={rows} warps={nw} {dt}: {sum_layout(got)} vs {sum_layout(ref)}")
    if "ld.global.v4" not in ptx or "st.global.v4" not in ptx:
        bad.append(f"D={d} rows={rows} warps={nw} {dt}: no 16-byte loads or stores")
    if re.search(r"ttg\.convert_layout %\S+ : tensor<\d+x\d+x", got):  # a whole tile through shared memory
        bad.append(f"D={d} rows={rows} warps={nw} {dt}: a 2-D layout conversion")
print("\n".join(bad) if bad else "same layouts")
"""


def test_token_ordered_qk_kernel_reads_16_byte_vectors_in_the_qk_kernels_layout():
    """The token-ordered QK kernel (Q and K heads of a token in one tile) moves rows in 16-byte vectors
    and sums squares in the row layout of the head-ordered QK kernel under the same config, so either
    form gives a row the same bits (batch invariance across the token-order switch). It selected each
    row's base pointer (Q's or K's) per row; Triton could not prove the selected pointer aligned and
    compiled 2-byte loads and stores, with another reduction layout. Nor does it move a whole tile
    between layouts (weighting rows by a select of the two weight vectors did, at 4 warps). Checked on
    the sm_90 TTGIR/PTX, without a GPU."""
    r = _compile_script(_TOKENS_LAYOUT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "same layouts", r.stdout


_ROPE_LAYOUT = r"""
import re
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from qknorm.dispatch import candidate_configs, rope_config
from qknorm.kernels.qk_norm_rope import qk_rms_norm_rope_kernel as K
from qknorm.kernels.qk_norm_rope_cache import qk_norm_rope_cache_kernel as KC
from qknorm.ops import _plan as P


def row_sum_layouts(ir):
    # (elements per thread, lanes, warps) along the row of every reduction's operand
    lay = dict(re.findall(r"^(#\w+) = (#ttg\.\w+<\{[^\n]*\}>)", ir, re.M))
    out = set()
    for line in ir.splitlines():
        if line.strip().startswith("}) : (tensor<"):
            m = re.findall(r"tensor<[^>]*, (#[\w.]+)", line)
            f = re.search(r"sizePerThread = \[1, (\d+)\], threadsPerWarp = \[\d+, (\d+)\], "
                          r"warpsPerCTA = \[\d+, (\d+)\]", lay.get(m[0], "") if m else "")
            if f:
                out.add(f.groups())
    return tuple(sorted(out))


def ttgir(d, r, cfg, dt):
    # as a packed QKV view of Qwen3-Next's 16+2 heads specialises: ints equal to 1 constexpr, the rest of the
    # strides and the pointers divisible by 16
    names = list(K.arg_names)
    width = 20 * d
    ints = dict(D=d, HALF=r // 2, css0=r, css1=1, max_pos=4096, ps=1, q_rows=64 * 16, qH=16, qxt=width, qxh=d,
                qxd=1, qyt=width, qyh=d, qyd=1, qws=1, k_rows=64 * 2, kH=2, kxt=width, kxh=d, kxd=1, kyt=width, kyh=d,
                kyd=1, kws=1)
    c = dict(HAS_WEIGHT=True, IS_NEOX=True, HAS_TAIL=d > r, ROWS=cfg.rows, BLOCK_H=triton.next_power_of_2(r // 2),
             BLOCK_T=triton.next_power_of_2(d - r) if d > r else 1, PERSISTENT=cfg.persistent, USE_PDL=False,
             LO_SUMS=False, **P.row_form(d, r, True))
    c.update({n: 1 for n, v in ints.items() if v == 1})
    sig = {n: "constexpr" if n in c else "*fp32" if n == "CS" else "*i64" if n == "P"
           else dt if re.fullmatch(r"[XYW][QK]", n) else "fp32" if n in ("eps", "eps_tiny", "w_offset") else "i32"
           for n in names}
    div = [n for n in names if n not in c and (sig[n].startswith("*") or (n in ints and ints[n] % 16 == 0))]
    src = ASTSource(fn=K, signature=sig, constexprs={(names.index(n),): v for n, v in c.items() if n in names},
                    attrs={(names.index(n),): [["tt.divisibility", 16]] for n in div})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": cfg.num_warps}).asm["ttgir"]


def cache_ttgir(d, r, cfg, dt):
    # the attention prologue with FP8 K and V caches (16 slots a block), the same views
    names = list(KC.arg_names)
    width = 20 * d
    ints = dict(D=d, DV=d, HALF=r // 2, css0=r, css1=1, max_pos=4096, ps=1, ps3=0, S0=0, S01=0, q_rows=64 * 16, qH=16,
                qxt=width, qxh=d, qxd=1, qyt=width, qyh=d, qyd=1, qws=1, k_rows=64 * 2, kH=2, kxt=width, kxh=d, kxd=1,
                kws=1, kot=0, koh=0, kod=0, vxt=width, vxh=d, vxd=1, kcb=32 * d, kco=2 * d, kch=d, kcd=1, vcb=32 * d,
                vco=2 * d, vch=d, vcd=1, block_size=16, num_slots=4096, sms=132)
    c = dict(HAS_WEIGHT=True, IS_NEOX=True, HAS_TAIL=d > r, MROPE=False, HAS_KOUT=False, K_FP8=1, V_FP8=1,
             K_QMAX=448.0, V_QMAX=448.0, NATIVE_CAST=True, WIDE=False, ROWS=cfg.rows,
             BLOCK_H=triton.next_power_of_2(r // 2), BLOCK_T=triton.next_power_of_2(d - r) if d > r else 1,
             BLOCK_V=triton.next_power_of_2(d), PERSISTENT=False, USE_PDL=False, LO_SUMS=False,
             **P.row_form(d, r, True))
    c.update({n: 1 for n, v in ints.items() if v == 1})
    ptr = dict(CS="*fp32", P="*i64", SM="*i64", KSC="*fp32", VSC="*fp32", KC="*fp8e4nv", VC="*fp8e4nv")
    sig = {n: "constexpr" if n in c else ptr.get(n) or (dt if re.fullmatch(r"[XYWK][QKVO]", n) else
           "fp32" if n in ("eps", "eps_tiny", "w_offset") else "i32") for n in names}
    div = [n for n in names if n not in c and (sig[n].startswith("*") or (n in ints and ints[n] % 16 == 0))]
    src = ASTSource(fn=KC, signature=sig, constexprs={(names.index(n),): v for n, v in c.items() if n in names},
                    attrs={(names.index(n),): [["tt.divisibility", 16]] for n in div})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": cfg.num_warps}).asm["ttgir"]


bad = []
for dtype, dt, cases in ((torch.bfloat16, "*bf16", ((64, 64), (128, 128), (256, 64))),
                         (torch.float32, "*fp32", ((128, 128),))):
    for d, r in cases:
        cfgs = {}
        for n in (40, 2560, 40960, 5_000_000):
            # every head-ordered config the QK dispatcher may pick (any tuned table's pick is one of them)
            for qk in candidate_configs("qk_rms_norm", dtype, d, n):
                if not qk.token_order:
                    cfg = rope_config(qk, "", dtype, d, r, n)[0]
                    cfgs[(cfg.rows, cfg.num_warps)] = cfg  # a persistent grid lays a tile out as a plain one
        seen = {}
        for cfg in cfgs.values():
            seen.setdefault(row_sum_layouts(ttgir(d, r, cfg, dt)), []).append(cfg.name)
            if dt == "*bf16" and d != 64:  # the prologue with FP8 caches: the same layout
                seen.setdefault(row_sum_layouts(cache_ttgir(d, r, cfg, dt)), []).append(cfg.name + " (prologue)")
        if len(seen) != 1:
            bad.append(f"{dt} head_dim {d} rotary {r}: {seen}")
print("\n".join(bad) if bad else "one layout each")
"""


def test_rope_configs_keep_one_row_layout_whatever_the_qk_pick():
    """Batch invariance of ``qk_rms_norm_rope`` (and the prologue, which takes the same configs): every config
    the RoPE dispatch can make from any head-ordered QK candidate (so from any tuned table's pick) at any token
    count sums a row's squares over the same elements per thread, lanes and warps, so a row's bits do not depend
    on the token count. The split form (full rotary) took the QK pick with at least 8 bytes of a rotary half
    per thread: 8 at some token counts and 16 at others (Qwen3-8B's head_dim 128: 4 bf16 over 16 lanes below
    ~5000 rows, 8 over 8 lanes above). The prologue with FP8 caches too: its 8-bit cache stores asked for 16
    codes per thread and took the whole tile into that layout at some configs. Checked on the sm_90 TTGIR,
    without a GPU."""
    r = _compile_script(_ROPE_LAYOUT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "one layout each", r.stdout
