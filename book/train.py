"""One training loop for every experiment in the course.

AdamW; linear warmup then cosine decay to a floor, the cycle matched to the
run's length; gradient clipping and accumulation; bf16 autocast on CUDA. It
reports the loss curve against tokens, held-out loss, tokens/s and MFU (model
FLOPs utilisation) against the peak measured on this machine.

With ``checkpoint_path`` the loop saves its whole state (model, optimizer,
data sampler, curve, running loss, RNGs) atomically every ``checkpoint_every``
steps and resumes from it, so an interrupted run continues exactly where it
stopped: the same curve and weights, bit for bit on a CPU.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
from tqdm import tqdm

from book import checks, hardware
from book import device as _device
from book.data import TokenDataset, get_batch
from book.model import GPT, GPTConfig, count_params, flops_per_token
from book.storage import load_torch_checked, save_torch_atomic


PRECISIONS = ("auto", "fp32", "bf16")  # TrainConfig.precision


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int  # sequences per optimizer step, summed over accumulation micro-batches
    lr: float = 1e-3
    warmup_steps: int | None = None  # None: 5% of the run, at least 1 step
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio
    schedule_steps: int | None = None  # length of the cosine cycle; None: matched to the run (steps)
    schedule: str = "cosine"  # "constant": lr after warmup, no decay (lesson 1.2's per-run rate)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float | None = 1.0
    grad_accum: int = 1
    eval_every: int | None = None  # None: 10 evaluations over the run
    eval_batches: int = 8  # evaluation uses eval_batches x batch_size windows of held-out text
    log_every: int | None = None  # None: about 50 points on the training curve
    seed: int = 0
    precision: str = "auto"  # "auto": bf16 autocast on a CUDA GPU that has it, else fp32; or "fp32", "bf16"

    def __post_init__(self):
        for name in ("steps", "batch_size", "grad_accum", "eval_batches"):
            checks.positive_int(name, getattr(self, name))
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size={self.batch_size} must be divisible by grad_accum={self.grad_accum}")
        checks.positive_float("lr", self.lr)
        checks.probability("min_lr_ratio", self.min_lr_ratio)
        checks.nonnegative_float("weight_decay", self.weight_decay)
        checks.probability("beta1", self.beta1, open_high=True)  # Adam's betas lie in [0, 1)
        checks.probability("beta2", self.beta2, open_high=True)
        checks.optional(checks.positive_float, "grad_clip", self.grad_clip)
        checks.nonnegative_int("seed", self.seed)
        checks.one_of("schedule", self.schedule, ("cosine", "constant"))
        checks.one_of("precision", self.precision, PRECISIONS)
        checks.optional(checks.nonnegative_int, "warmup_steps", self.warmup_steps)
        for name in ("eval_every", "log_every", "schedule_steps"):
            checks.optional(checks.positive_int, name, getattr(self, name))
        if self.schedule_steps is not None and self.schedule_steps < self.steps:
            raise ValueError(f"schedule_steps={self.schedule_steps} must be >= steps={self.steps}")

    @property
    def warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else max(1, self.steps // 20)

    def to_dict(self) -> dict:
        return asdict(self)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate at ``step`` (0-based): linear warmup, then cosine to ``lr * min_lr_ratio``."""
    checks.nonnegative_int("step", step)
    checks.instance("cfg", cfg, TrainConfig)
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return cfg.lr
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
             seed: int = 1234, score=None) -> float:
    """Mean loss on ``batch_size * n_batches`` random windows, the same ones every call (fixed seed).

    The windows are drawn at once and run ``chunk`` at a time, so the answer does
    not depend on how much fits in memory. ``score(logits, targets)``, if given, replaces the
    loss: the mean over a chunk's windows of any measure (an accuracy, a loss on some positions).
    """
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    xs, ys = get_batch(tokens, batch_size * n_batches, model.config.n_ctx, torch.Generator().manual_seed(seed))
    total = 0.0
    for x, y in zip(xs.split(chunk or batch_size), ys.split(chunk or batch_size)):
        with _autocast(dev):
            logits, loss = model(x.to(dev), y.to(dev))
        total += (loss if score is None else score(logits.float(), y.to(dev))).item() * len(x)
    model.train(was_training)
    return total / len(xs)


def _autocast(dev: torch.device, precision: str = "auto"):
    # Parameters stay fp32; inside autocast, matrix products run in bf16 (see lesson 6.2).
    dtype = {"auto": _device.autocast_dtype(dev), "fp32": None, "bf16": torch.bfloat16}[precision]
    return torch.autocast(device_type=dev.type, dtype=dtype) if dtype else contextlib.nullcontext()


# --------------------------------------------------------------------------- checkpoints
# A checkpoint holds everything the next step depends on, so that a resumed run is the
# uninterrupted one bit for bit: weights, optimizer moments, the data sampler, the running
# training-loss sum since the last log point, and the global RNGs that draw dropout masks.

_CHECKPOINT_KEYS = ("model", "optimizer", "sampler", "step", "curve", "train_seconds", "running",
                    "rng")


