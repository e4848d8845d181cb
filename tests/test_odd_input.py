"""Signals and odd input: SIGTERM/SIGINT, truncated files, tiny images, faint frames, odd levels, examples."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from megara_crdetect.cli import main
from megara_crdetect.config import params_yaml
from megara_crdetect.examples import parse_arguments, write_exposures
from megara_crdetect.simulate import simulate_exposures

FAST = {"crmethod": "mmcosmic", "mm_nsimulations": 2, "maxplots": 0}
M13 = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "astropy_m13"


def _params(folder: Path, images, inputs=None, **requirements) -> Path:
    path = folder / "params.yaml"
    path.write_text(params_yaml([str(i) for i in images], inputs=inputs, requirements={**FAST, **requirements}))
    return path


def _frames(folder: Path, shape=(120, 160), edit=None, seed=11):
    sim = simulate_exposures(shape, 3, seed=seed, n_coincident=min(6, shape[0] * shape[1] // 400),
                             cr_fraction=0.005)
    files = write_exposures(sim, folder)
    if edit is not None:
        for k, f in enumerate(files):
            fits.writeto(f, edit(k, fits.getdata(f)), fits.getheader(f), overwrite=True)
    return [f.name for f in files]


def _nothing_written(out: Path) -> bool:
    return not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("signum, status, word", [(signal.SIGTERM, 143, "terminated"),
                                                   (signal.SIGINT, 130, "interrupted")])
def test_signal_mid_run_removes_the_staging_folder(tmp_path, signum, status, word):
    """A real process, signalled once its staging folder exists (during the detection)."""
    # large enough that the detection lasts seconds on a quiet machine (the signal must arrive during it)
    images = _frames(tmp_path, shape=(800, 1000))
    params = _params(tmp_path, images, crmethod="mm_lacosmic", mm_nsimulations=40)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "megara_crdetect", str(params), "--output_dir", str(out),
                             "--no-figures"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out.exists() and any(p.name.startswith(".megara-crdetect-") for p in out.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be signalled"
        time.sleep(0.02)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err
    assert f"{word}" in err.strip().splitlines()[-1] and "nothing was written" in err
    assert "Traceback" not in err
    assert list(out.iterdir()) == [], "staging folder or products left behind"


def test_help_documents_the_exit_status(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for fragment in ("0 success", "2 invalid input", "3 internal error", "130 interrupted (SIGINT)",
                     "143 terminated (SIGTERM)"):
        assert fragment in text


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def test_truncated_fits_file_is_exit_2_naming_the_file(tmp_path, capsys):
    images = _frames(tmp_path)
    whole = (tmp_path / images[1]).read_bytes()
    (tmp_path / "cut.fits").write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "out"
    assert main([str(_params(tmp_path, [images[0], "cut.fits", images[2]])), "--output_dir", str(out)]) == 2
    line = _error(capsys)
    assert line.startswith("error: images[1] = 'cut.fits': ") and "truncated or corrupt" in line, line
    assert _nothing_written(out)


@pytest.mark.parametrize("shape", [(10, 10), (1, 200)])
def test_tiny_images_need_mmcosmic(tmp_path, capsys, shape):
    """L.A.Cosmic needs more than la_padwidth pixels along each axis: a clear exit 2; the MM method runs."""
    rng = np.random.default_rng(3)
    names = []
    for k in range(3):
        fits.writeto(tmp_path / f"t{k}.fits", (100 + rng.normal(0, 3.4, shape)).astype(np.float32))
        names.append(f"t{k}.fits")
    out = tmp_path / "out"
    assert main([str(_params(tmp_path, names, crmethod="mm_lacosmic")), "--output_dir", str(out),
                 "--no-figures"]) == 2
    assert _error(capsys) == (f"error: the images are {shape[1]} x {shape[0]} pixels (NAXIS1 x NAXIS2): L.A.Cosmic "
                              "(crmethod: mm_lacosmic) needs at least 11 pixels along each axis (3 for its filters "
                              "and more than la_padwidth = 10 for its mirror padding); use crmethod: mmcosmic or a "
                              "smaller la_padwidth")
    assert _nothing_written(out)
    assert main([str(_params(tmp_path, names)), "--output_dir", str(out), "--no-figures"]) == 0
    assert fits.getdata(out / "combined_mediancr.fits").shape == shape


def test_constant_exposure_is_an_error(tmp_path, capsys):
    images = _frames(tmp_path, edit=lambda k, d: np.zeros_like(d) if k == 1 else d)
    out = tmp_path / "out"
    assert main([str(_params(tmp_path, images)), "--output_dir", str(out), "--no-figures"]) == 2
    assert _error(capsys) == ("error: images[1] = 'fake_2.fits': every pixel has the same value (0 ADU after the "
                              "bias); a constant image is not an exposure")
    assert _nothing_written(out)


def test_level_far_below_the_bias_is_a_warning_naming_the_file(tmp_path, capsys):
    images = _frames(tmp_path, edit=lambda k, d: d - 500 if k == 2 else d)
    assert main([str(_params(tmp_path, images)), "--output_dir", str(tmp_path / "o"), "--no-figures"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "below the bias level" in line]
    assert len(warned) == 1 and "WARNING images[2] = 'fake_3.fits': the median level is 47" in warned[0], warned


@pytest.mark.skipif(not M13.is_dir(), reason=f"real frames not found in {M13}")
def test_flux_factor_auto_on_faint_imaging_frames_falls_back_to_one(tmp_path, capsys):
    """5 x 5 s of M13 (bias ~505 ADU subtracted): no pixel 10 sigma above the noise -> factors 1, a warning."""
    names = []
    for k, f in enumerate(sorted(M13.glob("M13_blue_000*.fits.gz"))):
        fits.writeto(tmp_path / f"m{k}.fits", fits.getdata(f).astype(np.float32)[400:600, 500:800])
        names.append(f"m{k}.fits")
    params = _params(tmp_path, names, inputs={"gain": 1.0, "rnoise": 24.0, "bias": 505.0}, flux_factor="auto")
    assert main([str(params), "--output_dir", str(tmp_path / "o"), "--no-figures"]) == 0
    assert any("WARNING flux_factor: auto: only 0 significant pixels" in line and "(flux factors 1)" in line
               for line in capsys.readouterr().err.splitlines())
    hdr = fits.getheader(tmp_path / "o" / "crmasks.fits")
    assert [hdr[f"FLUXF{k}"] for k in range(1, 6)] == [1.0] * 5


def test_examples_command_line_defaults_to_all_and_writes_one(tmp_path):
    """``python -m megara_crdetect.examples DIR`` failed on Python 3.11 (invalid choice: [1, 2, 3, 4])."""
    assert parse_arguments([str(tmp_path)]) == (tmp_path, [1, 2, 3, 4])
    assert parse_arguments([str(tmp_path), "3", "1"]) == (tmp_path, [3, 1])
    with pytest.raises(SystemExit):
        parse_arguments([str(tmp_path), "7"])
    done = subprocess.run([sys.executable, "-m", "megara_crdetect.examples", str(tmp_path), "2"],
                          capture_output=True, text=True, timeout=300, env={**os.environ})
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "example2").iterdir()) == [
        "fake_1.fits", "fake_2.fits", "fake_3.fits", "params_example2.yaml"]
