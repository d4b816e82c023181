"""One phone's LoRA training step on the default model: time and memory per base format.

For each base format — ``none`` (fp32), ``bf16``, ``int8`` (LLM.int8), ``nf4`` (4-bit,
double-quantized) — one full optimizer step (forward, backward, AdamW on LoRA rank 8 over
q/k/v/o) on the same batch of a synthetic phone's private texts. Repetitions are
interleaved (round-robin, rotating the order) so that a noisy, shared machine slows every
format alike; the median is reported. Also measured:

* peak memory of a step (weights + the step's resident working set, see memory_meter);
* bytes of the base's weights in memory;
* ``nf4-nodq``: nf4 without double quantization (no absmax dequantization per call);
* ``nf4-cached``: nf4 with each 4-bit weight dequantized once per step and kept in bf16 for
  the step (forward *and* backward reuse it) — what it buys in time and costs in memory;
* a profile of the nf4 step's top ops (``--profile``).

Timing and memory are measured in separate passes (the meter's own work stays out of the
timings). One torch thread by default: on a shared 2-core machine two OpenMP threads
preempt each other and single steps vary 20× (measured), one thread is stable.

Prints a table, then one JSON line with ``nf4_step_over_bf16`` (target ≤ 1.2; the median
of per-pass ratios, each pass timing every format back to back, so both sides of a ratio saw
the same load — plus the ratio of medians, of lower quartiles and of minima) and
``nf4_bytes_over_fp32`` (target ≤ 0.25) among others.

    python benchmarks/client_step.py [--reps 15] [--batch 8] [--seq 96] [--profile]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from peft import LoraConfig, get_peft_model

from fedlora.client.memory_meter import MB, PeakMemoryMeter, pin_mmap_threshold
from fedlora.client.model_loading import load_base
from fedlora.client.text_batches import collate, summed_token_loss, tokenize_texts
from fedlora.data.federated import build_synthetic_federation

FORMATS = ("none", "bf16", "int8", "nf4")


@contextmanager
def dequantize_once_per_step(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, every 4-bit linear layer dequantizes its weight on first use and
    reuses that bf16 copy for the rest of the step (forward and backward)."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

    patched: list[tuple[Any, Any]] = []
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):  # the base layer, not PEFT's wrapper
            continue
        cache: dict[str, torch.Tensor] = {}

        def forward(x: torch.Tensor, m: Any = module, c: dict[str, torch.Tensor] = cache) -> Any:
            w = c.get("w")
            if w is None:
                dtype = getattr(m, "compute_dtype", None) or m.weight.quant_state.dtype
                w = bnbf.dequantize_4bit(m.weight.data, m.weight.quant_state).to(dtype)
                c["w"] = w
            return torch.nn.functional.linear(x.to(w.dtype), w, m.bias).to(x.dtype)

        patched.append((module, module.forward))
        module.forward = forward
    try:
        yield
    finally:
        for module, original in patched:
            module.forward = original


def make_step(model: Any, batch: dict[str, torch.Tensor], cached: bool) -> Callable[[], float]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    n_tokens = int((batch["labels"][:, 1:] != -100).sum())

    def step() -> float:
        ctx = dequantize_once_per_step(model) if cached else _nothing()
        with ctx:
            loss = summed_token_loss(model, batch) / n_tokens
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def build(fmt: str, batch_size: int, seq: int) -> tuple[Callable[[], float], int, Any]:
    quant = "nf4" if fmt.startswith("nf4") else fmt
    base = load_base("default", quant, device="cpu", double_quant=fmt != "nf4-nodq")
    model = get_peft_model(
        base.model,
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    )
    model.train()
    fed = build_synthetic_federation(4, 60, seed=0)
    texts = [t for c in fed.clients.values() for t in c.train][: batch_size * 4]
    tok = tokenize_texts(base.tokenizer, texts, seq)
    batch = collate(tok, list(range(batch_size)))
    return make_step(model, batch, cached=fmt == "nf4-cached"), base.weight_bytes, model


def profile_nf4(step: Callable[[], float]) -> list[tuple[str, float]]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) or 1.0
    return [(e.key, round(100.0 * e.self_cpu_time_total / total, 1)) for e in rows]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=96)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: stable on a shared machine; 0: torch's default)",
    )
    ap.add_argument("--profile", action="store_true", help="print the nf4 step's top ops")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pin_mmap_threshold()
    formats = [*FORMATS, "nf4-nodq", "nf4-cached"]
    steps: dict[str, Callable[[], float]] = {}
    weights: dict[str, int] = {}
    for fmt in formats:
        t0 = time.perf_counter()
        steps[fmt], weights[fmt], _ = build(fmt, args.batch, args.seq)
        steps[fmt]()  # warm-up (allocations, bitsandbytes kernels, AdamW state)
        print(f"[{fmt}] ready in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    times: dict[str, list[float]] = {f: [] for f in formats}
    peaks: dict[str, list[float]] = {f: [] for f in formats}
    for rep in range(args.reps):
        order = formats[rep % len(formats) :] + formats[: rep % len(formats)]
        for fmt in order:  # timing: nothing else in the process
            t0 = time.perf_counter()
            steps[fmt]()
            times[fmt].append(time.perf_counter() - t0)
        print(f"rep {rep + 1}/{args.reps}", file=sys.stderr, flush=True)
    for _ in range(3):  # memory: separate passes, so the meter never sits inside a timing
        for fmt in formats:
            with PeakMemoryMeter("cpu") as meter:
                steps[fmt]()
            peaks[fmt].append((weights[fmt] + meter.peak_increase_bytes) / MB)
    med = {f: statistics.median(times[f]) for f in formats}
    low = {f: min(times[f]) for f in formats}
    q1 = {f: statistics.quantiles(times[f], n=4)[0] for f in formats}

    def paired(a: str, b: str) -> float:
        """Median over repetitions of t_a / t_b measured in the same round-robin pass:
        both saw (nearly) the same machine load."""
        return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

    peak = {f: statistics.median(peaks[f]) for f in formats}
    print(f"{'base':<11} {'step ms (median)':>17} {'min ms':>8} {'peak MB':>8} {'weights MB':>11}")
    for f in formats:
        print(
            f"{f:<11} {1000 * med[f]:>17.1f} {1000 * low[f]:>8.1f} {peak[f]:>8.1f} "
            f"{weights[f] / MB:>11.2f}"
        )
    result: dict[str, Any] = {
        "reps": args.reps,
        "batch": args.batch,
        "seq": args.seq,
        "threads": torch.get_num_threads(),
        "step_ms": {f: round(1000 * med[f], 2) for f in formats},
        "step_ms_min": {f: round(1000 * low[f], 2) for f in formats},
        "peak_mb": {f: round(peak[f], 2) for f in formats},
        "weight_bytes": weights,
        # headline: paired median (robust to load that drifts during the run)
        "nf4_step_over_bf16": round(paired("nf4", "bf16"), 3),
        "nf4_step_over_bf16_median": round(med["nf4"] / med["bf16"], 3),
        "nf4_step_over_bf16_q1": round(q1["nf4"] / q1["bf16"], 3),
        "nf4_step_over_bf16_min": round(low["nf4"] / low["bf16"], 3),
        "nf4_cached_step_over_bf16": round(paired("nf4-cached", "bf16"), 3),
        "nf4_nodq_step_over_bf16": round(paired("nf4-nodq", "bf16"), 3),
        "int8_step_over_bf16": round(paired("int8", "bf16"), 3),
        "bf16_step_over_fp32": round(paired("bf16", "none"), 3),
        "nf4_bytes_over_fp32": round(weights["nf4"] / weights["none"], 4),
        "nf4_nodq_bytes_over_fp32": round(weights["nf4-nodq"] / weights["none"], 4),
        "int8_bytes_over_fp32": round(weights["int8"] / weights["none"], 4),
    }
    if args.profile:
        result["nf4_top_ops_pct"] = profile_nf4(steps["nf4"])
        for name, pct in result["nf4_top_ops_pct"]:
            print(f"  nf4 op {name:<45} {pct:5.1f}%")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
