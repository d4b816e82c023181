"""Benchmark: N simulated phones' local rounds one by one on PEFT vs vectorized (K at once).

Same total work on both sides: N phones, each with its own synthetic private texts (the
default federation's clients), its own seed, rank (cycling 4 / 8 / 16) and start adapter,
``steps`` AdamW steps of ``batch`` examples, then held-out evaluation.

A *round* is what ``client/round_training.py`` does for each phone, minus privatization:

* **one by one** — deep-copy the frozen base and ``attach_adapter`` (PEFT) — *setup* —,
  held-out ``evaluate_loss``, ``train_lora``, held-out ``evaluate_loss`` again,
  ``extract_adapter`` (setup);
* **vectorized K** — :class:`fedlora.simulations.vectorized.VectorizedLoraTrainer` with
  ``chunk_size = K``: ``evaluate`` all start views, ``train`` all phones, ``evaluate`` all
  results (packing and unpacking included).

Reported per part (setup / eval / train) and for the round, in wall time and in this
process's CPU time (on a shared machine, wall time swings with other people's jobs; CPU time
of a single-threaded process much less).

Two bases: the embedded default (Llama, hidden 128, 4 layers, vocab 2048 — the per-op-
overhead regime) and a random synthetic Llama with hidden 512 (the GEMM-bound regime).
Methods are timed interleaved, in rotating order, ``repeats`` times, and the median is kept:
the machine is shared and noisy. torch threads default to 1 (``--threads``), as a phone gets
one core under the Flower simulation engine on these 2-core machines.

Run:  python benchmarks/vectorized_phones.py          (≈ 15 min on an idle 2-core machine; a
                                                    table, then one JSON line)
      python benchmarks/vectorized_phones.py --quick  (a smoke run)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Reuse the checkout's built default model (as the tests do) unless the caller chose a home.
os.environ.setdefault("FEDLORA_HOME", str(Path(__file__).resolve().parents[1] / ".fedlora-home"))

import numpy as np
import torch

from fedlora.adapter import BaseModelSpec, LoraAdapter, LoraPair
from fedlora.client.model_loading import load_base
from fedlora.client.peft_bridge import (
    attach_adapter,
    extract_adapter,
    linear_shapes,
    target_module_paths,
)
from fedlora.client.text_batches import TokenizedTexts, evaluate_loss, tokenize_texts
from fedlora.client.trainer import TrainConfig, train_lora
from fedlora.data.federated import build_synthetic_federation
from fedlora.simulations.vectorized import PhoneJob, VectorizedLoraTrainer

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
RANKS = (4, 8, 16)
ALPHA_PER_RANK = 2.0


@dataclass
class Workload:
    name: str
    base: torch.nn.Module
    spec: BaseModelSpec
    jobs: list[PhoneJob]
    heldouts: list[TokenizedTexts]


def start_adapter(spec: BaseModelSpec, rank: int, rng: np.random.Generator) -> LoraAdapter:
    pairs = {}
    for path, (d_in, d_out) in spec.linear_shapes.items():
        if path.rsplit(".", 1)[-1] in TARGETS:
            a = rng.normal(0, d_in**-0.5, (rank, d_in)).astype(np.float32)
            b = rng.normal(0, 0.01, (d_out, rank)).astype(np.float32)
            pairs[path] = LoraPair(a, b)
    return LoraAdapter.create(pairs, base_fingerprint=spec.fingerprint, alpha=ALPHA_PER_RANK * rank)


def phone_data(tokenizer: Any, n: int, max_len: int) -> tuple[list[Any], list[Any]]:
    fed = build_synthetic_federation(num_clients=n, examples_per_client=40, seed=0)
    clients = [fed.clients[c] for c in sorted(fed.clients)][:n]
    train = [tokenize_texts(tokenizer, c.train, max_len) for c in clients]
    held = [tokenize_texts(tokenizer, c.heldout or c.train, max_len) for c in clients]
    return train, held


def workload(
    name: str, base: torch.nn.Module, tok: Any, n: int, steps: int, batch: int, max_len: int
) -> Workload:
    for p in base.parameters():
        p.requires_grad_(False)
    base.eval()
    spec = BaseModelSpec(fingerprint=name, linear_shapes=linear_shapes(base))
    target_module_paths(base, TARGETS)  # fails loudly if the base has no such layers
    train, held = phone_data(tok, n, max_len)
    rng = np.random.default_rng(0)
    jobs = [
        PhoneJob(
            start_adapter(spec, RANKS[k % len(RANKS)], rng),
            train[k],
            TrainConfig(steps=steps, batch_size=batch, learning_rate=3e-3, seed=k),
        )
        for k in range(n)
    ]
    return Workload(name, base, spec, jobs, held)


def big_llama(vocab: int, hidden: int, layers: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(hidden * 8 / 3) // 32 * 32,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg)


# ---------------------------------------------------------------------------- the methods
class Clock:
    """Wall and process-CPU seconds per named part; CPU time is what this process computed,
    so it is far less sensitive than wall time to other jobs on a shared machine."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._part = ""
        self._t = (0.0, 0.0)

    def start(self, part: str) -> None:
        self._part, self._t = part, (time.perf_counter(), time.process_time())

    def stop(self) -> None:
        w, c = time.perf_counter() - self._t[0], time.process_time() - self._t[1]
        self.wall[self._part] = self.wall.get(self._part, 0.0) + w
        self.cpu[self._part] = self.cpu.get(self._part, 0.0) + c


