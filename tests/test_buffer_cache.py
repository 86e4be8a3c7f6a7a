"""The CPU buffer cache (Note [CPU buffer cache], docs/design.md): large buffers of the CPU
layer functions come from freed blocks of earlier calls, and so do small ones (Note [Small
CPU buffers]). Reuse must never change a result
(a reused block holds whatever its last tensor left in it), never hand one block to two
live tensors, and stay within its limit.
"""
import os
import subprocess
import sys

import pytest
import torch

import fusedrnn
from fusedrnn import _C

# dgates [T*B, 4H] float32 = 2 MiB, y [T*B, H] = 512 KiB: both above the cache's 256 KiB.
T, B, I, H = 64, 8, 24, 256


@pytest.fixture(autouse=True)
def _restore_limit():
    old = _C._set_cpu_cache_limit(512 << 20)
    yield
    _C._set_cpu_cache_limit(old)


def _train(cell, seed=0, shape=(T, B, I, H)):
    t, b, i, h = shape
    torch.manual_seed(seed)
    m = getattr(fusedrnn, cell)(i, h)
    x = torch.randn(t, b, i, requires_grad=True)
    out, h = m(x)
    hs = h if isinstance(h, tuple) else (h,)
    (out.square().sum() + sum(t.sum() for t in hs)).backward()
    return [out.detach(), *[t.detach() for t in hs], x.grad, *[p.grad for p in m.parameters()]]


def _poison_cache(cell):
    """Fill the cache with NaN blocks of the sizes the next call asks for."""
    with torch.no_grad():
        m = getattr(fusedrnn, cell)(I, H)
        outs = [m(torch.randn(T, B, I))[0] for _ in range(4)]
    for o in outs:
        o.fill_(float("nan"))
    torch.manual_seed(1)
    buffers = _train(cell, seed=1)  # a training call's own sizes, left holding NaN below
    for b in buffers:
        if b.numel() * b.element_size() >= 256 << 10:
            b.fill_(float("nan"))
    del outs, buffers


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_reused_blocks_give_the_same_results(cell):
    _C._set_cpu_cache_limit(0)
    expected = _train(cell)
    _C._set_cpu_cache_limit(512 << 20)
    _poison_cache(cell)
    hits = _C._cpu_cache_stats()["hits"]
    got = _train(cell)
    assert _C._cpu_cache_stats()["hits"] > hits, "the training call reused no block"
    for e, g in zip(expected, got):
        assert torch.equal(e, g)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_live_outputs_are_not_reused(cell):
    m = getattr(fusedrnn, cell)(I, H)
    with torch.no_grad():
        y1 = m(torch.randn(T, B, I))[0]
        keep = y1.clone()
        freed = []
        for _ in range(3):
            y = m(torch.randn(T, B, I))[0]
            assert y.data_ptr() != y1.data_ptr()
            freed.append(y.data_ptr())
            del y
    assert torch.equal(y1, keep)
    assert freed[1] == freed[0], "a freed output's block was not reused by the next call"


# Every buffer of these calls is below 128 KiB: they come from the small classes.
SMALL_SHAPES = [(1, 1, 5, 8), (3, 5, 7, 33)]


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("shape", SMALL_SHAPES)
def test_reused_small_blocks_give_the_same_results(cell, shape):
    _C._set_cpu_cache_limit(0)
    expected = _train(cell, shape=shape)
    _C._set_cpu_cache_limit(512 << 20)
    for b in _train(cell, seed=1, shape=shape):  # freed holding NaN: the next call's sizes
        b.fill_(float("nan"))
    hits = _C._cpu_cache_stats()["hits"]
    got = _train(cell, shape=shape)
    assert _C._cpu_cache_stats()["hits"] > hits, "the training call reused no small block"
    for e, g in zip(expected, got):
        assert torch.equal(e, g)


def test_live_small_outputs_are_not_reused_and_the_held_blocks_are_bounded():
    fusedrnn.empty_cpu_cache()
    w_ih, w_hh = torch.randn(32, 8), torch.randn(32, 8)
    with torch.no_grad():
        outs = [fusedrnn.ops.lstm_layer(torch.full((1, 1, 8), float(i)), w_ih, w_hh)
                for i in range(300)]
        expected = [fusedrnn.reference.lstm_layer(torch.full((1, 1, 8), float(i)), w_ih, w_hh)
                    for i in range(300)]
    pointers = [t.data_ptr() for out in outs for t in out]
    assert len(set(pointers)) == len(pointers), "two live outputs share a block"
    for out, ref in zip(outs, expected):
        for o, r in zip(out, ref):
            torch.testing.assert_close(o, r)
    del outs
    # 900 freed 32-byte blocks: at most 64 of their class are held, plus the few internal
    # buffers of other classes.
    stats = _C._cpu_cache_stats()
    assert stats["cached_blocks"] <= 64 + 8, stats
    assert 64 * 64 <= stats["cached_bytes"] <= 64 * 64 + 8 * 1024, stats
    assert fusedrnn.empty_cpu_cache() == stats["cached_bytes"]


def test_limit_and_empty():
    _C._set_cpu_cache_limit(1 << 20)
    for _ in range(3):
        _train("LSTM")
    stats = _C._cpu_cache_stats()
    assert stats["limit_bytes"] == 1 << 20 and 0 < stats["cached_bytes"] <= 1 << 20
    assert fusedrnn.empty_cpu_cache() == stats["cached_bytes"]
    assert _C._cpu_cache_stats()["cached_bytes"] == 0 and fusedrnn.empty_cpu_cache() == 0

    _C._set_cpu_cache_limit(0)
    hits = _C._cpu_cache_stats()["hits"]
    _train("GRU")
    _train("GRU")
    stats = _C._cpu_cache_stats()
    assert stats["hits"] == hits and stats["cached_bytes"] == 0
    with pytest.raises(ValueError, match="limit must be >= 0"):
        _C._set_cpu_cache_limit(-1)


@pytest.mark.parametrize("shape", [(T, B, I, H), (1, 1, 5, 8)])
def test_outputs_are_ordinary_tensors(shape):
    T, B, _, H = shape
    y = _train("LSTM", shape=shape)[0]
    y.resize_(2 * y.numel())  # resizable storage, grown through the cache's allocator
    y.fill_(1.0)
    assert y.sum().item() == 2 * T * B * H
    z = _train("LSTM", shape=shape)[0]
    z2 = torch.empty(0)
    z2.set_(z.untyped_storage(), 0, z.shape, z.stride())
    assert torch.equal(z2, z)


@pytest.mark.parametrize("value,ok", [("0", True), ("64", True), ("abc", False), ("-1", False)])
def test_environment_variable(value, ok):
    code = ("import torch, fusedrnn\nfrom fusedrnn import _C\n"
            "m = fusedrnn.LSTM(8, 256)\n"
            "try:\n"
            "    m(torch.randn(64, 8, 8))\n"
            "    print('limit', _C._cpu_cache_stats()['limit_bytes'])\n"
            "except ValueError as e:\n"
            "    print('error', e)\n")
    env = dict(os.environ, FUSEDRNN_CPU_CACHE_MB=value)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    if ok:
        assert out.stdout.split() == ["limit", str(int(value) << 20)]
    else:
        assert out.stdout.startswith("error") and "FUSEDRNN_CPU_CACHE_MB" in out.stdout
