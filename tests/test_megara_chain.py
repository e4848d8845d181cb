"""Inside a real MEGARA reduction: megaradrp MegaraBiasImage -> ours -> megaradrp's meancr2 combination.

Raw frames come from megaradrp's own simulator (``tests/_megarasim.py``:
4212 x 4196, two amplifiers with gains 1.73/1.60 e-/ADU and biases
1000/1030 ADU).  One full-size OB is simulated once per module (the chain
needs megaradrp's real trim regions, so it cannot be smaller); the runs use
``crmethod: mmcosmic`` with two simulations to stay cheap.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits

pytestmark = pytest.mark.skipif(importlib.util.find_spec("megaradrp") is None,
                                reason="megaradrp (extra .[megara]) is not installed")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _megarasim as sim  # noqa: E402

from megara_crdetect.drp import INSTRUMENT, MODE  # noqa: E402
from megara_crdetect.drp.loader import load_drp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXPTIME = 100.0
FRAMES = ["science_1.fits", "science_2.fits", "science_3.fits"]
FAST = {"crmethod": "mmcosmic", "mm_nsimulations": 2}
REGISTRY = "numina-db.json"


def _hits(shape, rng):
    """Per-exposure cosmic-ray electrons: single hits, a 3-pixel track hit in exposures 1 and 2."""
    hits = np.zeros((3,) + shape, np.float32)
    for k in range(3):
        for y, x in zip(rng.integers(20, shape[0] - 20, 40), rng.integers(20, shape[1] - 20, 40)):
            hits[k, y, x:x + 2] += rng.uniform(2000, 8000)
    track = (slice(1500, 1503), slice(2000, 2001))  # in the electrons image (flipped by the readout)
    hits[0][track] += 6000.0
    hits[1][track] += 5000.0
    return hits, track


@pytest.fixture(scope="module")
def chain(tmp_path_factory, drpmocker_module):
    """The simulated OB, megaradrp's master bias and our crmasks.fits."""
    from megaradrp.loader import load_drp as load_megara
    from numina.user.session import Session

    base = tmp_path_factory.mktemp("megara")
    data = base / "data"
    data.mkdir()
    rng = np.random.default_rng(11)
    rate = sim.scene()
    hits, track = _hits(sim.SHAPE, rng)
    sim.write_bias_frames(data, 1)
    sim.write_science_frames(data, rate, list(hits), EXPTIME)
    drpmocker_module.add_drp("MEGARA", load_megara)
    drpmocker_module.add_drp(INSTRUMENT, load_drp)
    # with numina's registry of reductions (numina run --db): the products are recorded for later OBs
    session = Session(basedir=base, datadir=data, config=_run_config(base), db=REGISTRY)
    session.add_observations({"id": "bias", "instrument": "MEGARA", "mode": "MegaraBiasImage",
                              "frames": ["bias_1.fits"]})
    # the OB of obsresults/ (written as megaradrp's documentation writes it, plus the one switch)
    ob = yaml.safe_load((ROOT / "obsresults" / "megara_crdetection.yaml").read_text())
    assert ob["instrument"] == INSTRUMENT and ob["frames"] == FRAMES and "master_bias" not in ob["requirements"]
    session.add_observations({**ob, "id": "cr"})
    bias = session.run("bias")
    assert bias.state == 2
    bias_file = base / bias.request_runinfo["results_dir"] / "master_bias.fits"
    # megaradrp's calibration tree (as megaradrp-inittree makes it) and a copy to give by path
    tree = base / "calibrations" / "MEGARA" / sim.INSCONF / "MasterBias"
    tree.mkdir(parents=True)
    shutil.copy(bias_file, tree / "master_bias.fits")
    shutil.copy(bias_file, data / "master_bias.fits")
    task = session.run("cr", requirements={**FAST, "save_preprocessed": True})  # cheaper than the OB's
    return {"base": base, "data": data, "task": task, "rate": rate, "hits": hits, "track": track,
            "session": session, "results": base / task.request_runinfo["results_dir"],
            "work": base / task.request_runinfo["work_dir"]}


@pytest.fixture(scope="module")
def drpmocker_module():
    """numina's drpmocker for one module (only the DRPs added here are visible)."""
    from numina.testing.drpmocker import DRPMocker

    mp = pytest.MonkeyPatch()
    mocker = DRPMocker(mp)
    yield mocker
    mp.undo()


