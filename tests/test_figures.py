"""Tests for the review products: events, region/CSV/edits files, PNG figures and PDF pages."""

from __future__ import annotations

import re
import types

import numpy as np
import pytest
import yaml
from matplotlib.image import imread

from megara_crdetect.config import parse_requirements, parse_run_config
from megara_crdetect.core.pipeline import Detector, compute_crmasks
from megara_crdetect.review import pages, regions
from megara_crdetect.review.events import ReviewData, find_events, label_events, near_misses
from megara_crdetect.review import extras
from megara_crdetect.review.figures import _save_png, write_figures

SHAPE = (200, 300)
RNOISE = 3.4
#: 0-based (row, col) of the injected 2-of-3 cosmic rays (2 pixels: col and col + 1)
EVENTS = [(40, 50), (100, 150), (160, 250), (20, 280)]
USER = (10, 10)  # FITS [X, Y] of pixels_to_be_flagged_as_cr


def make_stack(seed: int = 5) -> np.ndarray:
    """Fibre-like scene, Poisson + read noise, single hits and four coincident 2-of-3 hits."""
    rng = np.random.default_rng(seed)
    y = np.arange(SHAPE[0])[:, None]
    scene = 20 + 400 * np.exp(-0.5 * ((y % 12 - 6) / 1.5) ** 2) * np.ones((1, SHAPE[1]))
    stack = np.stack([rng.poisson(scene) + rng.normal(0, RNOISE, SHAPE) for _ in range(3)]).astype(np.float32)
    for k in range(3):
        rr, cc = rng.integers(0, SHAPE[0], 60), rng.integers(0, SHAPE[1], 60)
        stack[k, rr, cc] += rng.uniform(200, 2000, 60).astype(np.float32)
    for r, c in EVENTS:
        stack[:2, r, c] += 850
        stack[:2, r, c + 1] += 280
    return stack


def make_run(**requirements):
    """(result, stack, cfg) of a small MM run; one event relabelled LA only for the figures."""
    stack = make_stack()
    req = {"crmethod": "mmcosmic", "mm_nsimulations": 3, "pixels_to_be_flagged_as_cr": [list(USER)],
           "semiwindow": 6, **requirements}
    cfg = parse_run_config({"images": ["a.fits", "b.fits", "c.fits"], "gain": 1.0, "rnoise": RNOISE, "bias": 0.0,
                            "requirements": req})
    res = compute_crmasks(stack.copy(), cfg.params, detector=Detector(1.0, RNOISE, 0.0), workers=1)
    r, c = EVENTS[0]
    res.mediancr_codes[r, c] = 4  # pretend L.A.Cosmic confirmed it too
    r, c = EVENTS[1]
    res.mediancr_codes[r, c:c + 2] = 3  # ... and found this one alone
    return res, stack, cfg


@pytest.fixture(scope="module")
def run():
    return make_run()


def stage_in(path):
    path.mkdir(exist_ok=True)
    return types.SimpleNamespace(directory=path, path=lambda name: path / name)


def pdf_pages(path) -> int:
    return len(re.findall(rb"/Type\s*/Page\b(?!s)", path.read_bytes()))


# ---------------------------------------------------------------------------
# events
# ---------------------------------------------------------------------------