def one_by_one_round(w: Workload) -> tuple[Clock, list[LoraAdapter]]:
    """A simulated round phone after phone, as ``client/round_training.py`` does it:
    copy the base and attach the view (setup), held-out loss before, train, held-out loss
    after, read the trained adapter back (setup)."""
    clock = Clock()
    out = []
    for job, held in zip(w.jobs, w.heldouts, strict=True):
        clock.start("setup")
        model = attach_adapter(copy.deepcopy(w.base), job.adapter, w.spec)
        clock.stop()
        clock.start("eval")
        evaluate_loss(model, held)
        clock.stop()
        clock.start("train")
        train_lora(model, job.data, job.config)
        clock.stop()
        clock.start("eval")
        evaluate_loss(model, held)
        clock.stop()
        clock.start("setup")
        out.append(extract_adapter(model, base_fingerprint=w.spec.fingerprint))
        clock.stop()
    return clock, out


def vectorized_round(w: Workload, k: int, tokens_per_pass: int) -> tuple[Clock, list[LoraAdapter]]:
    """The same round vectorized: evaluate all views, train all phones, evaluate all results."""
    clock = Clock()
    clock.start("setup")
    trainer = VectorizedLoraTrainer(w.base, chunk_size=k, tokens_per_pass=tokens_per_pass)
    clock.stop()
    clock.start("eval")
    trainer.evaluate([j.adapter for j in w.jobs], w.heldouts)
    clock.stop()
    clock.start("train")
    trained = [r.adapter for r in trainer.train(w.jobs)]
    clock.stop()
    clock.start("eval")
    trainer.evaluate(trained, w.heldouts)
    clock.stop()
    return clock, trained


def max_adapter_diff(xs: list[LoraAdapter], ys: list[LoraAdapter]) -> float:
    return max(
        float(max(np.abs(p.A - q.A).max(), np.abs(p.B - q.B).max()))
        for x, y in zip(xs, ys, strict=True)
        for (_, p), (_, q) in zip(x, y, strict=True)
    )


PARTS = ("setup", "eval", "train")


def measure(w: Workload, ks: list[int], repeats: int, tokens_per_pass: int) -> dict[str, Any]:
    """Interleaved rounds (median of ``repeats``) for one workload, one by one and per K."""
    clocks: dict[str, list[Clock]] = {"obo": [], **{f"vec{k}": [] for k in ks}}
    adapters: dict[str, list[LoraAdapter]] = {}

    def run(name: str) -> None:
        if name == "obo":
            clock, adapters[name] = one_by_one_round(w)
        else:
            clock, adapters[name] = vectorized_round(w, int(name[3:]), tokens_per_pass)
        clocks[name].append(clock)

    names = list(clocks)
    vectorized_round(w, ks[0], tokens_per_pass)  # warm-up (lazy imports, allocator)
    for r in range(repeats):  # rotate the order: no method always runs first or last
        for name in names[r % len(names) :] + names[: r % len(names)]:
            run(name)

    def med(name: str, kind: str, part: str | None = None) -> float:
        parts = PARTS if part is None else (part,)
        return statistics.median(
            sum(getattr(c, kind).get(p, 0.0) for p in parts) for c in clocks[name]
        )

    obo = {f"{part}_s": med("obo", "wall", part) for part in PARTS}
    return {
        "phones": len(w.jobs),
        "steps": w.jobs[0].config.steps,
        "batch": w.jobs[0].config.batch_size,
        "tokens_per_pass": tokens_per_pass,
        "one_by_one": {"round_s": med("obo", "wall"), "round_cpu_s": med("obo", "cpu"), **obo},
        "per_k": {
            k: {
                "round_s": med(f"vec{k}", "wall"),
                "round_cpu_s": med(f"vec{k}", "cpu"),
                "train_s": med(f"vec{k}", "wall", "train"),
                "eval_s": med(f"vec{k}", "wall", "eval"),
                "speedup": med("obo", "wall") / med(f"vec{k}", "wall"),
                "speedup_cpu": med("obo", "cpu") / med(f"vec{k}", "cpu"),
                "train_speedup": med("obo", "wall", "train") / med(f"vec{k}", "wall", "train"),
                "train_speedup_cpu": med("obo", "cpu", "train") / med(f"vec{k}", "cpu", "train"),
                "eval_speedup": med("obo", "wall", "eval") / med(f"vec{k}", "wall", "eval"),
                "max_abs_diff_vs_peft": max_adapter_diff(adapters[f"vec{k}"], adapters["obo"]),
            }
            for k in ks
        },
        "raw_wall": {n: [c.wall for c in cs] for n, cs in clocks.items()},
        "raw_cpu": {n: [c.cpu for c in cs] for n, cs in clocks.items()},
    }