def _run_config(base: Path):
    from numina.user.cli import base_config

    config = base_config()
    config["tool.run"]["basedir"] = str(base)
    return config


def test_chain_masks_in_megaradrp_geometry(chain):
    assert chain["task"].state == 2
    work = chain["work"]  # save_preprocessed: megaradrp's names, trimmed, electrons
    with fits.open(work / "preprocessed_1.fits") as pre:
        assert pre[0].data.shape == (4112, 4096) and pre[0].header["BUNIT"] == "ELECTRON"
    assert (work / "preprocessed_median.fits").exists()
    with fits.open(chain["results"] / "crmasks.fits") as hdul:
        assert hdul["MEDIANCR"].shape == (4112, 4096)
        hdr = hdul[0].header
        assert hdr["INSTRUME"] == "MEGARA" and hdr["INSCONF"] == sim.INSCONF
        assert hdr["VPH"] == "LR-B" and hdr["INSMODE"] == "LCB" and hdr["EXPTIME"] == EXPTIME
        assert hdr["MBIASUID"] != "none"
        # the 2-of-3 track, where megaradrp's trimmed frame shows it (rows flipped by the readout)
        track = sim.trimmed_view(np.arange(np.prod(sim.SHAPE)).reshape(sim.SHAPE))[chain["track"]]
        flagged = np.flatnonzero(hdul["MEDIANCR"].data)
        assert np.isin(track.ravel(), flagged).all()


def test_chain_megaradrp_meancr2_combination(chain):
    """megaradrp's combination (what MegaraLcbImage calls with method: meancr2) accepts our masks."""
    combined = sim.megaradrp_combination(chain["data"], list(FRAMES), chain["results"] / "crmasks.fits", "meancr2")
    image = combined.data
    assert image.shape == (4112, 4096)
    truth = sim.trimmed_view(chain["rate"] * EXPTIME)
    track = chain["track"]
    flipped = (slice(4112 - track[0].stop, 4112 - track[0].start), track[1])
    # the coincidence is repaired: within 6 sigma of the noise-free truth (not +5000 e-)
    assert np.all(np.abs(image[flipped] - truth[flipped]) < 6 * np.sqrt(truth[flipped] + 3.4 ** 2) + 50)
    assert any("Masks uuid" in h for h in combined.header["HISTORY"])


# ---------------------------------------------------------------------------
# bad input through numina run: one ERROR line, no traceback, nothing written
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rawdir(tmp_path_factory) -> Path:
    """Raw-size MEGARA frames with constant levels (no simulation): enough for the input checks."""
    data = tmp_path_factory.mktemp("raw") / "data"
    data.mkdir()
    shape = (4212, 4196)
    for k, name in enumerate(FRAMES):
        fits.PrimaryHDU(np.full(shape, 1000.0, np.float32), header=sim.header("MegaraLcbImage", EXPTIME, k)
                        ).writeto(data / name)
    bias_hdr = sim.header("MegaraBiasImage", 0.0, 9)
    fits.PrimaryHDU(np.zeros(sim.SHAPE, np.float32), header=bias_hdr).writeto(data / "master_bias.fits")
    _odd_frames(data)
    return data


def _session(base: Path, data: Path, drpmocker, ob: dict):
    from numina.user.session import Session

    drpmocker.add_drp(INSTRUMENT, load_drp)
    session = Session(basedir=base, datadir=data, config=_run_config(base))
    session.add_observations(ob)
    return session


def _numina_run(base: Path, data: Path, ob: dict, *extra: str):
    import subprocess

    (base / f"{ob['id']}.yaml").write_text(yaml.safe_dump(ob))
    exe = Path(sys.executable).with_name("numina")
    out = subprocess.run([str(exe), "run", f"{ob['id']}.yaml", "--datadir", str(data), *extra], cwd=base,
                         capture_output=True, text=True, timeout=600)
    return out, out.stdout + out.stderr


def _odd_frames(data: Path) -> None:
    """A raw MEGARA frame with an unknown profile and a small frame of another instrument."""
    if not (data / "badprofile.fits").exists():
        with fits.open(data / FRAMES[0]) as hdul:
            hdul[0].header["INSCONF"] = "00000000-1111-2222-3333-444444444444"
            hdul.writeto(data / "badprofile.fits")
        hdr = sim.header("MegaraLcbImage", EXPTIME, 5)
        hdr["INSTRUME"] = "EMIR"
        fits.PrimaryHDU(np.zeros((64, 64), np.float32), header=hdr).writeto(data / "emir.fits")


