"""``csekit report``: the page of a tiny training run (written, self-contained, drawn by headless
Chromium), saved results reused, comparisons, and one-line errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import make_tiny_encoder, write_recipe

from csekit.cli.main import main
from csekit.report.collect import RunData, read_log

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)),
                None)  # fmt: skip


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, data_dir) -> Path:
    """Four steps of SimCSE on a tiny encoder, scored on STS-B dev every two: a run with dev curves."""
    folder = tmp_path_factory.mktemp("report")
    make_tiny_encoder().save(folder / "tiny")
    recipe = write_recipe(folder, folder / "tiny", max_steps=4, eval_steps=2, save_steps=0, data_dir=str(data_dir))
    assert main(["train", str(recipe)]) == 0
    return folder / "run"


@pytest.fixture(scope="module")
def report(trained_run, data_dir) -> Path:
    assert main(["report", str(trained_run), "--compute", "--tasks", "stsb", "--data-dir", str(data_dir)]) == 0
    return trained_run / "report"


def test_report_writes_html_markdown_and_figures(report, trained_run):
    page = (report / "report.html").read_text(encoding="utf-8")
    # Self-contained: every image is inline, nothing is fetched from anywhere.
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 3 and all(src.startswith("data:image/png;base64,") for src in sources)
    assert "href=" not in page
    for heading in ("Runs", "STS", "Training curves", "Alignment and uniformity", "Embedding similarity"):
        assert f"<h2>{heading}</h2>" in page
    markdown = (report / "report.md").read_text(encoding="utf-8")
    linked = re.findall(r"\]\(([^)]+\.png)\)", markdown)
    assert sorted(linked) == ["align-uniform.png", "similarity.png", "training-curves.png"]
    for name in linked:
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --compute saved what it computed in the run folder, for the next report.
    saved = json.loads((trained_run / "eval.json").read_text(encoding="utf-8"))["results"]["sts"]
    assert f"{saved['stsb']:.2f}" in page and saved["stsb/pairs"] == 1379
    points = json.loads((trained_run / "align_uniform.json").read_text(encoding="utf-8"))["points"]
    assert [p["label"] for p in points] == ["start", "best", "final"] and [p["step"] for p in points] == [0, 2, 4]


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium) to render the page")
def test_report_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image

    screenshot = tmp_path / "page.png"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--screenshot={screenshot}", "--window-size=1200,1600", (report / "report.html").resolve().as_uri()]  # fmt: skip
    subprocess.run(command, capture_output=True, timeout=120, check=False)
    assert screenshot.is_file(), "chromium wrote no screenshot"
    image = Image.open(screenshot).convert("RGB")
    assert image.size == (1200, 1600)
    colours = image.getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 16  # text, tables and plots, not a blank page
    white = max(count for count, colour in (colours or [(0, None)]) if colour == (255, 255, 255)) if colours else 0
    assert white < 0.99 * image.size[0] * image.size[1]


def test_saved_results_are_reused_without_compute(report, trained_run, data_dir):
    record = json.loads((trained_run / "eval.json").read_text(encoding="utf-8"))
    record["results"]["sts"].update({"stsb": 12.34, "avg": 12.34})
    record["results"]["transfer"] = {"mr": 71.5, "avg": 71.5}
    (trained_run / "eval.json").write_text(json.dumps(record), encoding="utf-8")
    output = trained_run.parent / "again"
    assert main(["report", str(trained_run), "--output", str(output)]) == 0
    page = (output / "report.html").read_text(encoding="utf-8")
    assert "12.34" in page and "<h2>Transfer</h2>" in page and "71.50" in page


def _handmade_run(folder: Path, losses: list[float], dev: list[float]) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("model: some/model\nobjective: simcse\npooler: cls\nmax_steps: 4\n")
    rows = [{"step": s + 1, "train/loss": loss, "train/lr": 1e-3 * (1 - s / 4)} for s, loss in enumerate(losses)]
    rows += [{"step": 2 * (i + 1), "dev/avg": value, "dev/best": max(dev[: i + 1])} for i, value in enumerate(dev)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def test_comparison_page_of_two_runs_without_models(tmp_path, capsys):
    first = _handmade_run(tmp_path / "a" / "seed1", [3.0, 2.5, 2.0, 1.8], [50.0, 49.0])
    second = _handmade_run(tmp_path / "b" / "seed1", [3.1, 2.2, 1.9, 1.5], [51.0, 55.0])
    output = tmp_path / "out"
    assert main(["report", str(first), str(second), "--output", str(output)]) == 0
    page = (output / "report.html").read_text(encoding="utf-8")
    # Same folder names: the runs are told apart by their parent folders.
    assert "csekit comparison: a/seed1 vs b/seed1" in page
    assert "<td>55.00</td>" in page and "<td>50.00</td>" in page  # best dev per run
    assert (output / "training-curves.png").is_file() and not (output / "similarity.png").exists()
    assert "no saved evaluation" in page


def test_best_step_is_the_first_step_with_the_best_dev_score():
    log = [{"step": 2, "dev/avg": 40.0}, {"step": 4, "dev/avg": 45.0}, {"step": 6, "dev/avg": 45.0},
           {"step": 6, "train/loss": 1.0}]  # fmt: skip
    run = RunData("r", Path("."), {}, log)
    assert run.best_step == 4 and run.last_step == 6
    assert RunData("r", Path("."), {}, [{"step": 3, "train/loss": 1.0}]).best_step == 3  # no dev: the last model


def test_not_a_run_folder_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("csekit: error:") and "not a training run folder" in err and err.count("\n") == 1


def test_bad_metrics_line_names_the_line(tmp_path):
    from csekit.errors import CsekitError

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "train/loss": 2.0}\nnot json\n')
    with pytest.raises(CsekitError, match=r"metrics.jsonl:2: not a JSON line"):
        read_log(tmp_path / "metrics.jsonl")