def print_table(name: str, res: dict[str, Any]) -> None:
    o = res["one_by_one"]
    print(
        f"\n{name}: {res['phones']} phones × {res['steps']} steps × batch {res['batch']}, "
        f"held-out loss before and after"
    )
    print(
        f"one by one: round {o['round_s']:.2f} s (cpu {o['round_cpu_s']:.2f}) = setup "
        f"{o['setup_s']:.2f} + eval {o['eval_s']:.2f} + train {o['train_s']:.2f}"
    )
    print(
        f"{'K':>4}{'round s':>9}{'speedup':>9}{'cpu x':>7}{'train s':>9}{'train x':>9}"
        f"{'cpu x':>7}{'eval s':>8}{'eval x':>8}  max |Δ| vs PEFT"
    )
    for k, r in res["per_k"].items():
        print(
            f"{k:>4}{r['round_s']:>9.2f}{r['speedup']:>9.2f}{r['speedup_cpu']:>7.2f}"
            f"{r['train_s']:>9.2f}{r['train_speedup']:>9.2f}{r['train_speedup_cpu']:>7.2f}"
            f"{r['eval_s']:>8.2f}{r['eval_speedup']:>8.2f}  {r['max_abs_diff_vs_peft']:.1e}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--phones", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ks", default="8,16,32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--big-phones", type=int, default=16)
    ap.add_argument("--big-steps", type=int, default=3)
    ap.add_argument("--big-hidden", type=int, default=512)
    ap.add_argument("--max-len", type=int, default=96)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens-per-pass", type=int, default=1024)
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = ap.parse_args()
    if args.quick:
        args.phones, args.steps, args.repeats, args.ks = 8, 3, 1, "4,8"
        args.big_phones, args.big_steps = 4, 2
    torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.ks.split(",")]
    loaded = load_base("default", "none")
    tiny = workload(
        "default", loaded.model, loaded.tokenizer, args.phones, args.steps, args.batch, args.max_len
    )
    t0 = time.perf_counter()
    small = measure(tiny, ks, args.repeats, args.tokens_per_pass)
    print_table("default base (hidden 128, 4 layers)", small)
    big_base = big_llama(len(loaded.tokenizer), args.big_hidden, 4)
    big = workload(
        f"llama-h{args.big_hidden}",
        big_base,
        loaded.tokenizer,
        args.big_phones,
        args.big_steps,
        args.batch,
        args.max_len,
    )
    big_ks = [k for k in ks if k <= args.big_phones] or [args.big_phones]
    large = measure(big, big_ks, args.repeats, args.tokens_per_pass)
    print_table(f"synthetic Llama (hidden {args.big_hidden}, 4 layers)", large)
    best_k = max(small["per_k"], key=lambda k: small["per_k"][k]["speedup"])
    strip = ("raw_wall", "raw_cpu")
    summary = {
        "benchmark": "vectorized_phones",
        "threads": args.threads,
        "vectorized_speedup": small["per_k"][best_k]["speedup"],
        "vectorized_speedup_cpu": small["per_k"][best_k]["speedup_cpu"],
        "best_k": best_k,
        "default_base": {k: v for k, v in small.items() if k not in strip},
        "big_base": {k: v for k, v in large.items() if k not in strip},
        "raw": {
            "default_base": {k: small[k] for k in strip},
            "big_base": {k: large[k] for k in strip},
        },
        "load_average": os.getloadavg(),
        "seconds": time.perf_counter() - t0,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