class TestEvents:
    def test_groups_numbered_in_raster_order_with_counts(self):
        mask = np.zeros((10, 12), bool)
        codes = np.zeros((10, 12), np.int8)
        mask[7, 2:5] = True  # second event (row 7)
        codes[7, 2:5] = [1, 2, 1]
        mask[1, 9] = mask[2, 10] = True  # first event, diagonal neighbours (8-connected)
        codes[1, 9], codes[2, 10] = 3, 4
        t = np.arange(120, dtype=np.float32).reshape(10, 12) / 10
        ev = find_events(mask, codes, t)
        assert len(ev) == 2
        np.testing.assert_array_equal(ev.npix, [2, 3])
        np.testing.assert_array_equal([ev.n_la[0], ev.n_both[0], ev.n_mm[1], ev.n_dilation[1]], [1, 1, 1, 2])
        assert (ev.x_peak[0], ev.y_peak[0]) == (11, 3)  # FITS of (row 2, col 10): largest t
        assert (ev.x_centre[1], ev.y_centre[1]) == (4.0, 8.0)
        assert (ev.xmin[1], ev.xmax[1], ev.ymin[1], ev.ymax[1]) == (3, 5, 8, 8)
        assert ev.t_max[1] == pytest.approx(t[7, 4])
        assert ev.method(0) == "LA+MM" and ev.method(1) == "MM only"
        assert np.isnan(ev.margin_max).all()

    def test_labels_are_eight_connected(self):
        mask = np.eye(5, dtype=bool)
        labels, n = label_events(mask)
        assert n == 1 and labels[4, 4] == 1

    def test_window_clipped_at_the_image_edge(self):
        mask = np.zeros((20, 20), bool)
        mask[0, 19] = True
        ev = find_events(mask, mask.astype(np.int8) * 2, np.zeros((20, 20)))
        assert ev.window(0, 5, (20, 20)) == (0, 11, 9, 20)  # moved inward at the edge, not cut

    def test_near_misses_sorted_closest_first(self):
        margin = np.full((4, 4), -5.0)
        margin[1, 1], margin[2, 3], margin[0, 0] = -0.2, -0.9, 0.5
        exclude = np.zeros((4, 4), bool)
        np.testing.assert_array_equal(near_misses(margin, exclude), [[1, 1], [2, 3]])
        exclude[1, 1] = True
        np.testing.assert_array_equal(near_misses(margin, exclude), [[2, 3]])

    def test_review_data_matches_the_pipeline_normalisation(self, run):
        res, stack, cfg = run
        data = ReviewData(res, RNOISE, stack)
        r, c = EVENTS[2]
        expected = (res.stats.median2d[r, c] - res.stats.min2d[r, c]) / data.u[r, c]
        assert data.t[r, c] == pytest.approx(expected, rel=1e-5)
        assert data.margin[r, c] > 0  # flagged by MM: above its boundary
        # the margin is interpolated only where it can exceed -MARGIN_DEPTH and at MEDIANCR: the same values
        # there as over the whole frame, and below the depth elsewhere
        from megara_crdetect.review.events import MARGIN_DEPTH

        whole = data.margin_of(data.t, data.boundary)
        exact = (whole > -MARGIN_DEPTH) | res.mediancr
        assert exact.any() and (~exact).any()
        np.testing.assert_array_equal(data.margin[exact], whole[exact])
        rest = data.margin[~exact]
        assert (rest <= -MARGIN_DEPTH).all() and np.isneginf(rest).mean() > 0.5
        np.testing.assert_array_equal(rest[np.isfinite(rest)], whole[~exact][np.isfinite(rest)])
        if getattr(res, "noise", None) is not None:
            assert data.u is res.noise


# ---------------------------------------------------------------------------
# text products
# ---------------------------------------------------------------------------