@pytest.mark.parametrize("case, requirements, message", [
    ("nobias", {}, "ERROR: master_bias: required for raw MEGARA frames"),
    ("typo", {"master_bias": "master_bias.fits", "crmethdo": "mm_lacosmic"},
     "ERROR: requirements.crmethdo: unknown key (did you mean 'crmethod'?)"),
])
def test_numina_run_bad_megara_input(rawdir, tmp_path, case, requirements, message):
    """The ``numina run`` command itself: exit 1, one ERROR line, no traceback, no product."""
    data, base = rawdir, tmp_path
    ob = {"id": f"bad{case}", "instrument": INSTRUMENT, "mode": MODE, "frames": FRAMES,
          "requirements": {**FAST, **requirements}}
    out, text = _numina_run(base, data, ob)
    assert out.returncode == 1 and "Traceback" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and errors[0].startswith(message), errors
    assert not list((base / f"obsidbad{case}_results").glob("*.fits"))


@pytest.mark.parametrize("case, frames, requirements, message", [
    ("other", FRAMES[:2] + ["emir.fits"], {},
     "frame emir.fits: INSTRUME = 'EMIR', but the first frame is a raw MEGARA frame"),
    ("profile", ["badprofile.fits"] + FRAMES[1:], {},
     "frame badprofile.fits: no MEGARA instrument profile for INSCONF = '00000000-1111-2222-3333-444444444444'"),
    ("gain", FRAMES, {"gain": 1.73}, "gain = 1.73: not used with raw MEGARA frames"),
    ("missingbias", FRAMES, {"master_bias": "nothere.fits"}, "master_bias = nothere.fits: file not found"),
    ("badbias", FRAMES, {"master_bias": "science_1.fits"},
     "(4196, 4212) (NAXIS1, NAXIS2), but megaradrp's trimmed frames are (4096, 4112)"),
])
def test_session_bad_megara_input(rawdir, tmp_path, drpmocker, case, frames, requirements, message):
    """numina's run machinery (what ``numina run`` calls): ValidationError, printed as one ERROR line."""
    from numina.exceptions import ValidationError

    session = _session(tmp_path, rawdir, drpmocker, {
        "id": f"bad{case}", "instrument": INSTRUMENT, "mode": MODE, "frames": frames,
        "requirements": {**FAST, "master_bias": "master_bias.fits", **requirements}})
    with pytest.raises(ValidationError, match=re.escape(message)):
        session.run(f"bad{case}")
    assert not list((tmp_path / f"obsidbad{case}_results").glob("*.fits"))


# ---------------------------------------------------------------------------
# megaradrp's requirement block, as it is
# ---------------------------------------------------------------------------

#: keys of numina 0.40's computation that developer #16 adds to the schema
NUMINA_040_KEYS = ("dtype", "debug", "pc_sigma_det", "pc_rlim", "pc_iterations", "pc_fwhm_gauss_x",
                   "pc_fwhm_gauss_y", "pc_replace_box_x", "pc_replace_box_y", "pc_replace_error",
                   "pc_increase_radius", "pc_verbose", "dc_mask", "dc_threshold", "dc_verbose", "nn_model",
                   "nn_threshold", "nn_verbose", "mm_photon_distribution", "mm_nbinom_shape", "mm_synthetic",
                   "mm_hist2d_min_neighbors", "mm_ydiag_max", "mm_dilation")


def megaradrp_default_block() -> dict:
    """megaradrp's CRMasksRecipe parameters with their defaults (calibrations and frames left out)."""
    from megaradrp.recipes.calibration.crdetect import CRMasksRecipe
    from numina.core import Parameter

    return {k: r.default for k, r in CRMasksRecipe.requirements().items() if isinstance(r, Parameter)}


def test_megaradrp_keys_are_all_known():
    """Every key of megaradrp's recipe is a requirement of ours or has a one-line 'not supported' error."""
    from megara_crdetect.drp.recipes.crdetect import MegaraCrDetection, unknown_key_message

    ours = MegaraCrDetection.requirements()
    for key in megaradrp_default_block():
        if not dict.__contains__(ours, key):
            assert "not supported by megara-crdetect" in unknown_key_message(key), key
    for key in ("master_bias", "master_dark", "master_bpm", "save_preprocessed", "save_postprocessed"):
        assert dict.__contains__(ours, key)


