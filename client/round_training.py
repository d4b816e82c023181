"""One round of local training behind the ClientApp, on plain PEFT.

The frozen base is loaded once per process (explicit cache) and copied per round, so phones
simulated in the same worker share one load; the community view is attached with validation
(wrong base fingerprint or shapes → refused before anything trains); the delta is the
trained adapter minus the received one, at the phone's rank.
"""

from __future__ import annotations

import copy
import time
from functools import lru_cache

from flwr.app import Context

from fedlora.adapter import LoraAdapter
from fedlora.client.app import RoundOutcome
from fedlora.client.model_loading import LoadedBase, load_base
from fedlora.client.peft_bridge import attach_adapter, extract_adapter
from fedlora.client.text_batches import evaluate_loss, tokenize_texts
from fedlora.client.trainer import TrainConfig, train_lora
from fedlora.config import FedloraSettings
from fedlora.data.federated import ClientData
from fedlora.protocol import PhoneReport, RoundInstructions


@lru_cache(maxsize=2)
def cached_base(source: str, quantization: str) -> LoadedBase:
    return load_base(source, quantization)


def train_round(
    instr: RoundInstructions,
    community: LoraAdapter,
    data: ClientData,
    settings: FedloraSettings,
    context: Context,
) -> RoundOutcome:
    started = time.perf_counter()
    if not data.train:
        return RoundOutcome(None, PhoneReport(status="no_data", reason="no training examples"))
    base = cached_base(settings.model.base, settings.model.quantization)
    model = attach_adapter(copy.deepcopy(base.model), community, base.spec)
    max_len = settings.model.max_seq_len
    train = tokenize_texts(base.tokenizer, data.train, max_len)
    heldout = tokenize_texts(base.tokenizer, data.heldout or data.train, max_len)
    before = evaluate_loss(model, heldout)
    cfg = TrainConfig(
        steps=instr.local_steps,
        batch_size=instr.batch_size,
        micro_batch_size=instr.micro_batch_size,
        learning_rate=instr.learning_rate,
        seed=instr.seed,
    )
    train_lora(model, train, cfg)
    after = evaluate_loss(model, heldout)
    trained = extract_adapter(model, base_fingerprint=base.fingerprint)
    trained = trained.with_meta(
        alphas=community.meta.alphas, version=community.meta.version, round=instr.round
    )
    delta = trained.minus(community)
    report = PhoneReport(
        status="trained",
        num_examples=len(train),
        steps=cfg.steps,
        loss_before=before,
        loss_after=after,
        seconds=time.perf_counter() - started,
        backend="cpu",
        dtype=str(base.compute_dtype).removeprefix("torch."),
        quantization=base.quantization,
        rank=delta.max_rank,
    )
    return RoundOutcome(delta=delta, report=report)
