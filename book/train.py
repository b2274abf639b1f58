"""One training loop for every experiment in the course.

AdamW; linear warmup then cosine decay to a floor, the cycle matched to the
run's length; gradient clipping and accumulation; bf16 autocast on CUDA. It
reports the loss curve against tokens, held-out loss, tokens/s and MFU (model
FLOPs utilisation) against the peak measured on this machine.

With ``checkpoint_path`` the loop saves its whole state (model, optimizer,
data-sampler RNG, curve) atomically every ``checkpoint_every`` steps and resumes
from it, so an interrupted run continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
from tqdm import tqdm

from book import device as _device
from book import hardware
from book.data import TokenDataset, get_batch
from book.model import GPT, GPTConfig, count_params, flops_per_token
from book.storage import save_torch_atomic


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int  # sequences per optimizer step, summed over accumulation micro-batches
    lr: float = 1e-3
    warmup_steps: int | None = None  # None: 5% of the run, at least 1 step
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio
    schedule_steps: int | None = None  # length of the cosine cycle; None: matched to the run (steps)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float | None = 1.0
    grad_accum: int = 1
    eval_every: int | None = None  # None: 10 evaluations over the run
    eval_batches: int = 8  # evaluation uses eval_batches x batch_size windows of held-out text
    log_every: int | None = None  # None: about 50 points on the training curve
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "grad_accum", "eval_batches"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size={self.batch_size} must be divisible by grad_accum={self.grad_accum}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        for name in ("warmup_steps", "eval_every", "log_every", "schedule_steps"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < (0 if name == "warmup_steps" else 1)):
                raise ValueError(f"{name} must be None or a {'non-negative' if name == 'warmup_steps' else 'positive'}"
                                 f" int, got {value!r}")
        if self.schedule_steps is not None and self.schedule_steps < self.steps:
            raise ValueError(f"schedule_steps={self.schedule_steps} must be >= steps={self.steps}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip}")

    @property
    def warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else max(1, self.steps // 20)

    def to_dict(self) -> dict:
        return asdict(self)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate at ``step`` (0-based): linear warmup, then cosine to ``lr * min_lr_ratio``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    length = cfg.schedule_steps or cfg.steps
    progress = min(1.0, (step - cfg.warmup) / max(1, length - cfg.warmup))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    # Weight decay on matrices only: decaying biases, norms' gains and embeddings' rows is not wanted.
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             fused=next(model.parameters()).is_cuda)


@torch.no_grad()
def evaluate(model: GPT, tokens: torch.Tensor, batch_size: int, n_batches: int, chunk: int | None = None,
             seed: int = 1234) -> float:
    """Mean loss on ``batch_size * n_batches`` random windows, the same ones every call (fixed seed).

    The windows are drawn at once and run ``chunk`` at a time, so the answer does
    not depend on how much fits in memory.
    """
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    xs, ys = get_batch(tokens, batch_size * n_batches, model.config.n_ctx, torch.Generator().manual_seed(seed))
    total = 0.0
    for x, y in zip(xs.split(chunk or batch_size), ys.split(chunk or batch_size)):
        with _autocast(dev):
            _, loss = model(x.to(dev), y.to(dev))
        total += loss.item() * len(x)
    model.train(was_training)
    return total / len(xs)


def _autocast(dev: torch.device):
    dtype = _device.autocast_dtype(dev)
    return torch.autocast(device_type=dev.type, dtype=dtype) if dtype else contextlib.nullcontext()


@dataclass
class TrainResult:
    model_config: dict
    train_config: dict
    dataset: str
    curve: list = field(default_factory=list)  # dicts: step, tokens, [train_loss], [val_loss], lr; step 0 first
    final_val_loss: float = float("nan")
    final_train_loss: float = float("nan")
    params: int = 0  # Kaplan's N (non-embedding)
    params_total: int = 0
    tokens: int = 0
    flops: float = 0.0  # training FLOPs: flops_per_token(training=True) x tokens
    train_seconds: float = 0.0  # time in training steps (evaluation excluded)
    tokens_per_s: float = 0.0
    mfu: float = 0.0  # achieved model FLOP/s / measured peak
    peak_flops: float = 0.0
    device: str = ""
    device_name: str = ""
    model: GPT | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("model")
        return out


def train(model_config: GPTConfig, train_config: TrainConfig, data: TokenDataset, *,
          dev: torch.device | None = None, progress: bool = True, desc: str | None = None,
          checkpoint_path=None, checkpoint_every: int | None = None, callback=None) -> TrainResult:
    """Train ``GPT(model_config)`` on ``data`` as ``train_config`` says; return the measured result.

    ``callback(step, loss)`` is called after every optimizer step (a test uses it
    to simulate a crash). The returned ``TrainResult.model`` is the trained model.
    """
    mcfg, tcfg = model_config, train_config
    if data.vocab_size > mcfg.vocab_size:
        raise ValueError(f"data has vocab_size={data.vocab_size} but the model only {mcfg.vocab_size}")
    for split in ("train", "val"):
        if data.split(split).numel() < mcfg.n_ctx + 1:
            raise ValueError(f"{split} split too short: {data.split(split).numel()} tokens, "
                             f"a window of n_ctx={mcfg.n_ctx} needs {mcfg.n_ctx + 1}")
    dev = dev or _device.device()
    torch.manual_seed(tcfg.seed)
    model = GPT(mcfg).to(dev)
    optimizer = make_optimizer(model, tcfg)
    sampler = torch.Generator().manual_seed(tcfg.seed)
    micro = tcfg.batch_size // tcfg.grad_accum
    tokens_per_step = tcfg.batch_size * mcfg.n_ctx
    eval_every = tcfg.eval_every or max(1, tcfg.steps // 10)
    log_every = tcfg.log_every or max(1, tcfg.steps // 50)
    train_fpt = flops_per_token(mcfg, training=True)

    start_step, curve, train_seconds = 0, [], 0.0
    if checkpoint_path is not None and checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=dev, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.set_state(state["sampler"])
        start_step, curve, train_seconds = state["step"], state["curve"], state["train_seconds"]

    if start_step == 0:  # the loss before any training: where every curve starts
        curve = [{"step": 0, "tokens": 0, "val_loss": evaluate(model, data.val, tcfg.batch_size, tcfg.eval_batches, micro),
                  "lr": 0.0}]
    model.train()
    running, running_n = 0.0, 0
    bar = tqdm(total=tcfg.steps, initial=start_step, disable=not progress, desc=desc, file=sys.stderr,
               mininterval=1.0, leave=True)
    for step in range(start_step, tcfg.steps):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        lr = lr_at(step, tcfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_loss = 0.0
        # One batch per step, split into micro-batches: accumulation changes memory, not the data.
        xs, ys = get_batch(data.train, tcfg.batch_size, mcfg.n_ctx, sampler, dev)
        for x, y in zip(xs.split(micro), ys.split(micro)):
            with _autocast(dev):
                _, loss = model(x, y)
            # MoE layers add their load-balancing and z-losses; the logged loss stays the cross-entropy.
            ((loss + model.auxiliary_loss()) / tcfg.grad_accum).backward()
            step_loss += loss.item() / tcfg.grad_accum
        if tcfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        train_seconds += time.perf_counter() - t0
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"loss became {step_loss} at step {step}: lower lr (now {tcfg.lr})")

        running, running_n = running + step_loss, running_n + 1
        done = step + 1
        if done % log_every == 0 or done % eval_every == 0 or done == tcfg.steps:
            point = {"step": done, "tokens": done * tokens_per_step, "train_loss": running / running_n, "lr": lr}
            running, running_n = 0.0, 0
            if done % eval_every == 0 or done == tcfg.steps:
                point["val_loss"] = evaluate(model, data.val, tcfg.batch_size, tcfg.eval_batches, micro)
            curve.append(point)
            bar.set_postfix(loss=f"{point['train_loss']:.3f}", refresh=False)
        bar.update(1)
        if callback is not None:
            callback(step, step_loss)
        if checkpoint_path is not None and checkpoint_every and done % checkpoint_every == 0 and done < tcfg.steps:
            save_torch_atomic(checkpoint_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "sampler": sampler.get_state(), "step": done, "curve": curve, "train_seconds": train_seconds})
    bar.close()

    tokens = tcfg.steps * tokens_per_step
    peak = hardware.measured_peak(dev=dev)
    tokens_per_s = tokens / train_seconds if train_seconds > 0 else float("nan")
    return TrainResult(
        model_config=mcfg.to_dict(), train_config=tcfg.to_dict(), dataset=data.name, curve=curve,
        final_val_loss=curve[-1]["val_loss"], final_train_loss=curve[-1]["train_loss"],
        params=count_params(mcfg, embedding=False), params_total=count_params(mcfg), tokens=tokens,
        flops=float(train_fpt * tokens), train_seconds=train_seconds, tokens_per_s=tokens_per_s,
        mfu=train_fpt * tokens_per_s / peak, peak_flops=peak, device=dev.type,
        device_name=_device.device_name(dev), model=model)
