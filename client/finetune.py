"""One phone fine-tuning locally: the smallest end-to-end use of fedlora.

Load the frozen base, take one user's private examples, train LoRA for a few steps, measure
held-out loss before and after, and save the adapter both as a fedlora blob and as a PEFT
directory. This is what the federated client does inside a round, minus the federation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from peft import LoraConfig, get_peft_model

from fedlora.adapter_io import save_adapter, save_peft_dir
from fedlora.client.model_loading import load_base
from fedlora.client.peft_bridge import extract_adapter, target_module_paths
from fedlora.client.text_batches import evaluate_loss, tokenize_texts
from fedlora.client.trainer import TrainConfig, train_lora
from fedlora.config import FedloraSettings
from fedlora.data.federated import ClientData, FederatedDataset
from fedlora.data.from_settings import load_federation


@dataclass(frozen=True)
class FinetuneResult:
    client_id: str
    train_examples: int
    heldout_examples: int
    steps: int
    heldout_loss_before: float
    heldout_loss_after: float
    seconds: float
    adapter_file: str
    peft_dir: str
    base_fingerprint: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def pick_client(fed: FederatedDataset, client: str | int) -> ClientData:
    ids = sorted(fed.clients)
    if isinstance(client, int) or client.isdigit():
        idx = int(client)
        if not 0 <= idx < len(ids):
            raise ValueError(f"client index {idx} out of range: there are {len(ids)} clients")
        return fed.clients[ids[idx]]
    if client not in fed.clients:
        raise ValueError(f"unknown client {client!r}; known clients start with {ids[:3]}")
    return fed.clients[client]


def finetune_one_phone(
    settings: FedloraSettings,
    client: str | int,
    out_dir: Path,
    progress: Callable[[str], None] | None = None,
) -> FinetuneResult:
    say = progress or (lambda _m: None)
    started = time.perf_counter()
    base = load_base(settings.model.base, settings.model.quantization)
    say(f"base model {base.directory} (fingerprint {base.fingerprint})")
    phone = pick_client(load_federation(settings.data), client)
    lora = settings.lora
    targets = target_module_paths(base.model, lora.target_modules)
    model = get_peft_model(
        base.model,
        LoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=targets,
            bias="none",
            task_type="CAUSAL_LM",
        ),
    )
    max_len = settings.model.max_seq_len
    train = tokenize_texts(base.tokenizer, phone.train, max_len)
    heldout = tokenize_texts(base.tokenizer, phone.heldout, max_len)
    before = evaluate_loss(model, heldout)
    say(
        f"phone {phone.client_id}: {len(train)} private training examples, "
        f"{len(heldout)} held out; held-out loss before {before:.4f}"
    )
    c = settings.client
    cfg = TrainConfig(
        steps=c.local_steps,
        batch_size=c.batch_size,
        micro_batch_size=c.micro_batch_size,
        learning_rate=c.learning_rate,
        weight_decay=c.weight_decay,
        seed=c.seed,
    )
    every = max(1, cfg.steps // 5)
    train_lora(
        model,
        train,
        cfg,
        on_step=lambda s, loss: (
            say(f"step {s}/{cfg.steps} loss {loss:.4f}") if s % every == 0 else None
        ),
    )
    after = evaluate_loss(model, heldout)
    say(f"held-out loss after {after:.4f} ({after - before:+.4f})")
    adapter = extract_adapter(
        model, base_fingerprint=base.fingerprint, producer=f"phone:{phone.client_id}"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    blob = save_adapter(adapter, out_dir / "adapter.safetensors")
    peft_dir = save_peft_dir(adapter, out_dir / "peft", base_model_name_or_path=str(base.directory))
    return FinetuneResult(
        client_id=phone.client_id,
        train_examples=len(train),
        heldout_examples=len(heldout),
        steps=cfg.steps,
        heldout_loss_before=before,
        heldout_loss_after=after,
        seconds=time.perf_counter() - started,
        adapter_file=str(blob),
        peft_dir=str(peft_dir),
        base_fingerprint=base.fingerprint,
    )
