"""Chapter 6, the cost of scale: every run, sweep and profile-dependent size of its lessons.

Sections, one per lesson; each lesson's author edits only their own section.
"""

from __future__ import annotations

from book.device import by_profile  # noqa: F401  (the sections below read the profile here, nowhere else)

# --- 6.1 where the bytes go / 6.2 precision ---------------------------------------------

# --- 6.3 recomputation / 6.4 batch size and the learning rate ---------------------------

# --- 6.5 data parallelism and sharding / 6.6 tensor and pipeline parallelism ------------

# --- 6.7 the KV cache / 6.8 quantization and speculative decoding / 6.9 the checklist ---
