"""End-to-end decode and prefill of a Hugging Face transformers model: unpatched, with
``qknorm.integrations.transformers.apply_qknorm``, and with Liger-Kernel's
``apply_liger_kernel_to_<arch>`` (norms only).

Usage (GPU; one process per model and variant, so Liger's class-level patches never leak):

    python benchmarks/scripts/hf_decode.py --model qwen3-8b --variant qknorm --out results.jsonl
    python benchmarks/scripts/hf_decode.py --model qwen3-8b --variant qknorm --compile --out results.jsonl
    python benchmarks/scripts/hf_decode.py --model tiny --variant qknorm --device cpu   # smoke test

Models (random bf16 weights from the published configs, no download): ``qwen3-8b``
(Qwen3-8B: 36 layers, hidden 4096, 32/8 heads of 128, per-head q/k norms), ``gemma3-12b``
(Gemma-3-12B text: 48 layers, hidden 3840, 16/8 heads of 256, ``1 + w`` norms, sandwich
norms, per-head q/k norms), ``tiny`` (a 2-layer Qwen3 for smoke tests).

Variants: ``unpatched`` (transformers' own RMSNorm modules), ``qknorm`` (``apply_qknorm``:
every RMSNorm one launch, per-head q/k norms one launch per attention block; under ``--compile``
the norms are left to Inductor, the default ``under_compile="inductor"``), ``qknorm_kernels`` (the same
with ``under_compile="kernels"``: qknorm's custom ops inside the compiled graph), ``liger``
(``apply_liger_kernel_to_qwen3/gemma3(model=..., rms_norm=True)`` with RoPE, SwiGLU/GeGLU
and the loss patches off: norm against norm).

Per batch size B (default 1, 8, 64): a static cache of ``context + steps`` positions, a
prefill of ``context`` (default 512) random tokens per sequence, then ``steps`` greedy
decode steps timed back to back (one synchronize per round, median of ``rounds`` rounds;
every round rewrites the same cache positions). Prefill is timed the same way (median of
three). With ``--compile``: the decode step runs ``torch.compile(model,
mode="reduce-overhead")`` (CUDA graphs); prefill stays eager. Then (eager only)
``--profile-steps`` decode steps with every norm call timed on the host (each norm class's
forward wrapped, and qknorm's fused add; ``perf_counter``): norm calls, host milliseconds inside norms and their share of the
step (eager decode is host-bound, so this is the part the norms cost); and the same steps
under ``torch.profiler`` for the GPU kernel time per step.

Output: one JSON line per (model, variant, mode, B) appended to ``--out``, and a line on
stdout. ``benchmarks/scripts/hf_decode_report.py`` turns the JSONL into a table.
"""
from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import time

import torch

CONFIGS = {
    "qwen3-8b": ("Qwen3Config", dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                                      num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                                      vocab_size=151936, max_position_embeddings=40960, rope_theta=1e6,
                                      rms_norm_eps=1e-6, tie_word_embeddings=False)),
    "gemma3-12b": ("Gemma3TextConfig", dict(hidden_size=3840, intermediate_size=15360, num_hidden_layers=48,
                                            num_attention_heads=16, num_key_value_heads=8, head_dim=256,
                                            vocab_size=262208, max_position_embeddings=131072,
                                            query_pre_attn_scalar=256, sliding_window=1024, rms_norm_eps=1e-6)),
    "tiny": ("Qwen3Config", dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=64, vocab_size=1024,
                                 max_position_embeddings=4096)),
}


def build(name: str, device: str):
    import transformers
    cls, kw = CONFIGS[name]
    cfg = getattr(transformers, cls)(**kw)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    return model.eval(), cfg


def patch(model, variant: str, name: str) -> str:
    if variant == "unpatched":
        return ""
    if variant in ("qknorm", "qknorm_kernels"):
        from qknorm.integrations.transformers import apply_qknorm
        return str(apply_qknorm(model, under_compile="kernels" if variant == "qknorm_kernels" else "inductor"))
    if variant == "liger":
        import liger_kernel.transformers as lk
        fn = lk.apply_liger_kernel_to_gemma3_text if name.startswith("gemma3") else lk.apply_liger_kernel_to_qwen3
        params = inspect.signature(fn).parameters
        off = {k: False for k in ("rope", "swiglu", "geglu", "cross_entropy", "fused_linear_cross_entropy")
               if k in params}
        fn(model=model, rms_norm=True, **off)
        return f"{fn.__name__}(model=..., rms_norm=True, {', '.join(f'{k}=False' for k in off)})"
    raise SystemExit(f"unknown variant {variant!r}")


