"""The report: every stage on a tiny model, then figures and tables in a self-contained HTML file."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import CORPUS, tiny_model
from crosslens.data.registry import load_dataset
from crosslens.experiment.report import folder_sections, summary_tables, write_report
from crosslens.lenses.training import Corpus, TrainSettings, train_lens
from crosslens.render import figures
from crosslens.render.tables import Table
from crosslens.scoring.options import EvalOptions
from crosslens.stages.evaluate.stage import evaluate
from crosslens.stages.lens.stage import run_lens
from crosslens.stages.neurons.stage import run_neurons
from crosslens.stages.pca.stage import run_pca
from crosslens.stages.reporting import Figure, find_results
from crosslens.stages.similarity.stage import run_similarity
from crosslens.stages.steering import report as steering_report
from crosslens.stages.steering.stage import run_steering

PNG = b"\x89PNG\r\n\x1a\n"
FIGURE_FILES = [
    "fig1_transfer.png", "fig2_lens.png", "fig2_lens_tuned.png", "fig10_lens_fidelity.png", "fig3_pca.png",
    "fig4_gamma_sweep.png", "fig5_steer_change.png", "fig6_cka.png", "fig7_cka_matrix.png",
    "fig8_neurons.png", "fig9_ablation.png",
]  # fmt: skip
CAPTIONS = [
    "Table 1.",
    "Table 2.",
    "Run metadata",
    "Per-language results",
    "Logit lens per layer",
    "Tuned lens per layer",
    "Debiased linear CKA with en",
    "Cosine of parallel vs non-parallel",
    "Language-specific neurons",
    "Deactivating the neurons",
    "Steering:",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run root with one <model>/<dataset> folder holding every stage's results."""
    root = tmp_path_factory.mktemp("report")
    out = root / "tiny-gemma3" / "crosslens-mini"
    lm = tiny_model("gemma3")
    ds = load_dataset("crosslens-mini", ["en", "de", "zh", "ru"]).limit(12)
    opts = EvalOptions(batch_size=8, chunk_size=6)
    evaluate(lm, ds, out, opts=opts)
    run_lens(lm, ds, out, layers=[1, 2, 3, 4], opts=opts)
    text = Corpus(tuple(f"{line} {k}" for k, line in enumerate(CORPUS)), {"source": "test"})
    settings = TrainSettings(layers=(1, 2, 3), tokens=64, batch=4, positions=8, seq_len=32, val_tokens=32)
    lens = train_lens(lm, text, root / "lens", settings)
    run_lens(lm, ds, out, layers=[1, 2, 3, 4], opts=opts, lens=lens)
    run_pca(lm, ds, out, layers=[2, 4], n_items=6)
    run_similarity(lm, ds, out, layers=[0, 2, 4], n_items=6, n_boot=50)
    run_neurons(lm, ds, out, ablate=["zh"], n_text_items=4, top_rate=0.05, n_boot=50, opts=opts)
    run_steering(lm, ds, out, ds.languages, [2, 3], [-1.0, 1.0], n_vectors=4, opts=opts, controls=2,
                 positions=["last", "all"])  # fmt: skip
    write_report(root)
    return root


def _imgs(page: str) -> list[str]:
    return re.findall(r"<img src='([^']*)'", page)


def test_report_has_every_figure_and_table(root: Path) -> None:
    page = (root / "report.html").read_text()
    srcs = _imgs(page)
    assert len(srcs) == len(FIGURE_FILES) == 11
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)
    for caption in CAPTIONS:
        assert f'<p class="caption">{caption}' in page, caption
    assert page.count("<table") == len(CAPTIONS)
    assert "<script" not in page
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page), "the report must be self-contained"
    assert "tiny-gemma3" in page and "answer-letter tokens" in page
    for name in FIGURE_FILES:
        assert (root / "tiny-gemma3" / "crosslens-mini" / name).read_bytes().startswith(PNG)


