"""The parameter schema: conversion, validation messages, aliases, documentation."""

import re
from pathlib import Path

import pytest

from megara_crdetect.config import (
    CRMaskConfig,
    InputConfig,
    check_against_data,
    parse_requirements,
    parse_run_config,
    schema,
    schema_markdown,
)
from megara_crdetect.errors import ConfigError

IMAGES = ["a.fits", "b.fits", "c.fits"]


def run(**requirements):
    return parse_run_config({"images": IMAGES, "requirements": requirements})


def test_defaults_are_the_guide_example_values():
    cfg = run()
    p = cfg.params
    assert (cfg.inputs.gain, cfg.inputs.rnoise, cfg.inputs.bias, cfg.inputs.extnum) == (1.0, 3.4, 0.0, 0)
    assert p.crmethod == "mm_lacosmic" and p.dilation == 1 and p.mm_nsimulations == 10
    assert p.mm_niter_boundary_extension == 4 and p.mm_seed == 123456 and p.color_scale == "zscale"
    assert p.la_psfmodel == "gaussxy" and p.la_psfsize == 11 and p.la_cleantype == "meanmask"
    assert p.interactive is False  # deliberate: batch runs never block (README)


@pytest.mark.parametrize(
    ("requirements", "message"),
    [
        ({"mm_nsimulation": 3}, r"requirements\.mm_nsimulation: unknown key \(did you mean 'mm_nsimulations'\?\)"),
        ({"crmethod": "astrocosmic"}, r"crmethod = 'astrocosmic': expected one of lacosmic \| mmcosmic \| mm_lacosmic"),
        ({"la_sigclip": "abc"}, r"la_sigclip = 'abc': expected a number > 0"),
        ({"la_sigclip": -1.0}, r"la_sigclip = -1.0: must be > 0"),
        ({"dilation": 1.5}, r"dilation = 1.5: expected an integer >= 0"),
        ({"dilation": -1}, r"dilation = -1: must be >= 0"),
        ({"mm_nsimulations": 0}, r"mm_nsimulations = 0: must be >= 1"),
        ({"interactive": "maybe"}, r"interactive = 'maybe': expected true or false"),
        ({"interactive": None}, r"interactive = None: a value is required"),
        ({"la_psfsize": 10}, r"la_psfsize = 10: must be odd"),
        ({"regions_to_be_skipped": [[1, 2, 3]]}, r"regions_to_be_skipped = \[\[1, 2, 3\]\]: expected a list of"),
        ({"regions_to_be_skipped": [[5, 2, 1, 3]]}, r"must satisfy 1 <= xmin <= xmax"),
        ({"pixels_to_be_flagged_as_cr": [[0, 3]]}, r"FITS 1-based"),
        ({"pixels_to_be_ignored_as_cr": [[1.0, 3]]}, r"pixels_to_be_ignored_as_cr = \[\[1.0, 3\]\]: expected"),
        ({"pixels_to_be_replaced_by_local_median": [[5, 5, 2, 3]]}, r"must be odd"),
        ({"flux_factor": [1.0, -1.0, 2.0]}, r"flux factors must be > 0"),
        ({"flux_factor": "often"}, r"flux_factor = 'often': expected none, auto"),
        ({"mm_xy_offsets": [[0, 0], [1, 1], [0, 0]], "mm_crosscorr_region": [1, 20, 1, 20]},
         r"give either mm_xy_offsets or mm_crosscorr_region, not both"),
        ({"mm_boundary_fit": "piecewise"}, r"piecewise needs at least 2 fixed points"),
        ({"mm_fixed_points_in_boundary": [[0, 40, -1]]}, r"weights must be > 0"),
        ({"verify_cr": True}, r"verify_cr: true needs interactive: true"),
        ({"mm_threshold": 3.0, "mm_threshold_rnoise": 1.0}, r"either mm_threshold or mm_threshold_rnoise"),
        ({"use_lamedian": True, "use_auxmedian": True}, r"given twice"),
        ({"use_lamedian": True, "crmethod": "mmcosmic"}, r"needs crmethod lacosmic or mm_lacosmic"),
        ({"gain": 2.0}, r"requirements\.gain: this key belongs in the top level"),
        ({"pc_rlim": [1.2, 1.0, 0.8]}, r"pc_rlim = \[1.2, 1.0, 0.8\]: expected one number or a list of two"),
        ({"la_sigclip": [5.0, -3.0]}, r"la_sigclip = \[5.0, -3.0\]: must be > 0"),
        ({"dc_threshold": 1.0}, r"dc_threshold = 1.0: must be > 0 and < 1"),
        ({"nn_model": "space"}, r"expected one of ground_imaging \| NRES \| HST_ACS_WFC"),
        ({"mm_hist2d_min_neighbors": 9}, r"mm_hist2d_min_neighbors = 9: must be >= 0 and <= 8"),
        ({"mm_photon_distribution": "gauss"}, r"expected one of poisson \| nbinom"),
        ({"mm_nbinom_shape": 0}, r"mm_nbinom_shape = 0: must be > 0"),
        ({"mm_synthetic": "single", "flux_factor": "auto"}, r"mm_synthetic: single needs aligned exposures"),
        ({"use_lamedian": True, "crmethod": "mm_conn"}, r"needs crmethod lacosmic or mm_lacosmic"),
        ({"dtype": "int16"}, r"dtype = 'int16': expected one of float32 \| float64"),
        ({"mm_seed": -3}, r"mm_seed = -3: must be >= 0"),
        ({"maxplots": -2}, r"maxplots = -2: must be >= -1"),
        ({"la_cleantype": "gauss"}, r"expected one of median \| medmask \| meanmask \| idw"),
    ],
)
def test_bad_requirement_gives_one_line_message(requirements, message):
    with pytest.raises(ConfigError, match=message) as info:
        run(**requirements)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"images": ["a", "b"]}, r"images = \['a', 'b'\]: at least 3 images are needed, got 2"),
        ({"images": "a.fits"}, r"images = 'a.fits': expected a list of at least 3 FITS file names"),
        ({"requirements": {}}, r"images: missing key"),
        ({"images": IMAGES, "gain": 0}, r"gain = 0: must be > 0"),
        ({"images": IMAGES, "gain": "x"}, r"gain = 'x': expected a number > 0"),
        ({"images": IMAGES, "rnoise": -1}, r"rnoise = -1: must be >= 0"),
        ({"images": IMAGES, "extnum": -1}, r"extnum = -1: must be >= 0"),
        ({"images": IMAGES, "imagess": 1}, r"imagess: unknown key \(did you mean 'images'\?\)"),
        ({"images": IMAGES, "crmethod": "lacosmic"}, r"crmethod: this key belongs in the requirements block"),
        ({"images": IMAGES, "requirements": [1, 2]}, r"requirements = \[1, 2\]: expected a mapping"),
        ([1, 2], r"must be a YAML mapping"),
    ],
)
def test_bad_top_level(document, message):
    with pytest.raises(ConfigError, match=message):
        parse_run_config(document)


