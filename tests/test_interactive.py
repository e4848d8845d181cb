"""Tests for the interactive review, driven by real key events on Agg figures."""

from __future__ import annotations

import logging
import sys

import matplotlib
import numpy as np
import pytest
from matplotlib.backend_bases import KeyEvent

from megara_crdetect.config import parse_run_config
from megara_crdetect.core.pipeline import Detector, compute_crmasks
from megara_crdetect.errors import UserAbort
from megara_crdetect.review import interactive
from megara_crdetect.review._plot import agg_figure
from megara_crdetect.review.diagrams import mediancr_figure
from megara_crdetect.review.events import ReviewData
from megara_crdetect.review.interactive import DiagramKeys, VerifyKeys, make_review, run_review
from megara_crdetect.review.pages import CRPage

SHAPE = (120, 160)
RNOISE = 3.4
EVENTS = [(20, 30), (60, 90), (100, 130)]  # 0-based (row, col) of coincident 2-of-3 hits


def make_run(**requirements):
    rng = np.random.default_rng(11)
    y = np.arange(SHAPE[0])[:, None]
    scene = 20 + 300 * np.exp(-0.5 * ((y % 10 - 5) / 1.5) ** 2) * np.ones((1, SHAPE[1]))
    stack = np.stack([rng.poisson(scene) + rng.normal(0, RNOISE, SHAPE) for _ in range(3)]).astype(np.float32)
    for r, c in EVENTS:
        stack[1:, r, c] += 900
    cfg = parse_run_config({"images": ["a.fits", "b.fits", "c.fits"], "gain": 1.0, "rnoise": RNOISE, "bias": 0.0,
                            "requirements": {"crmethod": "mmcosmic", "mm_nsimulations": 3, "semiwindow": 5,
                                             **requirements}})
    res = compute_crmasks(stack.copy(), cfg.params, detector=Detector(1.0, RNOISE, 0.0), workers=1)
    labels = ReviewData(res, RNOISE, stack).events.labels
    injected = [labels[e] for e in EVENTS]
    assert all(injected)  # found by the pipeline
    res.mediancr &= np.isin(labels, injected)  # keep only the injected events (exact expectations below)
    res.mediancr_codes[~res.mediancr] = 0
    return res, stack, cfg


@pytest.fixture(scope="module")
def run():
    res, stack, cfg = make_run(interactive=True, verify_cr=True)
    labels = ReviewData(res, RNOISE, stack).events.labels
    assert [labels[e] for e in EVENTS] == [1, 2, 3] and labels.max() == 3
    return res, stack, cfg


def press(fig, key: str) -> None:
    """Send one real key-press event through the figure's canvas."""
    fig.canvas.callbacks.process("key_press_event", KeyEvent("key_press_event", fig.canvas, key))


@pytest.fixture
def panels(run):
    res, stack, _ = run
    fig = agg_figure((13, 10))
    return mediancr_figure(fig, ReviewData(res, RNOISE, stack))


class TestDiagramKeys:
    def test_q_continues(self, panels):
        keys = DiagramKeys(panels.fig, panels)
        press(panels.fig, "z")
        assert not keys.finished
        press(panels.fig, "q")
        assert keys.outcome == "continue"

    def test_x_aborts(self, panels):
        keys = DiagramKeys(panels.fig, panels)
        press(panels.fig, "x")
        assert keys.outcome == "abort"

    def test_question_mark_prints_the_keys(self, panels, capsys):
        keys = DiagramKeys(panels.fig, panels)
        press(panels.fig, "?")
        out = capsys.readouterr().out
        assert "q = continue" in out and "x = abort" in out and "exposure k in panel (d)" in out
        assert not keys.finished

    def test_digits_switch_panel_d(self, panels, run, capsys):
        res, stack, _ = run
        DiagramKeys(panels.fig, panels)
        press(panels.fig, "2")
        np.testing.assert_array_equal(panels.image_d.get_array(), stack[1])
        assert panels.ax["d"].get_title().startswith("(d) exposure 2")
        press(panels.fig, "0")
        np.testing.assert_array_equal(panels.image_d.get_array(), res.stats.mean2d)
        press(panels.fig, "7")  # no exposure 7: unchanged, message
        np.testing.assert_array_equal(panels.image_d.get_array(), res.stats.mean2d)
        assert "no exposure 7" in capsys.readouterr().out

    def test_zoom_in_a_follows_in_b_and_filters_c(self, panels, run):
        res, stack, _ = run
        DiagramKeys(panels.fig, panels)
        data = panels.data
        r, c = EVENTS[1]
        u, t = float(data.u[r, c]), float(data.t[r, c])
        code = int(res.mediancr_codes[r, c])
        total = len(panels.markers_c[code].get_xdata())
        assert total == 3
        panels.ax["a"].set_xlim(u * 0.999, u * 1.001)  # what the toolbar zoom does
        panels.ax["a"].set_ylim(t - 0.01, t + 0.01)
        assert panels.ax["b"].get_xlim() == panels.ax["a"].get_xlim()
        np.testing.assert_array_equal(panels.markers_c[code].get_xdata(), [c + 1])
        np.testing.assert_array_equal(panels.markers_c[code].get_ydata(), [r + 1])
        panels.ax["a"].set_ylim(0, 1e5)
        panels.ax["a"].set_xlim(data.grid.u_edges[0], data.grid.u_edges[-1])
        assert len(panels.markers_c[code].get_xdata()) == total
        panels.ax["c"].set_xlim(10, 20)
        assert panels.ax["d"].get_xlim() == (10, 20)