class TestTextProducts:
    @pytest.fixture(scope="class")
    def data(self, run):
        res, stack, _ = run
        return ReviewData(res, RNOISE, stack)

    def test_every_injected_event_is_an_event(self, data):
        ev = data.events
        for r, c in EVENTS:
            assert ev.labels[r, c] > 0
        assert ev.labels[USER[1] - 1, USER[0] - 1] > 0
        assert len(ev) == ev.labels.max()

    def test_ds9_regions(self, data):
        ev = data.events
        text = regions.ds9_regions(ev)
        lines = text.splitlines()
        assert lines[0] == "# Region file format: DS9 version 4.1" and lines[3] == "image"
        boxes = [ln for ln in lines if ln.startswith("box(")]
        assert len(boxes) == len(ev)
        i = ev.labels[EVENTS[1]] - 1  # LA only: red, 2 x 1 px + dilation ring -> 4 x 3 px + 1 px margin
        m = re.match(r"box\(([\d.]+),([\d.]+),(\d+),(\d+),0\) # color=(\w+) text=\{CR#(\d+)\}", boxes[i])
        assert m is not None
        xc, yc, w, h, colour, number = m.groups()
        assert (colour, int(number)) == ("red", i + 1)
        assert float(xc) == pytest.approx(EVENTS[1][1] + 1.5) and float(yc) == pytest.approx(EVENTS[1][0] + 1)
        assert (int(w), int(h)) == (6, 5)
        colours = {re.search(r"color=(\w+)", b).group(1) for b in boxes}
        assert {"red", "blue", "yellow", "magenta"} <= colours

    def test_candidates_csv(self, data):
        ev = data.events
        text = regions.candidates_csv(ev, data.stats.median2d, data.stats.min2d)
        rows = [ln.split(",") for ln in text.splitlines()]
        assert tuple(rows[0]) == regions.CSV_COLUMNS
        assert len(rows) == len(ev) + 1
        col = {name: k for k, name in enumerate(rows[0])}
        i = ev.labels[EVENTS[2]] - 1
        row = rows[i + 1]
        assert int(row[col["cr_number"]]) == i + 1
        assert (int(row[col["x_peak"]]), int(row[col["y_peak"]])) == (EVENTS[2][1] + 1, EVENTS[2][0] + 1)
        assert int(row[col["npix"]]) == ev.npix[i] and row[col["method"]] == "MM only"
        assert float(row[col["t_max"]]) > float(row[col["margin_max"]]) > 0
        assert float(row[col["median_peak"]]) == pytest.approx(data.stats.median2d[EVENTS[2]], abs=0.05)

    def test_review_edits_parse_when_uncommented(self, data):
        ev = data.events
        text = regions.review_edits_yaml(ev, near=[(5, 6, 4.2, -0.3)])
        assert parse_requirements(yaml.safe_load(text)["requirements"]).pixels_to_be_flagged_as_cr == ()
        uncomment = re.compile(r"^(\s*)#(\s+- \[)", re.M)
        lines = text.splitlines(keepends=True)
        flagged_end = next(k for k, ln in enumerate(lines) if "pixels_to_be_ignored_as_cr" in ln)
        only_flagged = "".join(uncomment.sub(r"\1 \2", ln) for ln in lines[:flagged_end]) + "".join(lines[flagged_end:])
        cfg = parse_requirements(yaml.safe_load(only_flagged)["requirements"])
        assert len(cfg.pixels_to_be_flagged_as_cr) == len(ev) + 1
        assert (ev.x_peak[0], ev.y_peak[0]) in cfg.pixels_to_be_flagged_as_cr
        assert (5, 6) in cfg.pixels_to_be_flagged_as_cr
        cfg = parse_requirements(yaml.safe_load(uncomment.sub(r"\1 \2", text))["requirements"])
        detected = int(np.count_nonzero(ev.codes >= 2))
        assert len(cfg.pixels_to_be_ignored_as_cr) == detected
        r, c = EVENTS[3]
        assert (c + 1, r + 1) in cfg.pixels_to_be_ignored_as_cr
        assert re.search(r"#  - \[\d+, \d+\]   # CR#1 .*, \d+ px, t=[\d.]+", text)


# ---------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------


class TestWriteFigures:
    @pytest.fixture(scope="class")
    def written(self, run, tmp_path_factory):
        res, stack, cfg = run
        out = tmp_path_factory.mktemp("figures")
        calls = []
        timings = write_figures(res, stack, cfg, stage_in(out), progress=lambda *a: calls.append(a), strict=True)
        return out, timings, calls, ReviewData(res, RNOISE, stack)

    @pytest.mark.parametrize("name, size", [
        ("diagnostic_histogram2d.png", (1200, 1560)), ("diagnostic_mediancr.png", (1200, 1560)),
        ("diagnostic_meancr.png", (660, 1560)), ("diagnostic_crmask1.png", (660, 1560)),
        ("diagnostic_crmask3.png", (660, 1560))])
    def test_png_files(self, written, name, size):
        img = imread(written[0] / name)
        assert img.shape[:2] == size
        assert img[..., :3].std() > 0.05  # not a blank canvas

    def test_one_page_per_event_and_progress(self, written):
        out, timings, calls, data = written
        n = len(data.events)
        assert n >= 5 and timings["pages"] == n
        assert pdf_pages(out / "mediancr_identified_cr.pdf") == n
        assert calls[-1] == ("CR pages", n, n) and len(calls) == n

    def test_review_files_written(self, written):
        out, _, _, data = written
        assert len((out / "mediancr_candidates.csv").read_text().splitlines()) == len(data.events) + 1
        assert (out / "mediancr_regions.reg").read_text().count("box(") == len(data.events)
        assert "pixels_to_be_ignored_as_cr:" in (out / "review_edits.yaml").read_text()

    def test_optional_files_absent(self, written):
        out = written[0]
        for name in ("problematic_pixels.pdf", "flux_factor1.png", "xyoffset_crosscorr_1.png"):
            assert not (out / name).exists()


