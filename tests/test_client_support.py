"""Helpers shared by the client tests (no tests here).

The conftest's ``tiny_model_dir`` has no tokenizer; phones need one, so
:func:`phone_model_dir` copies the tiny model and adds a character-level tokenizer whose
ids fit the model's 97-token vocabulary. The copy has the same fingerprint (config +
weights) as the original.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from fedlora.adapter import LoraAdapter, LoraPair
from fedlora.protocol import RoundInstructions

ALPHABET = " abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;!?'-/%()"
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")

PRIVATE_TEXTS = (
    "Running late, start dinner without me tonight.",
    "Remember to water the tomato plants on the balcony.",
    "Slept 7.5h, resting hr 52, mood calm, water 6 glasses.",
    "Can you pick up bread and oat milk on the way home?",
    "Meeting with Dana moved to Thursday at 10, bring the budget notes.",
    "Activity: run, distance 5.2 km, time 31 min, avg hr 148.",
    "Grandma called, she wants photos from the lake trip.",
    "Note to self: renew passport before the Lisbon trip in May.",
    "Yoga class at 7pm was great, shoulders feel loose now.",
    "Pay the electricity bill and check the water meter reading.",
    "Kids have a half day on Friday, need pickup at noon.",
    "Booked the dentist for the 14th at 9:30 in the morning.",
)


def write_char_tokenizer(directory: Path) -> None:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in ALPHABET:
        vocab.setdefault(ch, len(vocab))
    assert len(vocab) <= 97
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    fast.save_pretrained(directory)


def phone_model_dir(tiny_model_dir: Path, out: Path) -> Path:
    """A copy of the tiny model with a character tokenizer: a complete phone base."""
    out.mkdir(parents=True, exist_ok=True)
    for f in tiny_model_dir.iterdir():
        if f.is_file():
            shutil.copy2(f, out / f.name)
    write_char_tokenizer(out)
    return out


TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def community_adapter(
    model_dir: Path,
    rank: int,
    *,
    targets: tuple[str, ...] = TARGETS,
    alpha_per_rank: float = 2.0,
    seed: int = 0,
    b_scale: float = 0.0,
) -> LoraAdapter:
    """A community view at ``rank``: random A (PEFT-like scale), B zero (or small noise)."""
    from transformers import AutoModelForCausalLM

    from fedlora.client.peft_bridge import linear_shapes, target_module_paths
    from fedlora.fingerprint import fingerprint_model_dir

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    shapes = linear_shapes(base)
    rng = np.random.default_rng(seed)
    pairs = {}
    for path in target_module_paths(base, targets):
        d_in, d_out = shapes[path]
        a = rng.uniform(-1, 1, (rank, d_in)) / np.sqrt(d_in)
        b = rng.standard_normal((d_out, rank)) * b_scale
        pairs[path] = LoraPair(a.astype(np.float32), b.astype(np.float32))
    return LoraAdapter.create(
        pairs,
        base_fingerprint=fingerprint_model_dir(model_dir).id,
        alpha=alpha_per_rank * rank,
    )


def instructions(rank: int = 4, **overrides: object) -> RoundInstructions:
    fields: dict[str, object] = {
        "round": 1,
        "rank": rank,
        "r_max": 8,
        "local_steps": 6,
        "batch_size": 4,
        "learning_rate": 1e-2,
        "seed": 7,
        "layout_digest": "",
    }
    fields.update(overrides)
    return RoundInstructions(**fields)  # type: ignore[arg-type]