class TestVerifyKeys:
    @pytest.fixture
    def page(self, run):
        res, stack, _ = run
        fig = agg_figure((11, 6))
        return CRPage(fig, ReviewData(res, RNOISE, stack), semiwindow=5)

    def test_y_n_and_enter(self, page, run):
        res = run[0]
        keys = VerifyKeys(page.fig, page)
        assert "CR#1/3" in page.title.get_text() and "keep this cosmic ray?" in page.title.get_text()
        press(page.fig, "n")
        assert "CR#2/3" in page.title.get_text()
        press(page.fig, "enter")
        press(page.fig, "y")
        assert keys.outcome == "done"
        np.testing.assert_array_equal(keys.keep, [False, True, True])
        kept = keys.reduced(res.mediancr)
        labels = page.data.events.labels
        assert not kept[labels == 1].any()
        np.testing.assert_array_equal(kept[labels > 1], res.mediancr[labels > 1])

    def test_a_accepts_the_rest(self, page, run):
        keys = VerifyKeys(page.fig, page)
        press(page.fig, "y")
        press(page.fig, "a")
        assert keys.finished
        press(page.fig, "n")  # ignored once finished
        np.testing.assert_array_equal(keys.keep, [True, True, True])
        assert keys.reduced(run[0].mediancr) is run[0].mediancr

    def test_x_aborts_and_question_mark_helps(self, page, capsys):
        keys = VerifyKeys(page.fig, page)
        press(page.fig, "?")
        assert "n = remove it from MEDIANCR" in capsys.readouterr().out
        press(page.fig, "x")
        assert keys.outcome == "abort"


def scripted(script: list[list[str]]):
    """``new_figure`` / ``wait`` pair that answers each window with the next list of keys."""
    figures = []

    def new_figure(figsize, title, constrained):
        fig = agg_figure(figsize)
        fig.set_layout_engine("constrained" if constrained else None)
        figures.append(title)
        return fig

    def wait(fig, keys):
        for key in script.pop(0):
            press(fig, key)
        assert keys.finished

    return new_figure, wait, figures


class TestRunReview:
    def test_whole_flow_returns_the_reduced_mask(self, run, capsys):
        res, stack, cfg = run
        new_figure, wait, titles = scripted([["?", "q"], ["2", "0", "q"], ["y", "n", "y"]])
        kept = run_review(res, cfg, stack=stack, new_figure=new_figure, wait=wait)
        assert len(titles) == 3 and titles[2].startswith("verify")
        r, c = EVENTS[1]
        assert not kept[r - 1:r + 2, c - 1:c + 2].any()
        assert kept[EVENTS[0]] and kept[EVENTS[2]]
        assert int(kept.sum()) == int(res.mediancr.sum()) - 9  # event 2: one pixel + its dilation ring

    def test_without_verify_the_mask_is_unchanged(self, run):
        res, stack, cfg = run
        cfg2 = type(cfg)(cfg.inputs, cfg.params.replace(verify_cr=False))
        new_figure, wait, titles = scripted([["q"], ["q"]])
        assert run_review(res, cfg2, stack=None, new_figure=new_figure, wait=wait) is res.mediancr
        assert len(titles) == 2

    @pytest.mark.parametrize("script", [[["x"]], [["q"], ["x"]], [["q"], ["q"], ["y", "x"]]])
    def test_x_in_any_window_raises_user_abort(self, run, script):
        res, stack, cfg = run
        new_figure, wait, _ = scripted(script)
        with pytest.raises(UserAbort):
            run_review(res, cfg, stack=stack, new_figure=new_figure, wait=wait)


class TestNoDisplay:
    def test_headless_returns_mediancr_with_one_warning(self, run, monkeypatch, caplog):
        res, _, cfg = run
        monkeypatch.setenv("CI", "true")
        review = make_review(cfg)
        with caplog.at_level(logging.WARNING, logger="megara_crdetect.review.interactive"):
            assert review(res) is res.mediancr
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "review_edits.yaml" in warnings[0].getMessage()

    @pytest.mark.skipif(not sys.platform.startswith("linux"), reason="DISPLAY is a Linux/X11 notion")
    def test_reasons(self, monkeypatch):
        monkeypatch.delenv("CI", raising=False)
        monkeypatch.delenv("DISPLAY", raising=False)
        monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
        assert "DISPLAY" in interactive.no_display_reason()
        monkeypatch.setenv("DISPLAY", ":99")
        monkeypatch.setitem(matplotlib.rcParams, "backend", "agg")
        assert "'agg' is not interactive" in interactive.no_display_reason()
        monkeypatch.setenv("CI", "1")
        assert "CI" in interactive.no_display_reason()