class TestPages:
    @pytest.mark.parametrize("maxplots, expected", [(0, 0), (2, 2)])
    def test_maxplots(self, run, tmp_path, maxplots, expected):
        res, stack, _ = run
        data = ReviewData(res, RNOISE, stack)
        n, _ = pages.write_cr_pdf(tmp_path / "cr.pdf", data, maxplots=maxplots, color_scale="minmax")
        assert n == expected
        assert (tmp_path / "cr.pdf").exists() == (expected > 0)
        if expected:
            assert pdf_pages(tmp_path / "cr.pdf") == expected

    def test_page_content_follows_the_event(self, run):
        from megara_crdetect.review._plot import agg_figure

        res, stack, cfg = run
        data = ReviewData(res, RNOISE, stack)
        page = pages.CRPage(agg_figure((10, 5)), data, semiwindow=6, color_scale="minmax")
        i = data.events.labels[EVENTS[2]] - 1
        page.draw_event(i)
        r, c = EVENTS[2]  # the event is columns c, c + 1 (+ dilation): centroid c + 0.5, rounded to c + 1
        x = c + 2  # FITS X of the window centre
        assert page.median.image.get_extent() == [x - 6.5, x + 6.5, r + 1 - 6.5, r + 1 + 6.5]
        np.testing.assert_array_equal(page.top[1].image.get_array(), stack[1, r - 6:r + 7, c - 5:c + 8])
        corrected = page.fixed.image.get_array()
        assert corrected[6, 5] == res.stats.min2d[r, c]  # CR pixel repaired with min2d
        assert corrected[0, 0] == res.stats.median2d[r - 6, c - 5]
        assert page.codes.image.get_array()[6, 5] == res.mediancr_codes[r, c]
        assert f"CR#{i + 1}/{len(data.events)}" in page.title.get_text()

    def test_problematic_pdf(self, run, tmp_path):
        res, stack, _ = run
        prob = np.zeros(SHAPE, bool)
        prob[30:32, 40] = prob[150, 200] = True
        data = ReviewData(types.SimpleNamespace(**{**vars(res), "problematic": prob}), RNOISE, stack)
        assert pages.write_problematic_pdf(tmp_path / "p.pdf", data) == 2
        assert pdf_pages(tmp_path / "p.pdf") == 2
        data0 = ReviewData(res, RNOISE, stack)
        assert pages.write_problematic_pdf(tmp_path / "none.pdf", data0) == 0 and not (tmp_path / "none.pdf").exists()


def pdf_objects(path) -> dict[int, tuple[bytes, bytes]]:
    """Objects of a PDF written by :mod:`lightpdf`: number -> (dictionary, decompressed stream or b"")."""
    import zlib

    raw = path.read_bytes()
    out = {}
    for m in re.finditer(rb"(\d+) 0 obj\n(<<.*?>>)(\nstream\n)?", raw, re.S):
        body, stream = m.group(2), b""
        if m.group(3):
            n = int(re.search(rb"/Length (\d+)", body).group(1))
            stream = zlib.decompress(raw[m.end():m.end() + n])
        out[int(m.group(1))] = (body, stream)
    return out


