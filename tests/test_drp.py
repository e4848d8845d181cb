"""The numina plug-in (megara_crdetect.drp): entry point, DRP, requirements, runs through numina.

Pipeline runs use 300 x 200 simulated frames and ``crmethod: mmcosmic`` with
two simulations, so that each takes well under a second.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import importlib.util
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from numina.core import ObservationResult
from numina.exceptions import ValidationError
from numina.types.dataframe import DataFrame

import megara_crdetect
from megara_crdetect import cli
from megara_crdetect.config import (DEFAULT_FIXED_POINT_WEIGHT, CRMaskConfig, InputConfig, convert,
                                    params_yaml, parse_requirements)
from megara_crdetect.core.pipeline import COMBINATIONS
from megara_crdetect.drp import INSTRUMENT, MODE
from megara_crdetect.drp.loader import load_drp
from megara_crdetect.drp.recipes.crdetect import (CALIBRATION_KEYS, DETECTOR_KEYS, MegaraCrDetection, requirements_mapping,
                                                  schema_specs)
from megara_crdetect.errors import ConfigError, UserAbort
from megara_crdetect.examples import write_example, write_exposures
from megara_crdetect.simulate import simulate_exposures

ROOT = Path(__file__).resolve().parents[1]
OBSRESULTS = ROOT / "obsresults"
PROFILE_UUID = "2008b044-d936-4c92-91bf-d89b8f09a570"
MEGARA_INSCONF = "ca3558e3-e50d-4bbc-86bd-da50a0998a48"  # megaradrp's profile for 2017-2024 data
HAS_MEGARADRP = importlib.util.find_spec("megaradrp") is not None
FAST = {"crmethod": "mmcosmic", "mm_nsimulations": 2}
FRAMES = [f"ex/fake_{k}.fits" for k in (1, 2, 3)]
MASKS = ["MEDIANCR", "MEANCRT", "CRMASK1", "CRMASK2", "CRMASK3", "MEANCR"]


@pytest.fixture(scope="module")
def datadir(tmp_path_factory) -> Path:
    """``data/ex/fake_1..3.fits``: simulated frames with the headers of real MEGARA frames."""
    data = tmp_path_factory.mktemp("numina") / "data"
    (data / "ex").mkdir(parents=True)
    for path in write_exposures(simulate_exposures((200, 300), 3, seed=7), data / "ex"):
        fits.setval(path, "INSCONF", value=MEGARA_INSCONF)  # INSTRUME is already 'MEGARA'
    return data


def _numina(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("numina")
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def _session(basedir: Path, datadir: Path, config, requirements: dict, frames=FRAMES):
    from numina.user.session import Session

    session = Session(basedir=basedir, datadir=datadir, config=config)
    session.add_observations({"id": "ob1", "instrument": INSTRUMENT, "mode": MODE, "frames": list(frames),
                              "requirements": requirements})
    return session


def _input(**values):
    return MegaraCrDetection.create_input(obresult=ObservationResult(), **values)


def _obresult(frames) -> ObservationResult:
    ob = ObservationResult(instrument=INSTRUMENT, mode=MODE)
    ob.frames = list(frames)
    return ob


# ---------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------


def test_entry_point_loads_the_drp():
    eps = [ep for ep in importlib.metadata.entry_points(group="numina.pipeline.1") if ep.name == INSTRUMENT]
    assert [ep.value for ep in eps] == ["megara_crdetect.drp.loader:load_drp"]
    drp = eps[0].load()()
    assert drp.name == INSTRUMENT and list(drp.modes) == [MODE]
    assert drp.version == megara_crdetect.__version__
    assert type(drp.datamodel).__name__ == "MegaraCrDataModel"
    assert f"instrument-{PROFILE_UUID}.json" in drp.configurations
    recipe = drp.get_recipe_object(MODE)
    assert isinstance(recipe, MegaraCrDetection)
    assert (recipe.instrument, recipe.pipeline, recipe.drp_version) == (INSTRUMENT, "default", drp.version)


def test_instrument_configuration_is_package_data():
    files = importlib.resources.files("megara_crdetect.drp.instrument.configs")
    conf = json.loads((files / f"instrument-{PROFILE_UUID}.json").read_text())
    assert (conf["name"], conf["uuid"], conf["type"]) == (INSTRUMENT, PROFILE_UUID, "instrument")
    assert conf["date_start"].startswith("2000-01-01") and conf["date_end"] is None
    assert (importlib.resources.files("megara_crdetect.drp") / "drp.yaml").is_file()


def test_datamodel_maps_megara_frames_to_megaracr():
    header = fits.Header({"INSTRUME": "MEGARA", "INSCONF": MEGARA_INSCONF})
    hdul = fits.HDUList([fits.PrimaryHDU(header=header)])
    extractor = load_drp().datamodel.extractor_map["fits"]
    assert extractor.extract("instrument", hdul) == INSTRUMENT
    assert extractor.extract("insconf", hdul) is None


@pytest.fixture(scope="module")
def shown(tmp_path_factory) -> dict[str, str]:
    """Output of ``numina show-instruments`` and ``numina show-modes`` (installed entry points)."""
    cwd = tmp_path_factory.mktemp("show")
    out = {}
    for command in ("show-instruments", "show-modes"):
        run = _numina(command, cwd=cwd)
        assert run.returncode == 0, run.stderr
        assert "Problem loading" not in run.stderr and "differ" not in run.stderr
        out[command] = run.stdout
    return out


def _modes_of(show_modes: str, instrument: str) -> list[str]:
    """Mode keys of one instrument in the output of ``numina show-modes``."""
    pairs = re.findall(r"Observing Mode: .*\((\w+)\)\n(?: .*\n)*? instrument: (\w+)", show_modes)
    return [key for key, ins in pairs if ins == instrument]


def test_numina_show_instruments_lists_megaracr(shown):
    text = shown["show-instruments"]
    block = text[text.index(f"Instrument: {INSTRUMENT}\n"):]
    assert f"uuid={PROFILE_UUID}" in block
    assert "has datamodel 'megara_crdetect.drp.datamodel.MegaraCrDataModel'" in block
    assert _modes_of(shown["show-modes"], INSTRUMENT) == [MODE]


@pytest.mark.skipif(not HAS_MEGARADRP, reason="megaradrp is not installed")
def test_megaradrp_keeps_megara_and_all_its_modes(shown, monkeypatch):
    import numina.drps
    from megaradrp.loader import load_drp as load_megara

    assert "Instrument: MEGARA\n" in shown["show-instruments"]
    expected = set(load_megara().modes)
    assert len(expected) > 10 and MODE in expected
    assert set(_modes_of(shown["show-modes"], "MEGARA")) == expected
    monkeypatch.setattr(numina.drps, "_system_drps", None)  # the real entry points, loaded afresh
    drps = numina.drps.get_system_drps()
    assert drps.query_by_name("MEGARA").pipelines["default"].recipes[MODE]["class"].startswith("megaradrp.")
    assert drps.query_by_name(INSTRUMENT).pipelines["default"].recipes[MODE]["class"].startswith(
        "megara_crdetect.drp.")


# ---------------------------------------------------------------------------
# requirements generated from the schema
# ---------------------------------------------------------------------------


def test_requirements_are_the_schema_with_its_defaults():
    reqs = MegaraCrDetection.requirements()
    specs = [s for s in InputConfig.specs() if s.name in DETECTOR_KEYS] + list(CRMaskConfig.specs())
    assert list(schema_specs()) == specs
    assert [k for k, r in reqs.items() if not r.hidden] == ["obresult"] + [s.name for s in specs] + list(
        CALIBRATION_KEYS)  # megaradrp's calibrations: file requirements (#15)
    assert not ({"images", "extnum"} & set(reqs))  # ("in" raises: unknown OB keys are errors, #15)
    for spec in specs:
        req = reqs[spec.name]
        assert req.optional and spec.doc in req.description
        assert convert(spec, req.default) == spec.default, spec.name
        assert req.choices == (list(spec.choices) if spec.choices else None)
        assert req.type.descriptive_name() == spec.allowed()
    aliases = {a for s in CRMaskConfig.specs() for a in s.aliases}
    assert aliases and {k for k, r in reqs.items() if r.hidden} == aliases
    rinput = _input()
    assert parse_requirements(requirements_mapping(rinput)) == CRMaskConfig()
    assert [getattr(rinput, k) for k in DETECTOR_KEYS] == [s.default for s in specs[:3]]
    assert rinput.interactive is False  # forced off in the pipeline unless asked for


@pytest.mark.parametrize("key, raw, expected", [
    ("interactive", "False", False),  # a bool Parameter would give True
    ("use_lamedian", "false", False),
    ("la_sepmed", False, False),
    ("mm_seed", None, None),  # a str Parameter would give "None"
    ("mm_seed", "None", None),
    ("dilation", "3", 3),
    ("la_sigclip", 4, 4.0),
    ("crmethod", "MMcosmic", "mmcosmic"),
    ("regions_to_be_skipped", None, None),
    ("regions_to_be_skipped", [[1, 20, 1, 10]], [[1, 20, 1, 10]]),
    ("regions_to_be_skipped", "[[1, 20, 1, 10]]", [[1, 20, 1, 10]]),  # a list repr
    ("mm_crosscorr_region", [214, 320, 651, 733], [214, 320, 651, 733]),
    ("mm_fixed_points_in_boundary", [[0, 40], [50, 70]],
     [[0.0, 40.0, DEFAULT_FIXED_POINT_WEIGHT], [50.0, 70.0, DEFAULT_FIXED_POINT_WEIGHT]]),
    ("flux_factor", "auto", "auto"),
    ("flux_factor", [0.8, 1, 1.2], [0.8, 1.0, 1.2]),
    ("mm_threshold_rnoise", None, None),
    ("use_auxmedian", True, True),  # alias of use_lamedian
])
def test_values_arrive_as_the_schema_reads_them(key, raw, expected):
    assert getattr(_input(**{key: raw}), key) == expected


@pytest.mark.parametrize("key, raw", [
    ("la_sigclip", "abc"),  # a float Parameter would raise ValueError (a traceback in numina run)
    ("la_sigclip", None),
    ("la_sigclip", -1.0),
    ("dilation", 2.7),  # an int Parameter would truncate it to 2
    ("interactive", "maybe"),
    ("crmethod", "max"),
    ("regions_to_be_skipped", [[1, 2, 3]]),
    ("pixels_to_be_flagged_as_cr", [[0, 5]]),
    ("gain", 0.0),
    ("mm_seed", -1),
    ("flux_factor", "sometimes"),
])
def test_bad_values_raise_one_line_validation_errors(key, raw):
    spec = {s.name: s for s in schema_specs()}[key]
    with pytest.raises(ConfigError) as expected:
        convert(spec, raw)
    with pytest.raises(ValidationError) as err:
        _input(**{key: raw})
    assert str(err.value) == f'"{key}": {expected.value}'
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------
# observation results of the examples
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("number", [1, 2, 3, 4])
def test_obsresults_have_the_standalone_requirements(number, tmp_path):
    params = yaml.safe_load(write_example(number, tmp_path, shape=(64, 64)).read_text())
    ob = yaml.safe_load((OBSRESULTS / f"example{number}.yaml").read_text())
    assert (ob["id"], ob["instrument"], ob["mode"]) == (f"example{number}", INSTRUMENT, MODE)
    assert ob["frames"] == [f"example{number}/{name}" for name in params["images"]]
    reqs = dict(ob["requirements"])
    assert {k: reqs.pop(k) for k in DETECTOR_KEYS} == {k: params[k] for k in DETECTOR_KEYS}
    assert reqs == params["requirements"]
    assert reqs["interactive"] is False
    assert set(ob["requirements"]) <= set(MegaraCrDetection.requirements())  # numina run is strict
    rinput = _input(**ob["requirements"])
    assert parse_requirements(requirements_mapping(rinput)) == parse_requirements(params["requirements"])


# ---------------------------------------------------------------------------
# runs through numina
# ---------------------------------------------------------------------------


def test_session_runs_the_recipe(datadir, tmp_path, drpmocker, run_config):
    drpmocker.add_drp(INSTRUMENT, load_drp)
    session = _session(tmp_path, datadir, run_config, {**FAST, "gain": 1.0, "rnoise": 3.4, "bias": 0.0})
    task = session.run("ob1", requirements={"dilation": 0}, strict_inputs=True, validate_inputs=True,
                       validate_results=True)
    assert task.state == 2
    results = tmp_path / "obsidob1_results"
    names = ["crmasks"] + [f"combined_{c}" for c in COMBINATIONS]
    assert json.loads((results / "result.json").read_text())["values"] == {n: f"{n}.fits" for n in names}
    inputs = task.request_runinfo["inputs"]
    assert inputs["crmethod"] == {"source": "observation block", "value": "mmcosmic"}
    assert inputs["dilation"] == {"source": "request", "value": 0}
    assert inputs["interactive"] == {"source": "default", "value": False}
    with fits.open(results / "crmasks.fits") as masks:
        hdr = masks[0].header
        assert (hdr["NUMDRP"], hdr["NUMRNAM"], hdr["NUMPIPE"]) == (INSTRUMENT, "MegaraCrDetection", "default")
        assert hdr["NUMRVER"] == megara_crdetect.__version__ and hdr["CRMETHOD"] == "mmcosmic"
        names = [h.name for h in masks[1:]]
        # CLEANMIN: the repair value where it is not min2d (exposure-difference model, pixels hit everywhere)
        assert names in (MASKS + ["DQ"], MASKS + ["CLEANMIN", "DQ"])
        assert all(masks[n].data.shape == (200, 300) and masks[n].data.dtype == np.uint8 for n in MASKS)
        npmasked = masks["MEDIANCR"].header["NPMASKED"]
        assert npmasked == masks["MEDIANCR"].data.sum() and 0 < npmasked < 200 * 300 // 10
        uuid = hdr["UUID"]
    with fits.open(results / "combined_mediancr.fits") as comb:
        assert comb[0].header["MASKUUID"] == uuid and comb[0].header["NUMDRP"] == INSTRUMENT
        assert [h.name for h in comb] == ["PRIMARY", "VARIANCE", "MAP", "DQ"]
    table = (tmp_path / "obsidob1_work" / "mediancr_identified.csv").read_text().splitlines()
    assert table[0] == "CR_number,X_pixel,Y_pixel,Mask_value,Method"
    assert len(table) - 1 == npmasked  # one row per MEDIANCR pixel


def test_alias_is_accepted_by_strict_numina(datadir, tmp_path, drpmocker, run_config):
    drpmocker.add_drp(INSTRUMENT, load_drp)
    # use_auxmedian (alias of use_lamedian) reaches the schema: its cross-check with crmethod fails
    session = _session(tmp_path, datadir, run_config, {"crmethod": "mmcosmic", "use_auxmedian": True})
    with pytest.raises(ValidationError, match="use_lamedian: true needs crmethod lacosmic or mm_lacosmic"):
        session.run("ob1", strict_inputs=True)
    both = _session(tmp_path, datadir, run_config, {"use_lamedian": True, "use_auxmedian": True})
    with pytest.raises(ValidationError, match="given twice"):
        both.run("ob1", strict_inputs=True)


@pytest.mark.parametrize("requirements, message", [
    ({"la_sigclip": "abc"}, "requirements.la_sigclip = 'abc': expected a number > 0"),
    ({"verify_cr": True}, "verify_cr: true needs interactive: true"),
    ({**FAST, "pixels_to_be_flagged_as_cr": [[301, 1]]}, "outside the image: needs X <= NAXIS1 = 300"),
])
def test_session_reports_bad_requirements(datadir, tmp_path, drpmocker, run_config, requirements, message):
    drpmocker.add_drp(INSTRUMENT, load_drp)
    with pytest.raises(ValidationError, match=re.escape(message)):
        _session(tmp_path, datadir, run_config, requirements).run("ob1")


def test_session_reports_a_missing_frame(datadir, tmp_path, drpmocker, run_config):
    drpmocker.add_drp(INSTRUMENT, load_drp)
    session = _session(tmp_path, datadir, run_config, FAST, frames=FRAMES[:2] + ["ex/nothere.fits"])
    # numina links the frames into the work directory: a missing one is a dangling link
    with pytest.raises(ValidationError, match=re.escape(f"frames not found: nothere.fits (-> {datadir}/ex/")):
        session.run("ob1")


def test_numina_run_command(datadir, tmp_path):
    ob = {"id": "crtest", "instrument": INSTRUMENT, "mode": MODE, "frames": FRAMES,
          "requirements": {**FAST, "interactive": False, "use_auxmedian": False}}
    (tmp_path / "ob.yaml").write_text(yaml.safe_dump(ob))
    out = _numina("run", "ob.yaml", "--datadir", str(datadir), cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    results = tmp_path / "obsidcrtest_results"
    for name in ["crmasks"] + [f"combined_{c}" for c in COMBINATIONS]:
        with fits.open(results / f"{name}.fits") as hdul:
            assert hdul[0].header["NUMDRP"] == INSTRUMENT
            assert hdul[-1].data.shape == (200, 300)
    assert json.loads((results / "task.json").read_text())["state"] == 2
    # a bad value: one ERROR line with the schema's message, exit status 1, no traceback
    bad = _numina("run", "ob.yaml", "--datadir", str(datadir), "--parameter-dilation=2.5", cwd=tmp_path)
    text = bad.stdout + bad.stderr
    assert bad.returncode == 1 and "Traceback" not in text
    assert 'ERROR: "dilation": requirements.dilation = 2.5: expected an integer >= 0' in text


@pytest.mark.parametrize("frames, message", [
    (lambda d, t: [DataFrame(filename=str(d / f)) for f in FRAMES[:2]],
     "at least 3 frames are needed, got 2"),
    (lambda d, t: [DataFrame(filename=str(d / f)) for f in FRAMES[:2]] + [DataFrame(filename=str(t / "no"))],
     "frames not found: "),
    (lambda d, t: [DataFrame(frame=fits.HDUList([fits.PrimaryHDU(np.zeros((20, 30 + k), np.float32))]))
                   for k in range(3)], "all frames must have the same size"),
    (lambda d, t: [DataFrame(frame=fits.HDUList([fits.PrimaryHDU(np.full((20, 30), np.nan if k else 1.0,
                                                                       np.float32))])) for k in range(3)],
     "every pixel is NaN or infinite; there is no data to use"),
])
def test_bad_frames_raise_validation_errors(datadir, tmp_path, frames, message):
    recipe = load_drp().get_recipe_object(MODE)
    rinput = recipe.create_input(obresult=_obresult(frames(datadir, tmp_path)), **FAST)
    with pytest.raises(ValidationError, match=re.escape(message)):
        recipe(rinput)


def test_interactive_review_only_when_asked(datadir, monkeypatch):
    calls = []

    def make_review(cfg):
        calls.append(cfg.params.interactive)
        return lambda result: np.zeros_like(result.mediancr)  # the user rejects every cosmic ray

    monkeypatch.setitem(sys.modules, "megara_crdetect.review.interactive",
                        types.SimpleNamespace(make_review=make_review))
    recipe = load_drp().get_recipe_object(MODE)
    ob = _obresult([DataFrame(filename=str(datadir / f)) for f in FRAMES])
    default = recipe(recipe.create_input(obresult=ob, **FAST)).crmasks.open()
    assert calls == [] and default["MEDIANCR"].data.sum() > 0
    asked = recipe(recipe.create_input(obresult=ob, **FAST, interactive=True)).crmasks.open()
    assert calls == [True] and asked["MEDIANCR"].data.sum() == 0

    def abort(result):
        raise UserAbort("key x")

    monkeypatch.setitem(sys.modules, "megara_crdetect.review.interactive",
                        types.SimpleNamespace(make_review=lambda cfg: abort))
    with pytest.raises(ValidationError, match="aborted: key x; nothing was written"):
        recipe(recipe.create_input(obresult=ob, **FAST, interactive=True))


# products.py writes MMFPE<k> cards whose comment is one character too long (astropy truncates it)
@pytest.mark.filterwarnings("ignore:Card is too long:astropy.io.fits.verify.VerifyWarning")
def test_recipe_products_equal_the_command_line(datadir, tmp_path):
    requirements = {**FAST, "dilation": 2, "pixels_to_be_flagged_as_cr": [[10, 12]],
                    "regions_to_be_skipped": [[1, 20, 1, 10]]}
    detector = {"gain": 1.25, "rnoise": 3.0, "bias": 2.0}
    params = tmp_path / "params.yaml"
    images = [str(datadir / f) for f in FRAMES]
    params.write_text(params_yaml(images, inputs=detector, requirements=requirements))
    assert cli.main([str(params), "--output_dir", str(tmp_path / "cli"), "--no-figures"]) == 0
    document = yaml.safe_load(params.read_text())
    recipe = load_drp().get_recipe_object(MODE)
    rinput = recipe.create_input(obresult=_obresult([DataFrame(filename=str(datadir / f)) for f in FRAMES]),
                                 **document["requirements"], **detector)
    result = recipe(rinput)
    with fits.open(tmp_path / "cli" / "crmasks.fits") as ref:
        ours = result.crmasks.open()
        for name in MASKS:
            assert np.array_equal(ours[name].data, ref[name].data), name
        assert ref["MEDIANCR"].data[11, 9] == 1 and ref["MEDIANCR"].data[:10, :20].sum() == 0
        _assert_same_cards(ours[0].header, ref[0].header)
    for name in COMBINATIONS:
        with fits.open(tmp_path / "cli" / f"combined_{name}.fits") as ref:
            ours = getattr(result, f"combined_{name}").open()
            for ext in ("PRIMARY", "VARIANCE", "MAP"):
                assert np.array_equal(ours[ext].data, ref[ext].data), (name, ext)
            _assert_same_cards(ours[0].header, ref[0].header)


def _assert_same_cards(ours: fits.Header, ref: fits.Header) -> None:
    """Every card of the command line's header is in ours, with the same value."""
    skip = {"HISTORY", "COMMENT", "DATE", "UUID", "MASKUUID"}
    differ = {k: (ours.get(k), ref[k]) for k in ref if k not in skip and ours.get(k) != ref[k]}
    assert differ == {}
