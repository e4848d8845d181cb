"""Re-running into the same folder (own earlier products replaced or removed, foreign files kept) and progress."""

import io
import re

import pytest
from astropy.io import fits

from megara_crdetect.cli import main
from megara_crdetect.config import params_yaml
from megara_crdetect.examples import write_exposures
from megara_crdetect.progress import ProgressReporter
from megara_crdetect.simulate import simulate_exposures

FAST = {"crmethod": "mmcosmic", "mm_nsimulations": 3, "maxplots": 0}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rerun")
    sim = simulate_exposures((120, 160), 3, seed=5, n_coincident=6, cr_fraction=0.005)
    files = write_exposures(sim, folder)
    params = folder / "params.yaml"
    params.write_text(params_yaml([f.name for f in files], requirements=FAST))
    return folder, params


def test_rerun_replaces_our_products_and_keeps_foreign_files(dataset, tmp_path, capsys):
    folder, params = dataset
    out = tmp_path / "out"
    assert main([str(params), "--output_dir", str(out), "--no-figures"]) == 0
    first_uuid = fits.getheader(out / "combined_mean.fits")["UUID"]
    # products of an earlier run with figures (and with more exposures), and files of the user
    earlier = ["mediancr_candidates.csv", "review_edits.yaml", "mediancr_regions.reg", "diagnostic_crmask4.png",
               "mediancr_identified_cr.pdf", "flux_factor2.png"]
    foreign = ["notes.txt", "my_combined.fits", "combined_by_hand.txt", "review_edits.yaml.bak"]
    for name in earlier + foreign:
        (out / name).write_text("earlier")
    capsys.readouterr()
    assert main([str(params), "--output_dir", str(out), "--no-figures"]) == 0
    err = capsys.readouterr().err
    assert all(not (out / name).exists() for name in earlier), sorted(p.name for p in out.iterdir())
    assert all((out / name).read_text() == "earlier" for name in foreign)
    assert fits.getheader(out / "combined_mean.fits")["UUID"] != first_uuid
    assert "removed 6 earlier product(s) that this run did not make: diagnostic_crmask4.png, flux_factor2.png" in err
    assert "replaced 10 earlier file(s) of the same name" in err


def test_rerun_with_crmasks_from_the_same_folder_keeps_that_file(dataset, tmp_path):
    folder, params = dataset
    out = tmp_path / "out"
    assert main([str(params), "--output_dir", str(out), "--no-figures"]) == 0
    masks = (out / "crmasks.fits").read_bytes()
    assert main([str(params), "--output_dir", str(out), "--no-figures", "--crmasks", str(out / "crmasks.fits")]) == 0
    assert (out / "crmasks.fits").read_bytes() == masks


def test_the_parameter_file_in_the_output_folder_is_never_removed(dataset, tmp_path):
    folder, params = dataset
    edits = folder / "review_edits.yaml"  # a name of ours, used as the parameter file
    edits.write_text(params.read_text())
    assert main([str(edits), "--output_dir", str(folder), "--no-figures"]) == 0
    assert edits.read_text() == params.read_text()
    for p in folder.glob("combined_*.fits"):
        p.unlink()


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bars_on_a_terminal_and_log_lines_otherwise(dataset, tmp_path, capsys, monkeypatch):
    folder, params = dataset
    screen = _Terminal()
    monkeypatch.setattr("megara_crdetect.cli.ProgressReporter", lambda: ProgressReporter(screen))
    assert main([str(params), "--output_dir", str(tmp_path / "a"), "--no-figures"]) == 0
    drawn = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())  # without the terminal codes
    assert re.search(r"simulations ━+ (\d+)/\1 ", drawn), drawn  # a bar that reached its end
    assert re.search(r"writing products ━+ 10/10 ", drawn), drawn
    capsys.readouterr()
    monkeypatch.setattr("megara_crdetect.cli.ProgressReporter", lambda: ProgressReporter(io.StringIO()))
    assert main([str(params), "--output_dir", str(tmp_path / "b"), "--no-figures"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"INFO    simulations: (\d+)/(\d+) \(", err) and re.search(r"simulations: (\d+)/\1 \(100%\)", err)
    assert "INFO    writing products: 10/10 (100%)" in err
    lines = [line for line in err.splitlines() if "simulations:" in line]
    assert len(lines) <= 5, lines