class TestLightPdf:
    def test_file_structure_text_and_images(self, tmp_path):
        from megara_crdetect.review import lightpdf

        path = tmp_path / "t.pdf"
        rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
        with lightpdf.PdfWriter(path) as pdf:
            for k in range(3):
                page = pdf.page(200, 100)
                page.image(rgb, 10, 10, 30, 20)
                page.text(100, 50, f"page (#{k + 1}) a\\b", ha="center")
                page.markers([50, 60, np.nan], [50, 60, 70], marker="o", size=5, color="red")
                pdf.add(page)
        raw = path.read_bytes()
        assert raw.startswith(b"%PDF-1.4") and raw.rstrip().endswith(b"%%EOF") and pdf_pages(path) == 3
        # every cross-reference entry points at its object, startxref at the table
        start = int(raw.rsplit(b"startxref", 1)[1].split()[0])
        assert raw[start:].startswith(b"xref")
        rows = raw[start:].split(b"\n")[2:]
        for number, row in enumerate(rows[1:9], start=1):
            offset, _, kind = row.split()
            if kind == b"n":
                assert raw[int(offset):].startswith(b"%d 0 obj" % number)
        objs = pdf_objects(path)
        contents = [s for body, s in objs.values() if s and b"/Image" not in body]
        assert len(contents) == 3 and b"(page \\(#2\\) a\\\\b) Tj" in contents[1]
        images = [s for body, s in objs.values() if b"/Image" in body]
        assert len(images) == 3 and images[0] == rgb[::-1].tobytes()  # top row first
        assert b"/Count 3" in b" ".join(body for body, _ in objs.values())
        assert all(b"nan" not in c for c in contents) and contents[0].count(b" c h") == 2  # two circles, not three

    def test_text_width_from_the_font_metrics(self):
        from megara_crdetect.review.lightpdf import text_width

        assert text_width("ab", 10) == pytest.approx((556 + 556) / 100)  # Helvetica a and b: 556/1000 em
        assert text_width("ab", 10, "mono") == pytest.approx(12.0)

    def test_cr_page_shows_the_event(self, run, tmp_path):
        from matplotlib import colormaps, colors

        from megara_crdetect.review.lightpdf import rgb_image

        res, stack, _ = run
        data = ReviewData(res, RNOISE, stack)
        i = data.events.labels[EVENTS[2]] - 1
        pages.write_cr_pdf(tmp_path / "cr.pdf", data, maxplots=i + 1, semiwindow=6, color_scale="minmax")
        objs = pdf_objects(tmp_path / "cr.pdf")
        ev = data.events
        content = [s for body, s in objs.values() if s and b"/Image" not in body][i].decode("latin-1")
        assert f"(CR#{i + 1}/{len(ev)}: " in content
        assert f"(peak pixel [X, Y] = [{ev.x_peak[i]}, {ev.y_peak[i]}])" in content
        assert "(MM diagram of this event)" in content and "(exposure 3)" in content
        # the exposure 2 cut-out, colour-mapped with the median's limits, is one of the page's images
        r, c = EVENTS[2]
        med = res.stats.median2d[r - 6:r + 7, c - 5:c + 8]
        norm = colors.Normalize(float(med.min()), float(med.max()))
        expected = rgb_image(stack[1, r - 6:r + 7, c - 5:c + 8], colormaps["gray"], norm)[::-1].tobytes()
        page_images = [s for body, s in objs.values() if b"/Image" in body][6 * i:6 * (i + 1)]
        assert expected in page_images


