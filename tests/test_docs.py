"""The documentation: the README renders and its code runs, the Sphinx site builds with -W, --help is complete.

The README's code blocks are executed as written, in a temporary folder, with the
virtual environment of this run standing for ``.venv/bin`` (the set-up command is
what CI has just run, and the test command is this run itself: both are skipped).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits

from megara_crdetect import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
BIN = Path(sys.executable).parent
#: docs pages that other parts of the project add (linked from the README before they exist here)
PAGES_OF_OTHER_ISSUES = {"docs/megara.md", "docs/batch.md", "docs/products.md", "docs/numina040.md"}
#: README commands not run here, and why
SKIPPED = {
    'python3 -m venv .venv && .venv/bin/pip install -e ".[test]"': "the set-up: CI (.ci/run) has just run it",
    ".venv/bin/python -m pytest -q": "the tests: this is that run",
}

markdown_it = pytest.importorskip("markdown_it", reason="markdown-it-py is in the [test] extra")


def _tokens(text: str):
    return markdown_it.MarkdownIt("commonmark").enable("table").parse(text)


def _cells(line: str) -> int:
    """Cells of a source table row: split at every ``|`` not escaped (code spans split too, as in GFM)."""
    row = line.strip()
    row = row[1:] if row.startswith("|") else row
    row = row[:-1] if row.endswith("|") and not row.endswith("\\|") else row
    return len(re.split(r"(?<!\\)\|", row))


def _fences(text: str) -> list[tuple[str, str]]:
    return [(t.info.strip(), t.content) for t in _tokens(text) if t.type == "fence"]


# ---------------------------------------------------------------------------
# the README renders
# ---------------------------------------------------------------------------


def _rendered_tables(tokens) -> list[tuple[list[int], int]]:
    """``(source line range, header cells)`` of every table markdown-it renders."""
    tables, current = [], None
    for token in tokens:
        if token.type == "table_open":
            current = [token.map, 0]
        elif token.type == "th_open" and current is not None:
            current[1] += 1
        elif token.type == "thead_close" and current is not None:
            tables.append(tuple(current))
            current = None
    return tables


@pytest.mark.parametrize("page", [README, *sorted(DOCS.glob("*.md"))], ids=lambda p: p.name)
def test_every_table_row_has_the_header_cell_count(page):
    lines = page.read_text().splitlines()
    tables = _rendered_tables(_tokens(page.read_text()))
    if page == README:
        assert len(tables) >= 2
    for (start, end), header in tables:
        assert header >= 2 and _cells(lines[start]) == header
        # GFM drops the cells beyond the header's and pads missing ones: compare the source rows
        for number in range(start, end):
            assert _cells(lines[number]) == header, f"{page.name}:{number + 1}: {lines[number]}"


def test_readme_is_short_and_links_resolve():
    text = README.read_text()
    assert len(text.split()) < 1200, "a README a newcomer reads in two minutes"
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if target.startswith(("http://", "https://")) or target in PAGES_OF_OTHER_ISSUES:
            continue
        assert (ROOT / target).exists(), target
    for words in ("four keys", "meancr2", "mediancr", "mediancr_candidates.csv", "mediancr_regions.reg",
                  "review_edits.yaml", "numina run", "batch", "import megara_crdetect"):
        assert words in text.lower(), words


def test_the_readme_picture_is_a_small_png():
    png = DOCS / "_static" / "before_after.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size < 150_000


# ---------------------------------------------------------------------------
# the README's code runs
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def readme_blocks():
    blocks = _fences(README.read_text())
    assert [info for info, _ in blocks] == ["bash", "yaml", "bash", "bash", "python"]
    return blocks


def _commands(block: str) -> list[str]:
    return [line.split("  #")[0].strip() for line in block.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _env() -> dict:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "MPLBACKEND": "Agg"}


def _start(script: str, cwd: Path) -> subprocess.Popen:
    """Run README command lines (one bash script, stop at the first failure), ``.venv/bin`` = this venv."""
    return subprocess.Popen(["bash", "-ec", script.replace(".venv/bin/", f"{BIN}/")], cwd=cwd, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen) -> None:
    out, _ = process.communicate(timeout=900)
    assert process.returncode == 0, out[-3000:]


def test_readme_commands_are_the_ci_commands(readme_blocks):
    ci = (ROOT / ".ci" / "run").read_text()
    for command in SKIPPED:
        assert command in _commands(readme_blocks[0][1])
        assert command in ci


def test_readme_quick_start_and_numina_run_run(readme_blocks, tmp_path):
    """The main job (command 2) and the ``numina run`` block, side by side (two processes, two cores)."""
    quick = [c for c in _commands(readme_blocks[0][1]) if c not in SKIPPED]  # see SKIPPED for why
    assert quick == [".venv/bin/numina-crmasks --example 1 --output_dir demo"]
    # the figures of example 1 (a PDF page for each of its ~500 cosmic rays) take a minute of CPU:
    # here without them; the own-data test below runs the README's command with its figures
    main_job = _start(quick[0] + " --no-figures", tmp_path)
    shutil.copytree(ROOT / "obsresults", tmp_path / "obsresults")
    in_numina = _start("\n".join(_commands(readme_blocks[3][1])), tmp_path)
    _finish(main_job)
    _finish(in_numina)
    demo = tmp_path / "demo"
    for name in ("params_example1.yaml", "fake_1.fits", "crmasks.fits", "combined_meancr2.fits",
                 "combined_mediancr.fits", "mediancr_identified.csv"):
        assert (demo / name).is_file(), name
    results = tmp_path / "obsresults" / "obsidexample1_results"
    for name, ext in (("crmasks", "MEDIANCR"), ("combined_meancr2", 0), ("combined_mediancr", 0)):
        with fits.open(results / f"{name}.fits") as ours, fits.open(demo / f"{name}.fits") as ref:
            assert np.array_equal(ours[ext].data, ref[ext].data), name  # the same pixels both ways


@pytest.fixture
def own_data(tmp_path):
    """exp1..3.fits of the README (small simulated exposures) in a temporary folder."""
    from megara_crdetect.examples import write_exposures
    from megara_crdetect.simulate import simulate_exposures

    for k, path in enumerate(write_exposures(simulate_exposures((120, 200), 3, seed=3), tmp_path), 1):
        path.rename(tmp_path / f"exp{k}.fits")
    return tmp_path


def test_readme_own_data_yaml_and_python_run(readme_blocks, own_data, monkeypatch):
    params = readme_blocks[1][1]
    assert set(yaml.safe_load(params)) == {"images", "gain", "rnoise", "bias"}
    (own_data / "params.yaml").write_text(params)
    monkeypatch.chdir(own_data)
    for command in _commands(readme_blocks[2][1]):
        argv = shlex.split(command)
        assert argv[0] == ".venv/bin/numina-crmasks"
        assert cli.main(argv[1:]) == 0  # the program of the numina-crmasks script, in this process
    for name in ("diagnostic_histogram2d.png", "diagnostic_mediancr.png", "mediancr_candidates.csv",
                 "mediancr_regions.reg", "review_edits.yaml", "combined_mediancr.fits"):
        assert (own_data / "out" / name).is_file(), name
    with fits.open(own_data / "out" / "combined_meancr2.fits") as cli_out:
        reference = cli_out[0].data.copy()
    exec(compile(readme_blocks[4][1], "README.md (python block)", "exec"), {})
    # the Python lines and the command line give the same meancr2 (default parameters on both sides)
    assert np.array_equal(fits.getdata(own_data / "clean.fits"), reference)
    assert fits.getval(own_data / "clean.fits", "BUNIT").strip() == "electron"


# ---------------------------------------------------------------------------
# the Sphinx site and --help
# ---------------------------------------------------------------------------


def test_docs_build_with_warnings_as_errors(tmp_path):
    pytest.importorskip("sphinx", reason="sphinx is in the [test] extra")
    run = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                          "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    html = tmp_path / "html"
    for page in ("index", "tutorial", "usage", "python", "gallery", "parameters", "api", "method", "benchmarks"):
        assert (html / f"{page}.html").is_file(), page
    api = (html / "api.html").read_text()
    assert "megara_crdetect.detect" in api and "VarianceUncertainty" in api
    # the parameter table keeps one row per key (escaped | inside allowed values), each with 5 cells
    from megara_crdetect.config import schema

    table = (html / "parameters.html").read_text()
    assert table.count("<tr") == len(schema()) + 1
    assert table.count("<td") == 5 * len(schema())
    assert "one of lacosmic | mmcosmic | mm_lacosmic" in table


def test_help_is_complete_on_its_own():
    text = " ".join(cli._parser().format_help().split())
    for words in ("default: the current folder", "exit status", "0 success", "2 invalid input",
                  "combined_meancr2.fits", "crmasks.fits", "mediancr_candidates.csv",
                  "numina-crmasks --example 1 --output_dir demo", "gain:", "rnoise:", "default: INFO"):
        assert words in text, words
    assert "README" not in text
    # the parameter file shown in the help is valid
    from megara_crdetect.config import parse_run_config

    epilog = cli._EPILOG.split("\n\n")[0].splitlines()[1:]
    document = yaml.safe_load("\n".join(line[2:] for line in epilog
                                        if not line.lstrip().startswith(("(", "python"))))
    assert parse_run_config(document).params.flux_factor == "auto"