def test_markdown_links_the_figures(root: Path) -> None:
    md = (root / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(Path(link).name for link in links) == sorted(FIGURE_FILES)
    assert all((root / link).is_file() for link in links)
    assert "| tiny-gemma3 |" in md and "**Table 2." in md


def _table(folder, title: str) -> Table:
    """The folder's table whose title starts with ``title``."""
    return next(t for t in folder_sections(folder) if isinstance(t, Table) and t.title.startswith(title))


def test_tables_follow_the_paper_layout(root: Path) -> None:
    results = find_results(root)
    assert [(r.model, r.dataset) for r in results] == [("tiny-gemma3", "crosslens-mini")]
    t1, t2 = summary_tables(results)
    assert t1.columns == ["model", "acc.", "cloze acc.", "cons.", "tr+", "tr−"]
    assert t1.groups == [("", 1), ("crosslens-mini", 5)]
    acc = t1.rows[0][1]
    s = results[0].summaries["eval"]
    assert acc == f"{100 * s['accuracy_mean']:.1f} ± {100 * s['accuracy_std']:.1f}"
    r = results[0].summaries["lens"]["table2"]["acc"]["r"]
    assert t2.rows[0][1].startswith(f"{r:.2f}".replace("-", "−"))
    assert '<th colspan="5" class="group">crosslens-mini</th>' in t1.html()
    steer = _table(results[0], "Steering:")
    assert {"positions", "cloze acc. (%)", "sig. (Holm)", "controls: Δ acc."} <= set(steer.columns)
    assert {row[2] for row in steer.rows} == {"last", "all"}
    assert any("(p " in cell for row in steer.rows for cell in row)  # controls' empirical p
    assert t2.rows[0][1].endswith("n = 3")  # Table 2: r and the languages it rests on (a CI needs 4)
    # The tuned lens has its own Table 2 row and per-layer table with both lenses' validation KL.
    assert t2.rows[1][0] == "tiny-gemma3 · tuned lens"
    r = results[0].summaries["tuned_lens"]["table2"]["acc"]["r"]
    assert t2.rows[1][1].startswith(f"{r:.2f}".replace("-", "−"))
    tuned = _table(results[0], "Tuned lens per layer")
    assert tuned.columns[-2:] == ["val. KL tuned", "val. KL logit"] and tuned.rows[-1][-1] == "–"
    assert "mean log ratio (tuned)" in _table(results[0], "Per-language results").columns
    assert all(isinstance(x, Table | Figure) for x in folder_sections(results[0]))


def test_table_rendering_escapes() -> None:
    t = Table("a <b> | c", ["x", "y|z"], [["<1>", "2|3"]], note="n")
    assert "&lt;1&gt;" in t.html() and '<p class="caption">a &lt;b&gt; | c</p>' in t.html()
    assert "| &lt;1&gt; |" not in t.markdown() and "| <1> | 2\\|3 |" in t.markdown()


def test_single_stage_folder(root: Path, tmp_path: Path) -> None:
    one = tmp_path / "only-eval"
    one.mkdir()
    shutil.copy(root / "tiny-gemma3" / "crosslens-mini" / "summary.json", one / "summary.json")
    page = write_report(one).read_text()
    assert len(_imgs(page)) == 1  # Fig. 1 only
    assert '<p class="caption">Table 1.' in page and '<p class="caption">Per-language results' in page


def test_no_results_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no crosslens results"):
        write_report(tmp_path)


def test_figures_without_pyplot(root: Path, tmp_path: Path) -> None:
    out = root / "tiny-gemma3" / "crosslens-mini"
    steer = json.loads((out / "steer_summary.json").read_text())
    assert steering_report.default_gamma(steer) == 1.0
    path = steering_report.steer_change_figure(steer, tmp_path / "f5.png", gamma=-1.0)
    assert path.read_bytes().startswith(PNG)
    with pytest.raises(ValueError, match="no gamma = 5"):
        steering_report.steer_change_figure(steer, tmp_path / "x.png", gamma=5.0)
    package = Path(figures.__file__).parents[1]
    assert "matplotlib.pyplot" not in sys.modules or not any(
        "pyplot" in p.read_text() for p in package.rglob("*.py")
    )


def test_language_colors_are_stable() -> None:
    a = figures.language_colors(["en", "de", "zh"])
    b = figures.language_colors(["zh", "en", "de"])
    assert a == b
    many = figures.language_colors([f"l{i:02d}" for i in range(30)])
    assert len({tuple(np.round(c, 6)) for c in many.values()}) == 30


CHROMIUM = next(
    (
        p
        for p in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser"))
        if p and Path(p).is_file()
    ),
    None,
)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_report_renders_in_headless_chromium(root: Path, tmp_path: Path) -> None:
    page = root / "report.html"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'ud'}",
        "--enable-logging=stderr",
        "--v=0",
        "--dump-dom",
        page.resolve().as_uri(),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    assert len(re.findall(r'<img src="data:image/png;base64,', dom)) == len(FIGURE_FILES)
    for caption in CAPTIONS:
        assert f'<p class="caption">{caption}' in dom, caption
    console = [line for line in res.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert not console, console


def test_same_model_and_dataset_in_two_folders(root: Path, tmp_path: Path) -> None:
    for run in ("a", "b"):
        folder = tmp_path / run / "tiny-gemma3" / "crosslens-mini"
        folder.mkdir(parents=True)
        shutil.copy(root / "tiny-gemma3" / "crosslens-mini" / "summary.json", folder / "summary.json")
    results = find_results(tmp_path)
    rows = [row[0] for row in summary_tables(results)[0].rows]
    assert rows == [
        "tiny-gemma3 (a/tiny-gemma3/crosslens-mini)",
        "tiny-gemma3 (b/tiny-gemma3/crosslens-mini)",
    ]
    assert len({r.anchor for r in results}) == 2