class TestOptionalFigures:
    @pytest.fixture(scope="class")
    def written(self, run, tmp_path_factory):
        res, stack, cfg = run
        res = types.SimpleNamespace(**{**vars(res), "flux_factors": np.array([0.98, 1.0, 1.03]),
                                       "offsets": np.array([[0.5, -0.25], [0.0, 0.0], [-1.0, 0.5]])})
        params = cfg.params.replace(flux_factor="auto", flux_factor_regions=((1, 300, 1, 100),),
                                    mm_crosscorr_region=(20, 120, 20, 120))
        out = tmp_path_factory.mktemp("optional")
        timings = {}
        jobs = extras.png_jobs(ReviewData(res, RNOISE, stack), type(cfg)(cfg.inputs, params))
        assert [j[0] for j in jobs] == ["image_number_at_median_position.png", "flux_factor1.png", "flux_factor2.png",
                                        "flux_factor3.png", "xyoffset_crosscorr_1.png", "xyoffset_crosscorr_2.png",
                                        "xyoffset_crosscorr_3.png"]
        for name, build, size, adjust in jobs:
            if "2.png" not in name:  # exposure 2 draws like the others: save time
                _save_png(out / name, build, size, adjust)
                timings[name] = 1
        return out, timings

    @pytest.mark.parametrize("name, size", [("image_number_at_median_position.png", (660, 1560)),
                                            ("flux_factor1.png", (660, 960)), ("flux_factor3.png", (660, 960)),
                                            ("xyoffset_crosscorr_1.png", (960, 1200)),
                                            ("xyoffset_crosscorr_3.png", (960, 1200))])
    def test_written(self, written, name, size):
        out, timings = written
        assert imread(out / name).shape[:2] == size
        assert name in timings

    def test_offset_panel_undoes_the_shift(self, run):
        from megara_crdetect.core.offsets import shift_image
        from megara_crdetect.review._plot import agg_figure
        from megara_crdetect.review.extras import offset_figure

        res, stack, _ = run
        shifted = np.stack([shift_image(stack[0], 1.0, -2.0), stack[1], stack[2]])
        fake = types.SimpleNamespace(**{**vars(res), "offsets": np.array([[1.0, -2.0], [0, 0], [0, 0]]),
                                        "flux_factors": np.ones(3)})
        fig = agg_figure((10, 8))
        offset_figure(fig, ReviewData(fake, RNOISE, shifted), 0, (40, 140, 40, 140))
        exposure, before, after = (fig.axes[k].images[0].get_array() for k in (1, 2, 3))
        np.testing.assert_allclose(exposure, shifted[0, 39:140, 39:140])
        assert np.abs(after).mean() < 0.5 * np.abs(before).mean()


@pytest.mark.parametrize("case", ["no_mm", "no_detection"])
def test_degenerate_runs_still_write_the_files(run, tmp_path, case):
    """crmethod without MM (no diagrams, no boundary) and a run without any detection."""
    res, stack, cfg = run
    changes = {"diagrams": None, "boundaries": {}, "expected_false": {}} if case == "no_mm" else {
        "mediancr": np.zeros(SHAPE, bool), "mediancr_codes": np.zeros(SHAPE, np.int8)}
    fake = types.SimpleNamespace(**{**vars(res), **changes})
    timings = write_figures(fake, stack, cfg, stage_in(tmp_path), strict=True)
    written = {p.name for p in tmp_path.iterdir()}
    assert ("diagnostic_histogram2d.png" in written) == (case != "no_mm")
    assert {"diagnostic_mediancr.png", "diagnostic_meancr.png", "mediancr_regions.reg", "review_edits.yaml"} <= written
    n_events = ReviewData(fake, RNOISE, stack).events.npix.size
    assert timings["pages"] == n_events and ("mediancr_identified_cr.pdf" in written) == (n_events > 0)
    csv = (tmp_path / "mediancr_candidates.csv").read_text().splitlines()
    assert len(csv) == n_events + 1
    if case == "no_mm":
        k = csv[0].split(",").index("margin_max")
        assert all(row.split(",")[k] == "nan" for row in csv[1:])  # no boundary


# ---------------------------------------------------------------------------
# pairs, readable diagrams, pages in the background (issue #19 figures, #21)
# ---------------------------------------------------------------------------