def _rng_state() -> dict:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda, "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    # RNG states are CPU byte tensors, whatever map_location the checkpoint was loaded with.
    torch.set_rng_state(state["torch"].cpu())
    cuda = state["cuda"]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _checkpoint_validator(model: torch.nn.Module, steps: int):
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}

    def validate(state) -> None:
        missing = [k for k in _CHECKPOINT_KEYS if k not in state]
        if missing:
            raise ValueError(f"missing keys {missing}")
        if {k: tuple(t.shape) for k, t in state["model"].items()} != expected:
            raise ValueError("its weights do not match this model's parameters")
        if not isinstance(state["step"], int) or not 0 < state["step"] < steps:
            raise ValueError(f"step {state['step']!r} is not within this run's {steps} steps")
        if not isinstance(state["curve"], list) or not state["curve"] or len(state["running"]) != 2:
            raise ValueError("its curve or running loss is malformed")
        if set(state["rng"]) != {"torch", "cuda", "python"}:
            raise ValueError("its RNG states are malformed")
    return validate


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


def train(model_config: GPTConfig | torch.nn.Module, train_config: TrainConfig, data: TokenDataset, *,
          dev: torch.device | None = None, progress: bool = True, desc: str | None = None,
          checkpoint_path=None, checkpoint_every: int | None = None, callback=None) -> TrainResult:
    """Train ``GPT(model_config)`` on ``data`` as ``train_config`` says; return the measured result.

    ``model_config`` may also be a built model, trained in place: any ``nn.Module`` with the GPT's
    forward contract (``model(idx, targets) -> (logits, loss)`` on windows of ``model.config.n_ctx``
    tokens, ``model.config.to_dict()``; ``auxiliary_loss()`` optional). Its N is then all its
    parameters and its training FLOPs 6N a token.

    ``callback(step, loss)`` is called after every optimizer step (a test uses it
    to simulate a crash). The returned ``TrainResult.model`` is the trained model.
    """
    tcfg, built = train_config, isinstance(model_config, torch.nn.Module)
    mcfg = model_config.config if built else checks.instance("model_config", model_config, GPTConfig)
    checks.instance("train_config", train_config, TrainConfig)
    checks.instance("data", data, TokenDataset)
    checks.optional(checks.positive_int, "checkpoint_every", checkpoint_every)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {callback!r}")
    if data.vocab_size > mcfg.vocab_size:
        raise ValueError(f"data has vocab_size={data.vocab_size} but the model only {mcfg.vocab_size}")
    for split in ("train", "val"):
        if data.split(split).numel() < mcfg.n_ctx + 1:
            raise ValueError(f"{split} split too short: {data.split(split).numel()} tokens, "
                             f"a window of n_ctx={mcfg.n_ctx} needs {mcfg.n_ctx + 1}")
    dev = dev or _device.device()
    torch.manual_seed(tcfg.seed)
    model = (model_config if built else GPT(mcfg)).to(dev)
    auxiliary_loss = getattr(model, "auxiliary_loss", lambda: 0.0)
    optimizer = make_optimizer(model, tcfg)
    sampler = torch.Generator().manual_seed(tcfg.seed)
    micro = tcfg.batch_size // tcfg.grad_accum
    tokens_per_step = tcfg.batch_size * mcfg.n_ctx
    eval_every = tcfg.eval_every or max(1, tcfg.steps // 10)
    log_every = tcfg.log_every or max(1, tcfg.steps // 50)
    if isinstance(mcfg, GPTConfig):
        n_params, n_total = count_params(mcfg, embedding=False), count_params(mcfg)
        train_fpt = flops_per_token(mcfg, training=True)
    else:  # a built model of another kind: all its parameters, 6N a token
        n_params = n_total = sum(p.numel() for p in model.parameters())
        train_fpt = 6 * n_params

    start_step, curve, train_seconds, (running, running_n) = 0, [], 0.0, (0.0, 0)
    # weights_only: a checkpoint is data, never code; a refused, truncated or foreign one is
    # moved aside (with a warning naming it) and the run starts over.
    state = None if checkpoint_path is None else load_torch_checked(
        checkpoint_path, _checkpoint_validator(model, tcfg.steps), map_location=dev)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.set_state(state["sampler"].cpu())
        _set_rng_state(state["rng"])
        start_step, curve, train_seconds = state["step"], state["curve"], state["train_seconds"]
        running, running_n = state["running"]

    if start_step == 0:  # the loss before any training: where every curve starts
        curve = [{"step": 0, "tokens": 0, "val_loss": evaluate(model, data.val, tcfg.batch_size, tcfg.eval_batches, micro),
                  "lr": 0.0}]
    model.train()
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
            with _autocast(dev, tcfg.precision):
                _, loss = model(x, y)
            # MoE layers add their load-balancing and z-losses; the logged loss stays the cross-entropy.
            ((loss + auxiliary_loss()) / tcfg.grad_accum).backward()
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
                "sampler": sampler.get_state(), "step": done, "curve": curve,
                "train_seconds": train_seconds, "running": (running, running_n),
                "rng": _rng_state()})
    bar.close()

    tokens = tcfg.steps * tokens_per_step
    peak = hardware.measured_peak(dev=dev)
    tokens_per_s = tokens / train_seconds if train_seconds > 0 else float("nan")
    return TrainResult(
        model_config=mcfg.to_dict(), train_config=tcfg.to_dict(), dataset=data.name, curve=curve,
        final_val_loss=curve[-1]["val_loss"], final_train_loss=curve[-1]["train_loss"],
        params=n_params, params_total=n_total, tokens=tokens,
        flops=float(train_fpt * tokens), train_seconds=train_seconds, tokens_per_s=tokens_per_s,
        mfu=train_fpt * tokens_per_s / peak, peak_flops=peak, device=dev.type,
        device_name=_device.device_name(dev), model=model)
