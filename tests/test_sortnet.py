"""Sorting networks of minima and maxima: they sort, they select, they give astroscrappy's separable medians."""

import itertools

import numpy as np
import pytest

from megara_crdetect.core.sortnet import batcher_network, pruned_network, select, separable_median


@pytest.mark.parametrize("n", range(1, 13))
def test_batcher_network_sorts_every_zero_one_input(n):
    """Zero-one principle: a comparator network that sorts every input of 0s and 1s sorts everything."""
    network = batcher_network(n)
    assert all(0 <= i < j < n for i, j in network)
    for bits in itertools.product((0, 1), repeat=n):
        wires = list(bits)
        for i, j in network:
            wires[i], wires[j] = min(wires[i], wires[j]), max(wires[i], wires[j])
        assert wires == sorted(bits)


def test_batcher_network_of_eight_has_nineteen_comparators():
    assert len(batcher_network(8)) == 19
    assert len(pruned_network(9, 4)) < len(batcher_network(9))


@pytest.mark.parametrize("n", [2, 3, 5, 7, 8, 9, 11])
def test_select_gives_every_rank_of_numpy_sort(n):
    rng = np.random.default_rng(n)
    values = rng.integers(-3, 4, (n, 500)).astype(np.float32)  # many ties
    values[:, :3] = rng.normal(size=(n, 3)).astype(np.float32)
    wires = list(values)
    expected = np.sort(values, axis=0)
    for rank in range(n):
        assert np.array_equal(select(wires, rank), expected[rank])
    assert all(np.array_equal(w, v) for w, v in zip(wires, values))  # the inputs are not written


@pytest.mark.parametrize("bad", [(0, 0), (3, 3), (3, -1)])
def test_pruned_network_refuses_a_rank_outside_the_values(bad):
    with pytest.raises(ValueError, match="rank|at least one"):
        pruned_network(*bad)


@pytest.mark.parametrize("size", [3, 5, 7, 9])
@pytest.mark.parametrize("shape", [(1, 40), (8, 8), (9, 9), (10, 23), (37, 9), (130, 71)])
def test_separable_median_is_astroscrappys(size, shape):
    """Same values as astroscrappy's sepmedfilt<size>, ties, sides and small images included."""
    from astroscrappy import utils

    reference = getattr(utils, f"sepmedfilt{size}")
    rng = np.random.default_rng(size * 1000 + shape[0] * shape[1])
    image = rng.normal(100, 20, shape).astype(np.float32)
    image[::3] = np.round(image[::3] / 10)  # ties
    image[1::5, ::2] = -image[1::5, ::2]
    if min(shape) < size // 2 + 1:  # astroscrappy writes outside such an image
        assert np.array_equal(separable_median(image, size), image)
        return
    got = separable_median(image, size, block=7)  # blocks that do not divide the image
    assert got.dtype == np.float32 and np.array_equal(got, reference(image))


@pytest.mark.parametrize("size", [0, 4, 1])
def test_separable_median_refuses_an_even_or_short_length(size):
    with pytest.raises(ValueError, match="odd and at least 3"):
        separable_median(np.zeros((10, 10), np.float32), size)


def test_several_ranks_at_once_and_by_rows():
    from megara_crdetect.core.sortnet import by_rows

    rng = np.random.default_rng(4)
    stack = rng.integers(0, 9, (6, 70, 30)).astype(np.float32)
    low = select(list(stack), (0, 1, 2))
    assert all(np.array_equal(v, e) for v, e in zip(low, np.sort(stack, axis=0)[:3]))
    got = by_rows(stack, lambda planes: select(planes, 5), block=16)
    assert got.dtype == np.float32 and np.array_equal(got, stack.max(axis=0))


@pytest.mark.parametrize("n", [2, 4, 5, 7, 10])
def test_stack_statistics_of_more_exposures(n):
    """median_of_stack is np.median; low_mean the mean of the lowest values summed in ascending order."""
    from megara_crdetect.core.stack import low_mean, median_of_stack

    rng = np.random.default_rng(n)
    stack = rng.normal(100, 10, (n, 90, 70)).astype(np.float32)
    stack[:, ::5] = np.round(stack[:, ::5])  # ties
    assert np.array_equal(median_of_stack(stack), np.median(stack, axis=0).astype(np.float32))
    ordered = np.sort(stack, axis=0)
    for k in range(1, n + 1):
        expected = ordered[0].copy()
        for plane in ordered[1:k]:
            expected += plane
        if k > 1:
            expected /= np.float32(k)
        assert np.array_equal(low_mean(stack, k), expected)
