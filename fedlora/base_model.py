"""The embedded default base model, and resolving any base-model source to a directory.

No model hub is needed to try fedlora: :func:`build_default_model` makes a small
Llama-architecture causal LM and its tokenizer entirely offline and deterministically
(seeded), and briefly pretrains it on generic synthetic text so that LoRA has real structure
to adapt. The result is an ordinary Hugging Face directory (``AutoModelForCausalLM`` and
``AutoTokenizer`` load it) cached under ``$FEDLORA_HOME/models``; it is built lazily, once,
under a file lock, into a temporary directory that is renamed into place only when complete.

Determinism: same seed, torch version and CPU kind ⇒ same bytes (the build pins its thread
count and asks torch for deterministic algorithms). Across different CPUs floating-point
results may differ in the last bits; the base fingerprint then differs too, and adapters
refuse to load across them. In a deployment, ship the built directory to phones rather than
rebuilding it on each.

torch, transformers and tokenizers are imported inside the functions that need them, so this
module can be imported by the torch-free server.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedlora.errors import ModelSourceError
from fedlora.home import models_dir

DEFAULT_NAME = "default"
BUILD_INFO = "fedlora_base.json"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BaseBuildConfig:
    """Shape and training budget of the embedded default model (version-pinned)."""

    name: str = "fedlora-tiny-llama-v1"
    seed: int = 1234
    vocab_size: int = 2048
    hidden_size: int = 128
    intermediate_size: int = 352
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4
    max_positions: int = 256
    corpus_docs: int = 16000
    heldout_docs: int = 600
    seq_len: int = 128
    batch_size: int = 16
    steps: int = 300
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    threads: int = 2


@dataclass(frozen=True)
class BaseBuildReport:
    directory: str
    config: dict[str, Any]
    heldout_loss: float
    random_init_loss: float
    seconds: float
    fingerprint: str


def default_model_dir() -> Path:
    return models_dir() / BaseBuildConfig().name


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def is_built(directory: Path) -> bool:
    return (directory / BUILD_INFO).exists() and (directory / "config.json").exists()


def resolve_model(source: str = DEFAULT_NAME, progress: Progress | None = None) -> Path:
    """A local directory for ``source``: 'default' (built on first use), a path, or a hub id."""
    if source == DEFAULT_NAME:
        directory = default_model_dir()
        if not is_built(directory):
            with _locked(directory.with_name(directory.name + ".lock")):
                if not is_built(directory):
                    build_default_model(directory, progress=progress)
        return directory
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelSourceError(f"{path} exists but has no config.json: not a model directory")
        return path
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise ModelSourceError(f"model directory {source} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source))
    except Exception as exc:  # network errors, unknown repo, offline mode
        raise ModelSourceError(
            f"could not fetch {source!r} from the model hub ({type(exc).__name__}: {exc}); "
            "pass a local model directory instead, or 'default' for the embedded model"
        ) from exc


# ---------------------------------------------------------------------------- build
def _train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=4096,
    )


def _pack(tokenizer: Any, texts: list[str], seq_len: int) -> Any:
    """Concatenate ``<s> text </s>`` streams and cut them into equal training rows."""
    import torch

    ids: list[int] = []
    for enc in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend([tokenizer.bos_token_id, *enc, tokenizer.eos_token_id])
    rows = len(ids) // seq_len
    return torch.tensor(ids[: rows * seq_len], dtype=torch.long).reshape(rows, seq_len)


def mean_loss(model: Any, rows: Any, batch_size: int = 64) -> float:
    """Mean next-token cross-entropy over packed rows."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, rows.shape[0], batch_size):
            batch = rows[i : i + batch_size]
            out = model(input_ids=batch, labels=batch)
            n = batch.shape[0]
            total += float(out.loss) * n
            count += n
    return total / max(count, 1)


def build_default_model(
    out_dir: str | Path | None = None,
    config: BaseBuildConfig | None = None,
    progress: Progress | None = None,
) -> BaseBuildReport:
    """Build, pretrain and save the default base model; returns losses for the record."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from fedlora.data.synthetic import generate_generic_corpus
    from fedlora.fingerprint import fingerprint_model_dir

    cfg = config or BaseBuildConfig()
    say = progress or (lambda _msg: None)
    final = Path(out_dir) if out_dir is not None else default_model_dir()
    started = time.perf_counter()
    threads_before = torch.get_num_threads()
    det_before = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    try:
        say(f"generating {cfg.corpus_docs + cfg.heldout_docs} generic documents (seed {cfg.seed})")
        docs = generate_generic_corpus(cfg.corpus_docs + cfg.heldout_docs, seed=cfg.seed)
        train_docs, heldout_docs = docs[: cfg.corpus_docs], docs[cfg.corpus_docs :]
        say(f"training a byte-level BPE tokenizer (vocab {cfg.vocab_size})")
        tokenizer = _train_tokenizer(train_docs, cfg.vocab_size)
        train_rows = _pack(tokenizer, train_docs, cfg.seq_len)
        heldout_rows = _pack(tokenizer, heldout_docs, cfg.seq_len)

        torch.manual_seed(cfg.seed)
        model_cfg = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_kv_heads,
            max_position_embeddings=cfg.max_positions,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
        )
        model = LlamaForCausalLM(model_cfg)
        random_loss = mean_loss(model, heldout_rows)
        n_params = sum(p.numel() for p in model.parameters())
        say(
            f"model: {n_params / 1e6:.2f}M parameters; {train_rows.shape[0]} training rows of "
            f"{cfg.seq_len} tokens; random-init held-out loss {random_loss:.3f}"
        )

        opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.01)

        def lr_at(step: int) -> float:
            if step < cfg.warmup_steps:
                return (step + 1) / cfg.warmup_steps
            frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
        gen = torch.Generator().manual_seed(cfg.seed)
        model.train()
        order = torch.randperm(train_rows.shape[0], generator=gen)
        pos = 0
        for step in range(cfg.steps):
            if pos + cfg.batch_size > order.shape[0]:
                order = torch.randperm(train_rows.shape[0], generator=gen)
                pos = 0
            batch = train_rows[order[pos : pos + cfg.batch_size]]
            pos += cfg.batch_size
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if (step + 1) % max(1, cfg.steps // 10) == 0 or step == 0:
                say(f"pretraining step {step + 1}/{cfg.steps}  loss {loss.item():.3f}")
        heldout_loss = mean_loss(model, heldout_rows)
        say(
            f"held-out generic loss: built base {heldout_loss:.3f} vs random init {random_loss:.3f}"
        )

        tmp = final.with_name(f".{final.name}.building-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        fp = fingerprint_model_dir(tmp)
        report = BaseBuildReport(
            directory=str(final),
            config=asdict(cfg),
            heldout_loss=heldout_loss,
            random_init_loss=random_loss,
            seconds=time.perf_counter() - started,
            fingerprint=fp.id,
        )
        (tmp / BUILD_INFO).write_text(json.dumps(asdict(report), indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        say(f"saved to {final} in {report.seconds:.0f}s (fingerprint {fp.id})")
        return report
    finally:
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(det_before)


def read_build_report(directory: str | Path) -> BaseBuildReport | None:
    path = Path(directory) / BUILD_INFO
    if not path.exists():
        return None
    return BaseBuildReport(**json.loads(path.read_text()))
