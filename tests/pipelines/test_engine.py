"""The shared inference engine: prefetching, token-budget embedding, ranks from the environment."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from omicskern.pipelines.distributed import Ranks
from omicskern.pipelines.engine import Clock, Prefetcher, embed_rows


def test_prefetcher_keeps_order_and_runs_ahead():
    made = []

    def gen():
        for i in range(6):
            made.append(i)
            yield i

    with Prefetcher(gen(), depth=2) as it:
        assert next(it) == 0
        time.sleep(0.2)  # the producer ran ahead of the consumer, by at most depth (+1 in hand)
        assert 2 <= len(made) <= 4
        assert list(it) == [1, 2, 3, 4, 5]


def test_prefetcher_raises_the_producers_error_at_its_item():
    def gen():
        yield 1
        raise ValueError("record 'chr2', line 7: bad byte")

    it = Prefetcher(gen())
    assert next(it) == 1
    with pytest.raises(ValueError, match="record 'chr2', line 7"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)


def test_prefetcher_close_stops_an_endless_producer():
    def endless():
        i = 0
        while True:
            i += 1
            yield i

    it = Prefetcher(endless(), depth=1)
    next(it)
    it.close()
    assert not it._thread.is_alive()
    assert threading.active_count() >= 1


@pytest.mark.parametrize("name", ["dnabert2", "hyenadna"])
def test_embed_rows_equals_one_embed_call(tmp_path, name):
    import omicskern
    from tests.models import _folders

    model = omicskern.load(getattr(_folders, name)(tmp_path / name))
    rng = np.random.default_rng(3)
    seqs = ["".join(rng.choice(list("ACGT"), size=int(n))) for n in rng.integers(3, 301, size=13)]
    batch = model.get_tokenizer().encode_batch(seqs, padding=False)
    clock = Clock()
    # a budget far below the batch: many groups, rows regrouped by length
    got = embed_rows(model, batch, pooling="mean", max_tokens=150, per_token=True, clock=clock)
    ref = model.embed(batch, pooling="mean")
    np.testing.assert_allclose(got.pooled, ref.pooled.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.tokens, ref.tokens.numpy(), rtol=1e-5, atol=1e-5)
    assert clock.get("model") > 0
    only = embed_rows(model, batch, pooling="none", per_token=True, max_tokens=10_000)
    assert only.pooled.shape == (13, 0)
    np.testing.assert_allclose(only.tokens, ref.tokens.numpy(), rtol=1e-5, atol=1e-5)


def test_ranks_from_env():
    assert Ranks.from_env({}).world_size == 1
    r = Ranks.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (r.rank, r.world_size, r.local_rank, r.is_main, r.distributed) == (1, 2, 1, False, True)
    assert r.device("cpu") == "cpu"
    with pytest.raises(ValueError, match="RANK=2 is not in"):
        Ranks.from_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="WORLD_SIZE='two'"):
        Ranks.from_env({"WORLD_SIZE": "two"})