def test_null_none_and_empty_mean_not_given():
    for value in (None, "none", "None", "null", [], ""):
        p = run(regions_to_be_skipped=value, mm_xy_offsets=value, flux_factor=value)
        assert p.params.regions_to_be_skipped == () and p.params.mm_xy_offsets is None
        assert p.params.flux_factor is None


def test_numina_string_forms_are_parsed():
    """numina turns lists into their repr and null into 'None' for str Parameters."""
    p = run(regions_to_be_skipped="[[1, 10, 1, 20]]", mm_crosscorr_region="[214:320, 651:733]",
            pixels_to_be_flagged_as_cr="[[3, 4], [5, 6]]", flux_factor="[0.8, 1.0, 1.2]",
            interactive="False", mm_seed="None", dilation="2", la_sigclip="4.5").params
    assert p.regions_to_be_skipped == ((1, 10, 1, 20),)
    assert p.mm_crosscorr_region == (214, 320, 651, 733)
    assert p.pixels_to_be_flagged_as_cr == ((3, 4), (5, 6))
    assert p.flux_factor == (0.8, 1.0, 1.2)
    assert p.interactive is False and p.mm_seed is None and p.dilation == 2 and p.la_sigclip == 4.5


def test_aliases_and_special_forms():
    p = run(use_auxmedian=True, flux_factor_region=[[229, 274, 1, 1596]], flux_factor=1.1,
            mm_fixed_points_in_boundary=[[50, 70], [0, 40, 5]]).params
    assert p.use_lamedian is True
    assert p.flux_factor_regions == ((229, 274, 1, 1596),)
    assert p.flux_factor == (1.1,)  # a bare number is accepted (the reference rejects it)
    assert p.mm_fixed_points_in_boundary == ((0.0, 40.0, 5.0), (50.0, 70.0, 1000.0))
    assert run(flux_factor="AUTO").params.flux_factor == "auto"