def test_megaradrp_full_default_requirement_block_is_accepted():
    from megara_crdetect.config import parse_requirements
    from megara_crdetect.drp.recipes.crdetect import MegaraCrDetection, requirements_mapping

    ours = MegaraCrDetection.requirements()
    missing = [k for k in NUMINA_040_KEYS if not dict.__contains__(ours, k)]
    if missing:
        pytest.skip(f"needs numina 0.40 keys (#16): {', '.join(missing[:3])}...")
    from numina.core import ObservationResult

    block = megaradrp_default_block()
    assert all(key in ours for key in block)  # numina run's strict check
    rinput = MegaraCrDetection.create_input(obresult=ObservationResult(), **block)
    params = parse_requirements(requirements_mapping(rinput))
    assert params.crmethod == block["crmethod"] and rinput.rnoise == block["rnoise"]


def test_calibrations_found_in_megaradrp_tree(tmp_path):
    from megara_crdetect.megara import find_calibration

    tree = tmp_path / "MEGARA" / sim.INSCONF / "MasterBias"
    tree.mkdir(parents=True)
    fits.PrimaryHDU(np.zeros((4, 4), np.float32)).writeto(tree / "master_bias.fits")
    assert find_calibration("master_bias", sim.INSCONF, [tmp_path / "nothere", tmp_path]) == str(
        tree / "master_bias.fits")
    assert find_calibration("master_dark", sim.INSCONF, [tmp_path]) is None


# ---------------------------------------------------------------------------
# raw-looking data with bias 0 and gain 1: a warning, not silence
# ---------------------------------------------------------------------------


def test_raw_looking_data_with_bias_0_gain_1_warn(caplog):
    from megara_crdetect.io import to_electrons

    rng = np.random.default_rng(5)
    raw = (1000.0 + rng.normal(0, 3.4, (3, 120, 90))).astype(np.float32)
    with caplog.at_level("WARNING", logger="megara_crdetect"):
        to_electrons(raw.copy(), gain=1.0, bias=0.0)
    assert any(re.search(r"look raw: even their darkest pixels are at 99\d ADU", r.getMessage()) for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="megara_crdetect"):
        to_electrons(raw.copy(), gain=1.6, bias=1000.0)  # bias given: no warning
        to_electrons(raw - 1000.0, gain=1.0, bias=0.0)  # bias-subtracted data: no warning
    assert not caplog.records


# ---------------------------------------------------------------------------
# without megaradrp, and the command line
# ---------------------------------------------------------------------------

EXTRA = "pip install 'megara-crdetect[megara]'"


