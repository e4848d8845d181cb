"""Tests for megara_crdetect.core.masks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from megara_crdetect.core.masks import (
    cleanable_map,
    coordinates,
    dilate,
    group_pixel_table,
    group_summary,
    grow,
    keep_groups_with,
    label_groups,
    pixel_groups,
    sparse_groups,
)

EIGHT = np.ones((3, 3), dtype=bool)


def random_mask(shape=(60, 70), density=0.03, seed=0):
    return np.random.default_rng(seed).random(shape) < density


class TestDilate:
    def test_single_pixel_gives_square(self):
        mask = np.zeros((9, 11), dtype=bool)
        mask[4, 5] = True
        out = dilate(mask, 2)
        expected = np.zeros_like(mask)
        expected[2:7, 3:8] = True
        assert np.array_equal(out, expected)
        assert out.sum() == 25

    def test_clipped_at_edge(self):
        mask = np.zeros((6, 6), dtype=bool)
        mask[0, 5] = True
        out = dilate(mask, 1)
        assert out.sum() == 4
        assert out[0:2, 4:6].all()

    @pytest.mark.parametrize("radius", [1, 2, 3, 4, 5, 7, 12])
    def test_equals_repeated_3x3_dilation(self, radius):
        mask = random_mask(seed=radius)
        ref = ndimage.binary_dilation(mask, structure=EIGHT, iterations=radius)
        assert np.array_equal(dilate(mask, radius), ref)

    def test_radius_zero_is_a_copy(self):
        mask = random_mask()
        out = dilate(mask, 0)
        assert np.array_equal(out, mask)
        out[:] = False
        assert mask.any()

    @pytest.mark.parametrize("radius", [-1, 1.5, True, None])
    def test_bad_radius(self, radius):
        with pytest.raises(ValueError, match="radius"):
            dilate(np.zeros((3, 3), bool), radius)


class TestLabelGroups:
    def test_diagonal_pixels_are_one_group(self):
        mask = np.eye(5, dtype=bool)
        labels, n = label_groups(mask)
        assert n == 1
        assert labels.dtype == np.int32
        assert np.array_equal(labels, mask.astype(np.int32))

    def test_raster_order_of_first_pixel(self):
        mask = np.zeros((6, 8), dtype=bool)
        mask[3:5, 0] = True  # first pixel at row 3
        mask[1, 6] = True  # first pixel at row 1 -> label 1
        mask[3, 4] = True  # row 3, col 4 -> after (3, 0) -> label 3
        labels, n = label_groups(mask)
        assert n == 3
        assert labels[1, 6] == 1
        assert labels[3, 0] == labels[4, 0] == 2
        assert labels[3, 4] == 3


@pytest.mark.parametrize("density", [0.0, 0.001, 0.05, 0.5])
def test_coordinates_are_numpy_nonzero(density):
    """Flat indices for sparse maps, np.nonzero for dense ones: the same arrays either way, views and labels too."""
    rng = np.random.default_rng(int(density * 100))
    mask = rng.random((70, 90)) < density
    labels = np.where(mask, rng.integers(1, 5, mask.shape), 0).astype(np.int32)
    for m in (mask, mask[2:-3, 1:-4], labels):
        ys, xs = coordinates(m)
        ref_ys, ref_xs = np.nonzero(m)
        assert np.array_equal(ys, ref_ys) and np.array_equal(xs, ref_xs) and ys.dtype == ref_ys.dtype


class TestSparseGroups:
    @pytest.mark.parametrize("density", [0.0, 0.001, 0.01, 0.019, 0.05, 0.4])
    def test_numbers_are_ndimage_labels(self, density):
        """Same groups and numbers as ndimage (raster order of first pixel), sparse or not, rows never wrap."""
        mask = random_mask(shape=(90, 130), density=density, seed=int(density * 1000))
        mask[5, -1] = mask[6, 0] = True  # end of a row next to the start of the next one: not neighbours
        expected, n = ndimage.label(mask, structure=EIGHT)
        ys, xs, groups, m = sparse_groups(mask)
        assert m == n and groups.dtype == np.int32
        assert np.array_equal(ys * mask.shape[1] + xs, np.flatnonzero(mask))
        assert np.array_equal(groups, expected[ys, xs])
        labels, k = label_groups(mask)
        assert k == n and labels.dtype == np.int32 and np.array_equal(labels, expected)
        for got, want in zip(pixel_groups(mask), (ys, xs, groups, n)):  # the dense path too
            assert np.array_equal(got, want)

    def test_long_diagonal_and_snake_are_one_group(self):
        mask = np.eye(50, dtype=bool) | np.eye(50, dtype=bool)[::-1]
        mask[10, :] = True
        _, _, groups, n = sparse_groups(mask)
        assert n == 1 and set(groups) == {1}


class TestKeepGroupsWith:
    def test_keeps_whole_seeded_groups(self):
        mask = np.zeros((7, 9), dtype=bool)
        mask[1, 1:4] = True  # group A
        mask[5, 5:8] = True  # group B
        mask[3, 8] = True  # group C
        seeds = np.zeros_like(mask)
        seeds[5, 7] = True  # in B
        seeds[0, 0] = True  # outside every group: ignored
        out = keep_groups_with(mask, seeds)
        expected = np.zeros_like(mask)
        expected[5, 5:8] = True
        assert np.array_equal(out, expected)

    @pytest.mark.parametrize("density", [0.01, 0.2])  # the sparse path and the labelling
    def test_matches_per_group_reference(self, density):
        mask = random_mask(density=density, seed=3)
        seeds = random_mask(density=0.01, seed=4)
        labels, n = ndimage.label(mask, structure=EIGHT)
        expected = np.zeros_like(mask)
        for k in range(1, n + 1):
            group = labels == k
            if (group & seeds).any():
                expected |= group
        assert np.array_equal(keep_groups_with(mask, seeds), expected)

    def test_shape_mismatch(self):
        with pytest.raises(ValueError, match="seeds"):
            keep_groups_with(np.zeros((3, 3), bool), np.zeros((3, 4), bool))


class TestGrow:
    def setup_method(self):
        self.seeds = np.zeros((5, 10), dtype=bool)
        self.seeds[2, 1] = True
        self.cand = np.zeros_like(self.seeds)
        self.cand[2, 2:7] = True  # chain of 5 pixels to the right
        self.cand[4, 9] = True  # not connected

    def test_one_step_adds_direct_neighbours_only(self):
        out = grow(self.seeds, self.cand, max_steps=1)
        assert np.flatnonzero(out[2]).tolist() == [1, 2]
        assert out.sum() == 2

    def test_three_steps(self):
        out = grow(self.seeds, self.cand, max_steps=3)
        assert np.flatnonzero(out[2]).tolist() == [1, 2, 3, 4]

    def test_until_stable(self):
        out = grow(self.seeds, self.cand)
        assert np.flatnonzero(out[2]).tolist() == [1, 2, 3, 4, 5, 6]
        assert not out[4, 9]
        assert out.sum() == 6

    def test_seeds_always_kept_and_zero_steps(self):
        assert np.array_equal(grow(self.seeds, self.cand, max_steps=0), self.seeds)
        lone = np.zeros_like(self.seeds)
        lone[0, 9] = True
        assert grow(lone, self.cand)[0, 9]

    @pytest.mark.parametrize("steps", [1, 2, 4, None])
    def test_matches_iterative_reference(self, steps):
        seeds = random_mask(density=0.01, seed=5)
        cand = random_mask(density=0.35, seed=6)
        ref = seeds.copy()
        for _ in range(steps if steps is not None else 10_000):
            new = ref | (ndimage.binary_dilation(ref, structure=EIGHT) & cand)
            if np.array_equal(new, ref):
                break
            ref = new
        assert np.array_equal(grow(seeds, cand, max_steps=steps), ref)

    def test_bad_steps(self):
        with pytest.raises(ValueError, match="max_steps"):
            grow(self.seeds, self.cand, max_steps=-2)


class TestCleanableMap:
    def test_order_of_operations(self):
        cmap = cleanable_map(
            (10, 12),
            skip_regions=[(2, 5, 3, 8)],
            flag_pixels=[(3, 4), (0, 0)],
            ignore_pixels=[(9, 11), (3, 4)],
            replace_pixels=[(7, 7, 3, 1)],
        )
        expected = np.ones((10, 12), dtype=bool)
        expected[2:5, 3:8] = False  # 15 skipped pixels
        expected[9, 11] = False
        expected[7, 7] = False
        # (3, 4) flagged then ignored -> False; (0, 0) stays True
        assert np.array_equal(cmap, expected)
        assert cmap.sum() == 120 - 15 - 2

    def test_flag_pixel_reenables_inside_region(self):
        cmap = cleanable_map((5, 5), skip_regions=[(0, 5, 0, 5)], flag_pixels=[(2, 3)])
        assert cmap.sum() == 1
        assert cmap[2, 3]

    @pytest.mark.parametrize(
        ("kwargs", "name"),
        [
            ({"skip_regions": [(0, 11, 0, 2)]}, "skip_regions"),
            ({"skip_regions": [(3, 3, 0, 2)]}, "skip_regions"),
            ({"skip_regions": [(0, 1, 0)]}, "skip_regions"),
            ({"flag_pixels": [(10, 0)]}, "flag_pixels"),
            ({"ignore_pixels": [(0, -1)]}, "ignore_pixels"),
            ({"ignore_pixels": [(0.0, 1)]}, "ignore_pixels"),
            ({"replace_pixels": [(1, 1, 2, 3)]}, "replace_pixels"),
            ({"replace_pixels": [(1, 1, 1, 1)]}, "replace_pixels"),
        ],
    )
    def test_validation(self, kwargs, name):
        with pytest.raises(ValueError, match=name):
            cleanable_map((10, 12), **kwargs)


class TestTables:
    def make_labels(self):
        mask = np.zeros((6, 7), dtype=bool)
        mask[1, 4:6] = True
        mask[2, 5] = True  # group 1: (1,4) (1,5) (2,5)
        mask[3, 0] = True
        mask[4, 1] = True  # group 2: (3,0) (4,1)
        labels, n = label_groups(mask)
        codes = np.zeros(mask.shape, dtype=np.int8)
        codes[1, 4], codes[1, 5], codes[2, 5] = 1, 3, 4
        codes[3, 0], codes[4, 1] = 2, 1
        return labels, n, codes

    def test_pixel_table(self):
        labels, _, codes = self.make_labels()
        table = group_pixel_table(labels, codes)
        assert table.dtype.names == ("cr_index", "x", "y", "code")
        assert table["code"].dtype == np.int8
        rows = [tuple(int(v) for v in r) for r in table]
        assert rows == [(1, 5, 2, 1), (1, 6, 2, 3), (1, 6, 3, 4), (2, 1, 4, 2), (2, 2, 5, 1)]

    def test_pixel_table_sorted_by_group_then_raster(self):
        labels, n = label_groups(random_mask(density=0.3, seed=7))
        table = group_pixel_table(labels, np.ones(labels.shape, np.int8))
        assert len(table) == np.count_nonzero(labels)
        key = table["cr_index"].astype(np.int64) * 10**8 + table["y"] * 10**4 + table["x"]
        assert np.all(np.diff(key) > 0)
        assert np.all(labels[table["y"] - 1, table["x"] - 1] == table["cr_index"])

    def test_summary(self):
        labels, n, _ = self.make_labels()
        summ = group_summary(labels, n)
        assert summ["cr_index"].tolist() == [1, 2]
        assert summ["npix"].tolist() == [3, 2]
        assert summ["x_centroid"] == pytest.approx([(5 + 6 + 6) / 3, 1.5])
        assert summ["y_centroid"] == pytest.approx([(2 + 2 + 3) / 3, 4.5])
        assert summ["xmin"].tolist() == [5, 1]
        assert summ["xmax"].tolist() == [6, 2]
        assert summ["ymin"].tolist() == [2, 4]
        assert summ["ymax"].tolist() == [3, 5]

    def test_summary_matches_ndimage(self):
        labels, n = label_groups(random_mask(density=0.25, seed=8))
        summ = group_summary(labels, n)
        idx = np.arange(1, n + 1)
        cen = np.array(ndimage.center_of_mass(np.ones(labels.shape), labels, idx))
        assert np.allclose(summ["y_centroid"], cen[:, 0] + 1)
        assert np.allclose(summ["x_centroid"], cen[:, 1] + 1)
        for rec, slc in zip(summ, ndimage.find_objects(labels)):
            assert (rec["ymin"], rec["ymax"]) == (slc[0].start + 1, slc[0].stop)
            assert (rec["xmin"], rec["xmax"]) == (slc[1].start + 1, slc[1].stop)

    def test_summary_validation(self):
        labels, n, _ = self.make_labels()
        with pytest.raises(ValueError, match="n=1"):
            group_summary(labels, 1)
        with pytest.raises(ValueError, match="codes"):
            group_pixel_table(labels, np.zeros((2, 2), np.int8))