def test_threshold_forms():
    assert run(mm_threshold=2.0).params.threshold_e(gain=2.0, rnoise_e=6.8) == 4.0
    assert run(mm_threshold_rnoise=1.5).params.threshold_e(gain=2.0, rnoise_e=6.8) == pytest.approx(10.2)


def test_coincidences_default():
    p = CRMaskConfig()
    assert [p.coincidences(n) for n in (3, 4, 5, 7)] == [2, 2, 3, 4]
    assert CRMaskConfig(mm_cr_coincidences=3).coincidences(5) == 3


@pytest.mark.parametrize(
    ("requirements", "message"),
    [
        ({"regions_to_be_skipped": [[1, 101, 1, 10]]}, r"\[1, 101, 1, 10\]: outside the image: needs xmax <= NAXIS1 = 100"),
        ({"flux_factor_regions": [[1, 10, 1, 51]]}, r"needs xmax <= NAXIS1 = 100 and ymax <= NAXIS2 = 50"),
        ({"mm_crosscorr_region": [1, 200, 1, 10]}, r"mm_crosscorr_region = \[1, 200, 1, 10\]: outside the image"),
        ({"mm_crosscorr_region": [1, 5, 1, 40]}, r"at least 8 x 8 pixels"),
        ({"pixels_to_be_flagged_as_cr": [[101, 3]]}, r"\[101, 3\]: outside the image: needs X <= NAXIS1 = 100"),
        ({"pixels_to_be_replaced_by_local_median": [[5, 51, 3, 3]]}, r"Y <= NAXIS2 = 50"),
        ({"flux_factor": [1.0, 1.0]}, r"expected one entry per exposure \(3\), got 2"),
        ({"mm_xy_offsets": [[0.0, 0.0]]}, r"mm_xy_offsets = \[\[0.0, 0.0\]\]: expected one entry per exposure"),
        ({"mm_cr_coincidences": 3}, r"mm_cr_coincidences = 3: must be smaller than the number of exposures \(3\)"),
    ],
)
def test_checks_against_the_data(requirements, message):
    params = parse_requirements(requirements)
    with pytest.raises(ConfigError, match=message):
        check_against_data(params, (50, 100), 3)


def test_in_bounds_is_accepted():
    params = parse_requirements({"regions_to_be_skipped": [[1, 100, 1, 50]], "flux_factor": 1.0,
                                 "pixels_to_be_flagged_as_cr": [[100, 50]]})
    check_against_data(params, (50, 100), 3)


def test_direct_construction_is_validated():
    with pytest.raises(ConfigError, match="dilation = -2"):
        CRMaskConfig(dilation=-2)
    assert CRMaskConfig().replace(dilation=3).dilation == 3
    with pytest.raises(ConfigError):
        InputConfig(images=("a", "b"))


def test_history_lists_every_used_parameter():
    lines = CRMaskConfig(crmethod="mmcosmic").history()
    assert "crmethod = 'mmcosmic'" in lines
    assert any(line.startswith("mm_nsimulations = 10") for line in lines)
    assert not any(line.startswith("la_") for line in lines)  # L.A.Cosmic not used
    names = {line.split(" = ")[0] for line in CRMaskConfig().history()}
    unused = {"pc", "dc", "nn"}  # mm_lacosmic: the other auxiliary detectors are not used
    assert names == {s.name for s in CRMaskConfig.specs() if s.group not in unused}
    names = {line.split(" = ")[0] for line in CRMaskConfig(crmethod="pycosmic").history()}
    assert {"pc_sigma_det", "la_confirm_sigma"} <= names and not names & {"la_sigclip", "mm_seed", "dc_mask", "nn_model"}


def test_every_parameter_is_documented():
    for spec in schema():
        assert spec.doc and spec.doc[0].isupper(), spec.name
        assert spec.allowed()


def test_readme_parameter_table_is_generated_from_the_schema():
    readme = (Path(__file__).parents[1] / "docs" / "parameters.md").read_text()
    assert schema_markdown() in readme, "run `python -m megara_crdetect.config` and paste it into docs/parameters.md"
    documented = set(re.findall(r"^\| `(\w+)", readme, flags=re.M))
    assert {s.name for s in schema()} <= documented