def _params(tmp_path: Path, data: Path, **top) -> Path:
    doc = {"images": [str(data / f) for f in FRAMES], **top, "requirements": FAST}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_raw_megara_frames_without_megaradrp_name_the_extra(rawdir, tmp_path, drpmocker, monkeypatch, capsys):
    from numina.exceptions import ValidationError

    from megara_crdetect import cli

    session = _session(tmp_path, rawdir, drpmocker, {
        "id": "nomeg", "instrument": INSTRUMENT, "mode": MODE, "frames": FRAMES,
        "requirements": {**FAST, "master_bias": "master_bias.fits"}})
    monkeypatch.setitem(sys.modules, "megaradrp", None)  # as if the extra were not installed
    out = tmp_path / "out"
    assert cli.main([str(_params(tmp_path, rawdir, master_bias=str(rawdir / "master_bias.fits"))),
                     "--output_dir", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert len(err) == 1 and err[0].startswith("error: frame science_1.fits is a raw MEGARA frame")
    assert err[0].endswith(EXTRA) and not list(out.glob("*.fits"))
    with pytest.raises(ValidationError, match=re.escape(EXTRA)):
        session.run("nomeg")


@pytest.mark.parametrize("top, message", [
    ({"gain": 1.6}, "error: gain = 1.6: not used with raw MEGARA frames"),
    ({"master_bias": "nothere.fits"}, "error: master_bias = 'nothere.fits': file not found"),
    ({}, "error: master_bias: required for raw MEGARA frames"),
])
def test_command_line_bad_megara_input(rawdir, tmp_path, capsys, top, message):
    from megara_crdetect import cli

    out = tmp_path / "out"
    assert cli.main([str(_params(tmp_path, rawdir, **top)), "--output_dir", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert len(err) == 1 and err[0].startswith(message), err
    assert not list(out.glob("*.fits"))


# ---------------------------------------------------------------------------
# megaradrp's science recipes find our crmasks.fits through numina's data lookup
# ---------------------------------------------------------------------------


def _lcb_crmasks(session, ob: dict):
    """What ``numina run`` does for the ``crmasks`` requirement of megaradrp's ``MegaraLcbImage``.

    The same numina calls as ``run_task_reduce``: the OB's observation result,
    the recipe of its mode, the references to the registry resolved with the
    recipe's types, then the requirement's own query (OB, command line,
    registry, control file, calibration tree).  The rest of MegaraLcbImage's
    inputs (wavelength calibration, traces, fibre flat) are not needed for it.
    """
    from numina.user.baserun import resolve_references

    session.add_observations(ob)
    dal = session.datamanager.backend
    with contextlib.chdir(session.datamanager.datadir):  # numina run works in the data folder
        obsres = dal.obsres_from_oblock_id(ob["id"])
        recipe = dal.search_recipe_from_ob(obsres)
        assert type(recipe).__module__ == "megaradrp.recipes.scientific.lcb"
        dal.sources = {}
        resolve_references(obsres, session.datamanager, {}, recipe)
        frame = recipe.requirements()["crmasks"].query(dal, obsres)
        frame.filename = os.path.abspath(frame.filename)
    return frame, dal.sources.get("crmasks", {})


def _uuid(frame) -> str:
    with frame.open() as hdul:
        return hdul[0].header["UUID"]


def _lcb_ob(name: str, **requirements) -> dict:
    return {"id": name, "instrument": "MEGARA", "mode": "MegaraLcbImage", "frames": FRAMES,
            "requirements": requirements}


def _our_uuid(chain) -> str:
    with fits.open(chain["results"] / "crmasks.fits") as hdul:
        return hdul[0].header["UUID"]


def test_our_crmasks_in_numina_registry(chain):
    """``numina run --db``: our crmasks.fits is recorded as a ``CRMasks`` product, under MEGARACR.

    numina selects registry products automatically only from the OB's own
    instrument, so a ``MegaraLcbImage`` OB (MEGARA) without a ``crmasks``
    line does not pick ours up (megaradrp's own CRMasks it would).
    """
    from numina.exceptions import NoResultFound
    from numina.user.session import Session

    base = chain["base"]
    ours = chain["session"].products(oblock_id="cr", field="crmasks")
    assert [(p["instrument"], p["type"]) for p in ours] == [(INSTRUMENT, "CRMasks")]
    assert (base / ours[0]["content"]).resolve() == (chain["results"] / "crmasks.fits").resolve()
    session = Session(basedir=base, datadir=chain["data"], config=_run_config(base), db=REGISTRY)
    with pytest.raises(NoResultFound):
        _lcb_crmasks(session, _lcb_ob("lcbauto"))


@pytest.mark.xfail(strict=True, raises=TypeError, reason=(
    "numina 0.40 bug: resolve_references -> requirement_types iterates req.type.node_type, a single type for "
    "MegaraLcbImage's list requirements ('PlainPythonType' object is not iterable): no registry reference "
    "works in a MegaraLcbImage OB, for megaradrp's own products either"))
def test_lcb_finds_our_crmasks_by_registry_reference(chain):
    """``crmasks: {result_of: <our OB>}`` in megaradrp's OB, with ``numina run --db``."""
    from numina.user.session import Session

    base = chain["base"]
    session = Session(basedir=base, datadir=chain["data"], config=_run_config(base), db=REGISTRY)
    frame, source = _lcb_crmasks(session, _lcb_ob("lcbreg", crmasks={"result_of": "cr"}))
    assert source["source"] == "registry" and _uuid(frame) == _our_uuid(chain)


def test_lcb_finds_our_crmasks_in_control_file_and_calibration_tree(chain, tmp_path):
    """Without a path in megaradrp's OB: numina's control file (-r), then the calibration tree (calibsdir)."""
    from numina.user.session import Session

    data = chain["data"]
    shutil.copy(chain["results"] / "crmasks.fits", data / "ours_crmasks.fits")
    control = {"version": 1, "products": {"MEGARA": {sim.INSCONF: [
        {"id": 1, "type": "CRMasks", "tags": {}, "content": "ours_crmasks.fits"}]}}}
    (tmp_path / "control.yaml").write_text(yaml.safe_dump(control))
    session = Session(basedir=tmp_path, datadir=data, control="control.yaml", config=_run_config(tmp_path))
    frame, source = _lcb_crmasks(session, _lcb_ob("lcbctl"))
    assert source["source"] == "control file" and _uuid(frame) == _our_uuid(chain)
    # megaradrp's calibration tree: <calibsdir>/MEGARA/<profile>/CRMasks/ (as megaradrp-inittree lays it out)
    tree = tmp_path / "calibs" / "MEGARA" / sim.INSCONF / "CRMasks"
    tree.mkdir(parents=True)
    shutil.copy(chain["results"] / "crmasks.fits", tree / "crmasks.fits")
    config = _run_config(tmp_path)
    config["tool.run"]["calibsdir"] = str(tmp_path / "calibs")
    session = Session(basedir=tmp_path, datadir=data, config=config)
    frame, source = _lcb_crmasks(session, _lcb_ob("lcbtree"))
    assert source["source"] == "calibrations directory" and _uuid(frame) == _our_uuid(chain)
    assert source["path"][0] == str(tree / "crmasks.fits")


# ---------------------------------------------------------------------------
# megaradrp's preprocessing: master dark, master bpm, the mirror read mode
# ---------------------------------------------------------------------------


def _frames(data: Path, names) -> list:
    from numina.types.dataframe import DataFrame

    return [DataFrame(filename=str(data / n)) for n in names]


def _calibration(path: Path, data: np.ndarray, obsmode: str) -> Path:
    hdr = sim.header(obsmode, 0.0, 20)
    fits.PrimaryHDU(data, header=hdr).writeto(path)
    return path


@pytest.fixture(scope="module")
def dark_bpm(chain):
    """A master dark (ADU/s) and a master BPM flagging the two pixels of a strong single hit of exposure 1."""
    data = chain["data"]
    dark = np.zeros(sim.SHAPE, np.float32)
    dark[100:200, 300:400] = 0.05  # in megaradrp's trimmed frame, ADU per second
    hit = sim.trimmed_view(chain["hits"][0]) > 1000
    any_hit = sim.trimmed_view(chain["hits"].sum(axis=0)) > 0
    # a 2-pixel hit of exposure 1 with no other hit within 5 columns, outside the dark patch
    y, x = next((y, x) for y, x in np.argwhere(hit[:, 10:-10] & hit[:, 11:-9]) + (0, 10)
                if any_hit[y, x - 5:x + 7].sum() == 2 and not (100 <= y < 200))
    bpm = np.zeros(sim.SHAPE, np.uint8)
    bpm[y, x:x + 2] = 1
    return {"dark": _calibration(data / "master_dark.fits", dark, "MegaraDarkImage"),
            "bpm": _calibration(data / "master_bpm.fits", bpm, "MegaraBadPixelMask"), "pixels": (y, x)}


def test_preprocess_applies_master_dark_and_bpm(chain, dark_bpm):
    from megara_crdetect.megara import preprocess

    data = chain["data"]
    bias = _frames(data, ["master_bias.fits"])[0]
    plain = preprocess(_frames(data, FRAMES[:1]), FRAMES[:1], master_bias=bias).stack[0]
    dark, bpm = _frames(data, ["master_dark.fits", "master_bpm.fits"])
    full = preprocess(_frames(data, FRAMES[:1]), FRAMES[:1], master_bias=bias, master_dark=dark, master_bpm=bpm)
    diff = plain - full.stack[0]
    # dark: 0.05 ADU/s x EXPTIME, times the gain of the amplifier reading that patch
    patch = diff[100:200, 300:400]
    # (float32: a 86 000 e- pixel rounds to 0.008 e-)
    assert any(np.allclose(patch, 0.05 * EXPTIME * gain, rtol=0, atol=0.02) for gain in sim.GAINS), patch.mean()
    y, x = dark_bpm["pixels"]
    untouched = np.ones(sim.SHAPE, bool)
    untouched[100:200, 300:400] = False
    untouched[y, x:x + 2] = False
    assert np.all(np.abs(diff[untouched]) < 0.02)  # float32 rounding only
    # the bad pixels (a hit of > 1000 e-) take the level of their clean row neighbours
    level = np.median(np.r_[plain[y, x - 3:x], plain[y, x + 2:x + 5]])
    assert np.all(plain[y, x:x + 2] - level > 1000)
    assert np.all(np.abs(full.stack[0][y, x:x + 2] - level) < 30), (full.stack[0][y, x:x + 2], level)
    assert full.calibrations["master_dark"] == _uuid(dark) and full.calibrations["master_bpm"] == _uuid(bpm)


def test_mirror_read_mode_as_megaradrp(chain, tmp_path):
    """A frame read in the mirror mode: trimmed exactly as megaradrp's MegaraLcbImage trims it.

    megaradrp 0.22 has no card for the read mode and its flows (TrimImage)
    always trim as ``normal``: each amplifier's half stays mirrored in X.  Ours
    gives the very same array, so our masks stay aligned with megaradrp's
    combination of the same frames.
    """
    from megara_crdetect.megara import preprocess

    rate = np.full(sim.SHAPE, 1.0, np.float32)
    marks = np.zeros(sim.SHAPE, np.float32)
    marks[1000, 100] = marks[3000, 200] = 50000.0  # one in each amplifier (electrons image)
    sim.write_science_frames(tmp_path, rate, [marks], EXPTIME, direction="mirror", prefix="mirror")
    frames = _frames(tmp_path, ["mirror_1.fits"])
    bias = _frames(chain["data"], ["master_bias.fits"])[0]
    ours = preprocess(frames, ["mirror_1.fits"], master_bias=bias).stack[0]
    assert ours.shape == (4112, 4096)
    flows = sim.megaradrp_lcb_flows(frames, tmp_path / "mirror_1.fits", bias)
    with frames[0].open() as hdul:
        theirs = hdul
        for flow in flows:
            theirs = flow(fits.HDUList([h.copy() for h in theirs]))
        theirs = theirs[0].data
    np.testing.assert_array_equal(ours, theirs)
    # where the marks are: rows flipped by the readout, columns mirrored in each amplifier
    found = {tuple(p) for p in np.argwhere(ours > 20000)}
    assert found == {(4111 - 1000, 4095 - 100), (4111 - 3000, 4095 - 200)}


# ---------------------------------------------------------------------------
# the command line on raw MEGARA frames
# ---------------------------------------------------------------------------


def test_command_line_on_raw_megara_frames(chain, dark_bpm, tmp_path):
    """``numina-crmasks params.yaml`` on raw frames + megaradrp's calibrations: products in 4112 x 4096."""
    import subprocess

    data = chain["data"]
    params = _params(tmp_path, data, master_bias=str(data / "master_bias.fits"),
                     master_dark=str(dark_bpm["dark"]), master_bpm=str(dark_bpm["bpm"]))
    exe = Path(sys.executable).with_name("numina-crmasks")
    out = tmp_path / "out"
    run = subprocess.run([str(exe), str(params), "--output_dir", str(out)], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    products = sorted(p.name for p in out.glob("*.fits"))
    assert "crmasks.fits" in products and "combined_meancr2.fits" in products
    with fits.open(out / "crmasks.fits") as hdul:
        assert hdul["MEDIANCR"].shape == (4112, 4096)
        hdr = hdul[0].header
        assert hdr["INSTRUME"] == "MEGARA" and hdr["MBIASUID"] != "none"
        assert hdr["MDARKUID"] == _uuid(_frames(data, ["master_dark.fits"])[0])
        assert hdr["MBPMUID"] == _uuid(_frames(data, ["master_bpm.fits"])[0])
        track = sim.trimmed_view(np.arange(np.prod(sim.SHAPE)).reshape(sim.SHAPE))[chain["track"]]
        assert np.isin(track.ravel(), np.flatnonzero(hdul["MEDIANCR"].data)).all()
    for name in products:
        with fits.open(out / name) as hdul:
            assert hdul[0].data is None or hdul[0].data.shape == (4112, 4096), name
            assert all(h.data is None or h.data.ndim != 2 or h.data.shape == (4112, 4096) for h in hdul), name
