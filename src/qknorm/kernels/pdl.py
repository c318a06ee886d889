"""Programmatic dependent launch (Hopper+, Triton >= 3.4), behind a constexpr flag.

With ``launch_pdl=True`` the next kernel in the stream may start its launch while this
one runs; ``pdl_wait`` blocks until the previous grid's writes are visible. Both are
no-ops when the flag is off, so the interpreter and pre-Hopper GPUs never see the
inline PTX they compile to.
"""
import triton
import triton.language as tl

try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
    HAVE_GDC = True
except ImportError:  # older Triton: PDL stays off
    gdc_launch_dependents = gdc_wait = None
    HAVE_GDC = False


@triton.jit
def pdl_wait(USE_PDL: tl.constexpr):
    if USE_PDL:
        gdc_wait()


@triton.jit
def pdl_launch_dependents(USE_PDL: tl.constexpr):
    if USE_PDL:
        gdc_launch_dependents()
