"""The sync counter counts every device-to-host read and data-dependent shape (and nothing else);
the fixed-size gather returns what nonzero does and reports its overflows."""

from __future__ import annotations

import pytest
import torch

from mpod123.runtime.syncs import Compactor, SyncCounter, gpu_paths, refresh_all, takes_gpu_paths

X = torch.arange(6.0)
M = X > 2

SYNCS = {
    "item": lambda: X[0].item(),
    "bool": lambda: bool(M.any()),
    "if": lambda: 1 if M.all() else 0,
    "int": lambda: int(X.sum()),
    "float": lambda: float(X.sum()),
    "index": lambda: [0, 1, 2][X.long()[1]],
    "tolist": lambda: X.tolist(),
    "numpy": lambda: X.numpy(),
    "cpu": lambda: X.cpu(),
    "nonzero": lambda: torch.nonzero(M),
    "nonzero_method": lambda: M.nonzero(),
    "where_one_arg": lambda: torch.where(M),
    "argwhere": lambda: torch.argwhere(M),
    "bool_index": lambda: X[M],
    "bool_index_in_tuple": lambda: X.view(2, 3)[M.view(2, 3)[:, 0]],
    "bool_index_put": lambda: X.clone().__setitem__(M, 0.0),
    "masked_select": lambda: torch.masked_select(X, M),
    "bincount": lambda: torch.bincount(X.long()),
    "unique": lambda: torch.unique(X),
    "unique_method": lambda: X.unique(),
    "unique_consecutive": lambda: torch.unique_consecutive(X),
    "repeat_interleave": lambda: torch.repeat_interleave(X, X.long()),
    "repeat_interleave_method": lambda: X.repeat_interleave(X.long()),
    "equal": lambda: torch.equal(X, X),
    "allclose": lambda: torch.allclose(X, X),
}

ORDINARY = {
    "arithmetic": lambda: (X * 2 + 1).sum(),
    "where_three_args": lambda: torch.where(M, X, 0.0),
    "nonzero_static": lambda: torch.nonzero_static(M, size=3),
    "long_index": lambda: X[torch.tensor([1, 2])],
    "repeat_interleave_output_size": lambda: X.repeat_interleave(X.long(), output_size=15),
    "repeat_interleave_int": lambda: X.repeat_interleave(3),
    "masked_fill": lambda: X.masked_fill(M, 0.0),
    "index_add": lambda: torch.zeros(3).index_add_(0, torch.tensor([0, 0, 2]), torch.ones(3)),
    "sort_cumsum": lambda: torch.cumsum(torch.sort(X).values, 0),
    "to_same_device": lambda: X.to("cpu"),
}


@pytest.mark.parametrize("name", sorted(SYNCS))
def test_each_kind_of_sync_counts_once(name):
    with SyncCounter() as counter:
        SYNCS[name]()
    assert counter.total == 1, dict(counter.counts)


@pytest.mark.parametrize("name", sorted(ORDINARY))
def test_ordinary_ops_do_not_count(name):
    with SyncCounter() as counter:
        ORDINARY[name]()
    assert counter.total == 0, dict(counter.counts)


def test_sites_name_the_line_and_twins_are_counted_apart():
    with SyncCounter(where=True, twins=("runtime/test_syncs.py",)) as counter:
        int(X.sum())
    assert counter.total == 0 and sum(counter.twin_counts.values()) == 1
    (site,) = counter.sites
    assert site.startswith("int at ") and "test_syncs.py:" in site


def test_gpu_paths_is_scoped():
    assert not takes_gpu_paths("cpu") and takes_gpu_paths("meta")
    with gpu_paths():
        assert takes_gpu_paths("cpu")
    assert not takes_gpu_paths("cpu")


def test_the_fixed_size_gather_equals_nonzero_and_pads_with_the_last_index():
    mask = torch.rand(200, generator=torch.Generator().manual_seed(0)) > 0.7
    c = Compactor(headroom=1.0, granule=8)
    idx, valid = c.nonzero(mask, "k")  # first call: learns the size
    n = int(mask.sum())
    assert idx.shape[0] == c.capacity["k"] >= n and int(valid.sum()) == n
    torch.testing.assert_close(idx[:n], torch.nonzero(mask)[:, 0])
    assert (idx[n:] == 199).all()
    with SyncCounter() as counter:  # later calls read nothing back
        c.nonzero(mask, "k")
    assert counter.total == 0


def test_an_overflow_is_flagged_on_the_device_and_the_capacity_grows_at_the_refresh():
    c = Compactor(headroom=1.0, granule=4)
    small = torch.zeros(64, dtype=torch.bool)
    small[:4] = True
    c.nonzero(small, "k")
    assert c.capacity["k"] == 4 and not bool(c.overflow())
    big = torch.zeros(64, dtype=torch.bool)
    big[::2] = True
    idx, valid = c.nonzero(big, "k")
    assert idx.shape[0] == 4 and bool(c.overflow()), "entries were lost, and it says so"
    with SyncCounter() as counter:
        assert refresh_all([c])
    assert counter.total == 1, "one read for the whole refresh"
    assert c.capacity["k"] == 32 and c.overflow() is None and c.grown == 1
    idx, valid = c.nonzero(big, "k")
    torch.testing.assert_close(idx[valid], torch.nonzero(big)[:, 0])


def test_exact_reruns_until_nothing_was_cut():
    c = Compactor(headroom=1.0, granule=2)
    c.nonzero(torch.tensor([True, False, False, False]), "k")
    mask = torch.tensor([True, True, True, False])
    calls = []

    def gather():
        idx, valid = c.nonzero(mask, "k")
        calls.append(idx.shape[0])
        return idx[valid]

    out = c.exact(gather)
    assert calls == [2, 4] and out.tolist() == [0, 1, 2]