class TestPairsAreTheirOwnCategory:
    @pytest.fixture(scope="class")
    def ev(self):
        mask = np.zeros((12, 12), bool)
        codes = np.zeros((12, 12), np.int8)
        mask[2, 2:4] = True
        codes[2, 2:4] = 6  # pair only
        mask[8, 2:5] = True
        codes[8, 2], codes[8, 3], codes[8, 4] = 2, 6, 1  # MM + pair + dilation
        return find_events(mask, codes, np.arange(144, dtype=float).reshape(12, 12))

    def test_counts_method_and_category(self, ev):
        assert list(ev.n_pair) == [2, 1] and list(ev.n_mm) == [0, 1]
        assert (ev.method(0), ev.method(1)) == ("pair only", "MM+pair")
        assert (ev.category(0), ev.category(1)) == ("pair", "mm")

    def test_csv_regions_and_edits_name_pairs(self, ev):
        z = np.zeros((12, 12))
        rows = [ln.split(",") for ln in regions.candidates_csv(ev, z, z).splitlines()]
        col = {name: k for k, name in enumerate(rows[0])}
        assert [r[col["n_pair"]] for r in rows[1:]] == ["2", "1"]
        assert [r[col["method"]] for r in rows[1:]] == ["pair only", "MM+pair"]
        assert "color=cyan text={CR#1}" in regions.ds9_regions(ev)
        assert "cyan pair" in regions.ds9_regions(ev).splitlines()[1]
        assert "CR#1 pair only, 2 px" in regions.review_edits_yaml(ev)


def test_default_pages_are_capped_and_the_lists_stay_complete():
    assert pages.n_pages(1913, -1) == pages.DEFAULT_PAGES == 100
    assert pages.n_pages(1913, 500) == 500 and pages.n_pages(30, -1) == 30


def _line_data(ax, label):
    line = next(ln for ln in ax.get_lines() if ln.get_label().startswith(label))
    return np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)


def test_histogram_final_boundary_is_above_every_fit_and_axes_end_at_the_data(run):
    from megara_crdetect.review import diagrams
    from megara_crdetect.review._plot import agg_figure

    res, stack, cfg = run
    data = ReviewData(res, RNOISE, stack)
    fig = agg_figure((13, 10))
    diagrams.histogram_figure(fig, data)
    axes = fig.axes
    for ax in (axes[0], axes[2], axes[3]):  # simulated normalised, classic all signals, classic faint end
        x, final = _line_data(ax, "final boundary")
        assert len(x) >= 400
        for label in ("first fit", "extension"):
            fx, fy = _line_data(ax, label)
            np.testing.assert_array_equal(fx, x)
            assert np.all(final >= fy - 1e-9 * np.abs(fy))
    h = diagrams._histogram_inputs(data)
    assert axes[0].get_xlim()[1] <= h.u_top < data.grid.u_edges[-1] * 1.06
    x_data = float(np.max(data.u) ** 2 - RNOISE**2)
    assert axes[2].get_xlim()[1] == pytest.approx(x_data * 1.02, rel=0.02)


def test_event_numbers_do_not_overlap(run):
    from megara_crdetect.review import diagrams
    from megara_crdetect.review._plot import agg_figure

    res, stack, cfg = run
    data = ReviewData(res, RNOISE, stack)
    panels = diagrams.mediancr_figure(agg_figure((13, 10)), data)
    texts = panels.ax["b"].texts
    assert 0 < len(texts) <= diagrams.MAX_LABELS
    fig = panels.fig
    fig.canvas.draw()
    boxes = [t.get_window_extent() for t in texts]
    assert not any(a.overlaps(b) for k, a in enumerate(boxes) for b in boxes[k + 1:])


def test_edge_cutouts_keep_their_size(run):
    from megara_crdetect.review.events import cutout

    assert cutout(0, 299, 6, SHAPE) == (0, 13, 287, 300)
    assert cutout(100, 150, 6, SHAPE) == (94, 107, 144, 157)
    assert cutout(1, 1, 6, (5, 400)) == (0, 5, 0, 13)


def test_background_figures_write_the_same_files(run, tmp_path):
    from megara_crdetect.review.figures import start_figures

    res, stack, cfg = run
    serial, background = tmp_path / "serial", tmp_path / "background"
    write_figures(res, stack, cfg, stage_in(serial), strict=True)
    calls = []
    wait = start_figures(res, stack, cfg, stage_in(background), progress=lambda *a: calls.append(a), processes=2)
    wait()
    assert sorted(p.name for p in background.iterdir()) == sorted(p.name for p in serial.iterdir())
    for name in ("mediancr_candidates.csv", "mediancr_regions.reg", "review_edits.yaml"):
        assert (background / name).read_text() == (serial / name).read_text()
    assert pdf_pages(background / "mediancr_identified_cr.pdf") == pdf_pages(serial / "mediancr_identified_cr.pdf")
    # one job per file; the three review files are one job; problematic_pixels.pdf may be written empty-handed
    jobs = len(list(serial.iterdir())) - 2 + (not (serial / "problematic_pixels.pdf").exists())
    assert calls[-1] == ("figures", jobs, jobs)
    assert [c[1] for c in calls] == sorted(c[1] for c in calls)  # per file, in order
    assert not list(background.glob(".*"))  # no part file left