def cache_kwarg(model) -> str:
    """The keyword this transformers release takes the cache under (``cache`` in 5.x)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def new_cache(model, cfg, batch: int, length: int, device):
    from transformers import StaticCache
    params = inspect.signature(StaticCache.__init__).parameters
    kw = dict(config=cfg, max_cache_len=length)
    if "max_batch_size" in params:  # 4.x
        kw.update(max_batch_size=batch, device=device, dtype=torch.bfloat16)
    return StaticCache(**kw)


def rewind(cache, length: int) -> None:
    """Put the cache back to ``length`` filled positions, in place (static addresses kept).
    transformers 5.x layers count their own positions (``cumulative_length``); 4.x takes
    ``cache_position`` from the call and needs nothing."""
    for layer in getattr(cache, "layers", ()):
        n = getattr(layer, "cumulative_length", None)
        if isinstance(n, torch.Tensor):
            n.fill_(length)
        elif isinstance(n, int):
            layer.cumulative_length = length


def timed(fn, rounds: int, sync) -> float:
    times = []
    for _ in range(rounds):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def norm_timers(model):
    """Time every norm call on the host (``perf_counter``, no sync): each norm class's forward
    wrapped at class level (forward hooks would make qknorm's patched model step aside from its
    fused and paired launches, which must not run for a hooked norm), and qknorm's fused residual
    add counted as a norm call. Returns ``(restore, totals)``; ``totals`` is ``[seconds, calls]``."""
    totals = [0.0, 0]
    undo = []

    def timed(fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[0] += time.perf_counter() - t0
                totals[1] += 1
        return wrapper

    for cls in {type(m) for m in model.modules() if "norm" in type(m).__name__.lower() and not list(m.children())}:
        undo.append((cls, "forward", cls.__dict__.get("forward")))
        cls.forward = timed(cls.forward)
    try:
        import qknorm.integrations.transformers as qt
        undo.append((qt, "_fused_out", qt._fused_out))
        qt._fused_out = timed(qt._fused_out)
    except ImportError:
        pass

    def restore():
        for owner, name, old in undo:
            if old is None:
                delattr(owner, name)
            else:
                setattr(owner, name, old)
    return restore, totals


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(CONFIGS), required=True)
    ap.add_argument("--variant", choices=["unpatched", "qknorm", "qknorm_kernels", "liger"], required=True)
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help='decode under torch.compile(mode="reduce-overhead")')
    ap.add_argument("--profile-steps", type=int, default=4)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=None, help="append one JSON line per batch size here")
    a = ap.parse_args(argv)
    if a.variant == "liger":
        import importlib.util
        if importlib.util.find_spec("liger_kernel") is None:
            ap.error("--variant liger: Liger is not installed (pip install liger-kernel)")
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    model, cfg = build(a.model, a.device)
    report = patch(model, a.variant, a.model)
    ck = cache_kwarg(model)
    step_model = torch.compile(model, mode="reduce-overhead") if a.compile else model
    meta = dict(model=a.model, variant=a.variant, mode="compile" if a.compile else "eager",
                gpu=torch.cuda.get_device_name() if cuda else "cpu", torch=torch.__version__,
                transformers=__import__("transformers").__version__, context=a.context, steps=a.steps,
                command=" ".join([sys.executable.rsplit("/", 1)[-1]] + sys.argv))
    g = torch.Generator().manual_seed(0)
    for b in (int(x) for x in a.batches.split(",")):
        cache = new_cache(model, cfg, b, a.context + a.steps, dev)
        prompt = torch.randint(0, cfg.vocab_size, (b, a.context), generator=g).to(dev)
        pos0 = torch.arange(a.context, device=dev)
        with torch.inference_mode():
            def prefill():
                rewind(cache, 0)
                return model(input_ids=prompt, cache_position=pos0, use_cache=True, logits_to_keep=1,
                             **{ck: cache}).logits
            logits = prefill()
            t_prefill = timed(prefill, 3, sync)
            tok0 = logits[:, -1:].argmax(-1)
            positions = [torch.tensor([a.context + s], device=dev) for s in range(a.steps)]

            def decode(m=step_model):
                rewind(cache, a.context)
                tok = tok0
                for p in positions:
                    out = m(input_ids=tok, cache_position=p, use_cache=True, **{ck: cache}).logits
                    tok = out[:, -1:].argmax(-1)
                return tok

            for _ in range(3 if a.compile else 1):  # compile / capture / warm up
                decode()
            t_decode = timed(decode, a.rounds, sync) / a.steps
            row = dict(meta, batch=b, prefill_ms=t_prefill * 1e3, decode_step_ms=t_decode * 1e3,
                       decode_tok_s=b / t_decode, prefill_tok_s=b * a.context / t_prefill)
            if a.profile_steps and not a.compile:
                restore, totals = norm_timers(model)
                rewind(cache, a.context)
                sync()
                t0 = time.perf_counter()
                for p in positions[:a.profile_steps]:
                    model(input_ids=tok0, cache_position=p, use_cache=True, **{ck: cache})
                sync()
                step = (time.perf_counter() - t0) / a.profile_steps
                restore()
                row.update(norm_calls_per_step=totals[1] / a.profile_steps,
                           norm_host_ms_per_step=totals[0] * 1e3 / a.profile_steps,
                           norm_host_share=totals[0] / a.profile_steps / step)
                if cuda:
                    rewind(cache, a.context)
                    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                        for p in positions[:a.profile_steps]:
                            model(input_ids=tok0, cache_position=p, use_cache=True, **{ck: cache})
                        sync()
                    kern = sum(e.self_device_time_total for e in prof.key_averages()
                               if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA)
                    row.update(gpu_kernel_ms_per_step=kern / 1e3 / a.profile_steps)
        line = json.dumps(row)
        print(line, flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(line + "\n")
        cache = None
        if cuda:
            torch.cuda.empty_cache()
    if report and a.out:
        with open(a.out.rsplit(".", 1)[0] + f".{a.model}.{a.variant}.report.txt", "w") as f:
            f.write(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
