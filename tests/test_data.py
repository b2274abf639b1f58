import math

import numpy as np
import pytest
import torch

from book import data


def test_clean_play_layout():
    md = "# Title\n\n## ACT I\n\n_Enter BOB_\n\n**BOB**  \nA line,  \nand more\\!\n\n\n\n**ANN**  \nNo—yes.\n"
    assert data.clean_play(md) == "Title\n\nACT I\n\n[Enter BOB]\n\nBOB:\nA line,\nand more!\n\nANN:\nNo--yes.\n"
    assert data.clean_play(md) == data.clean_play(md)


def test_shakespeare_split_and_vocabulary():
    ds = data.load_shakespeare()
    text = data.shakespeare_text()
    assert text.isascii()
    assert len(data.play_files()) == 38
    assert ds.vocab_size == len(set(text)) and ds.vocab_size < 100
    total = ds.train.numel() + ds.val.numel()
    assert 4_000_000 < total < 6_000_000
    assert 0.09 < ds.val.numel() / total < 0.11
    assert ds.tokenizer.decode(ds.tokenizer.encode("To be, or not to be")) == "To be, or not to be"
    # deterministic: the same ids every time
    assert torch.equal(data.load_shakespeare().train[:1000], ds.train[:1000])


def test_byte_tokenizer_round_trip():
    tok = data.ByteTokenizer()
    assert tok.decode(tok.encode("héllo")) == "héllo"
    assert data.load_shakespeare("byte").vocab_size == 256


def test_get_batch_windows_are_shifted_by_one():
    tokens = torch.arange(100)
    x, y = data.get_batch(tokens, 4, 10, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 10)
    assert torch.equal(y, x + 1)


@pytest.mark.parametrize("call, match", [
    (lambda: data.get_batch(torch.arange(5), 2, 10), "corpus too short"),
    (lambda: data.get_batch(torch.arange(50), 0, 10), "batch_size"),
    (lambda: data.dataset_from_text(""), "text"),
    (lambda: data.TokenDataset(torch.tensor([], dtype=torch.long), torch.arange(3), 3), "train"),
    (lambda: data.load_shakespeare("words"), "tokenizer"),
    (lambda: data.load_shakespeare(val_fraction=1.5), "val_fraction"),
    (lambda: data.MarkovSource(vocab_size=1), "vocab_size"),
    (lambda: data.MarkovSource(vocab_size=8, n_successors=9), "n_successors"),
    (lambda: data.MarkovSource(smoothing=0), "smoothing"),
    (lambda: data.MarkovSource(order=0), "order"),
    (lambda: data.CharTokenizer("ab").encode("abc"), "outside the alphabet"),
])
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_markov_entropy_rate_is_exact():
    source = data.MarkovSource(vocab_size=16, order=2, n_successors=3, seed=3)
    pi, P, V = source.stationary, source.transition, source.vocab_size
    assert abs(pi.sum() - 1) < 1e-12
    # stationarity: pushing pi through one step gives pi back
    contexts = np.arange(len(pi))
    pushed = np.zeros_like(pi)
    for t in range(V):
        np.add.at(pushed, (contexts % V) * V + t, pi * P[:, t])
    assert np.allclose(pushed, pi, atol=1e-12)
    # the empirical cross-entropy of a long sample under the true chain matches the rate
    x = source.sample(200_000, seed=1).numpy()
    ctx = x[:-2] * V + x[1:-1]
    empirical = -np.log(P[ctx, x[2:]]).mean()
    assert abs(empirical - source.entropy_rate) < 0.02
    assert 0 < source.entropy_rate < math.log(V)


def test_markov_samples_are_reproducible():
    source = data.MarkovSource(vocab_size=8, seed=0)
    assert torch.equal(source.sample(1000, seed=5), source.sample(1000, seed=5))
    assert not torch.equal(source.sample(1000, seed=5), source.sample(1000, seed=6))
    ds = source.dataset(2000, 500)
    assert ds.entropy_rate == source.entropy_rate and ds.vocab_size == 8