def complete(path) -> bool:
    """A PNG that decodes, a PDF with its end-of-file marker, a text file that ends with a newline."""
    if path.suffix == ".png":
        return imread(path).shape[0] > 100
    if path.suffix == ".pdf":
        return path.read_bytes().rstrip().endswith(b"%%EOF") and pdf_pages(path) > 0
    return path.read_text().endswith("\n")


def test_failed_figure_leaves_no_file(tmp_path):
    from megara_crdetect.review.figures import _atomic

    def half(part):
        part.write_bytes(b"\x89PNG half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _atomic(tmp_path / "a.png", half)
    assert list(tmp_path.iterdir()) == []


def test_killed_figure_processes_leave_only_complete_files(run, tmp_path, caplog):
    """Figure processes stopped half-way (SIGKILL while a file is being written): every file left under
    its name is complete, no part file stays, and the loss is reported."""
    import os
    import signal
    import time

    from megara_crdetect.review.figures import start_figures

    res, stack, cfg = run
    out = tmp_path / "killed"
    wait = start_figures(res, stack, cfg, stage_in(out), processes=2)
    deadline = time.monotonic() + 30
    while not list(out.glob(".*.part")) and time.monotonic() < deadline:
        time.sleep(0.001)
    assert list(out.glob(".*.part")), "no figure was being written"
    for proc in wait.processes:
        if proc.exitcode is None:
            os.kill(proc.pid, signal.SIGKILL)
    with caplog.at_level("ERROR", logger="megara_crdetect.review.figures"):
        wait()
    assert not list(out.glob(".*"))
    assert all(complete(p) for p in out.iterdir())
    assert "some figures are missing" in caplog.text


@pytest.mark.parametrize("step", [1, 3, 7])
def test_classic_points_read_in_chunks_are_the_whole_frame_ones(step):
    from megara_crdetect.review.diagrams import _ClassicPoints

    rng = np.random.default_rng(4)
    u = rng.uniform(3.4, 50.0, (101, 99)).astype(np.float32)
    med, low = (rng.normal(100.0, 5.0, (101, 99)).astype(np.float32) for _ in range(2))
    data = types.SimpleNamespace(u=u, stats=types.SimpleNamespace(median2d=med, min2d=low), rnoise_e=3.4)
    xy = _ClassicPoints(data, chunk=1000)
    x, y = (u**2 - np.float32(3.4**2)).ravel(), (med - low).ravel()
    assert np.array_equal(np.concatenate([c[0] for c in xy.chunks()]), x)
    assert np.array_equal(np.concatenate([c[1] for c in xy.chunks()]), y)
    x_max = float(np.median(x))
    assert np.array_equal(xy.every_selected(x_max, step), y[x <= x_max][::step])


@pytest.mark.parametrize("shape", [(700, 900), (1500,), (999,), (37, 41)])
def test_zscale_limits_are_astropys_on_its_own_sample(shape):
    """The sample is taken without copying the finite values first: the same limits as astropy's."""
    from astropy.visualization import ZScaleInterval

    from megara_crdetect.review._plot import limits

    image = np.random.default_rng(len(shape)).normal(100, 10, shape).astype(np.float32)
    image.reshape(-1)[::97] += 5000.0  # bright pixels for the rejection
    assert limits(image) == tuple(float(v) for v in ZScaleInterval().get_limits(image))
    image.reshape(-1)[5] = np.nan  # non-finite values: astropy's path
    assert limits(image) == tuple(float(v) for v in ZScaleInterval().get_limits(image))
