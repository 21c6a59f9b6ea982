"""The lens picture of one prompt: its cells against a plain computation from transformers' hidden
states, the token languages, the self-contained page, the stage (resume, report) and the command
(``crosslens inspect``), the page in headless Chromium, and Gemma 3 270M on a real prompt."""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tiny_model
from crosslens.cli import main
from crosslens.data.token_languages import TokenLanguages, token_languages
from crosslens.lenses.lens import LensInfo, LogitLens, TunedLens
from crosslens.stages.inspect.compute import COLUMNS, inspection, token_language, token_text
from crosslens.stages.inspect.picture import html_page, visible
from crosslens.stages.inspect.stage import inspect_prompt, inspect_stage, run_inspect
from crosslens.store import Store
from helpers import toy_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "Question: What is the capital of France? Answer:"


def random_tuned(lm, seed: int = 0) -> TunedLens:
    """A tuned lens with random translators at every layer but the last (read as is)."""
    n = lm.anatomy.n_layers
    lens = TunedLens(lm.anatomy, range(n), LensInfo({}, list(range(n))), sha256="test")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lin in lens.translators.values():
            lin.weight.copy_(0.1 * torch.randn(lin.weight.shape, generator=g))
            lin.bias.copy_(0.1 * torch.randn(lin.bias.shape, generator=g))
    return lens


def plain_distributions(lm, ids: list[int], lens: TunedLens | None) -> list[torch.Tensor]:
    """Per layer, the lens's next-token distribution at every position, the obvious way: transformers'
    hidden states, the model's own final norm and head (and Gemma 2's softcap) by hand. The last
    hidden state is already normalised (transformers 5): it is the model's own output, never normed twice."""
    with torch.no_grad():
        out = lm.model(torch.tensor([ids]), output_hidden_states=True)
        states = out.hidden_states
        cap = getattr(lm.model.config, "final_logit_softcapping", None)
        dists = []
        for layer in range(len(states) - 1):
            h = states[layer][0]
            if lens is not None:
                h = h + lens.translators[str(layer)](h)
            logits = lm.model.lm_head(lm.model.model.norm(h)).float()
            if cap:
                logits = torch.tanh(logits / cap) * cap
            dists.append(torch.softmax(logits, -1))
        dists.append(torch.softmax(out.logits[0].float(), -1))
    return dists


@pytest.mark.parametrize("kind", ["logit", "tuned"])
def test_cells_are_the_lens_argmax_at_every_layer_and_position(tiny, kind: str) -> None:
    lm = tiny
    lens = LogitLens(lm.anatomy) if kind == "logit" else random_tuned(lm)
    ids = list(lm.tokenizer(PROMPT).input_ids)
    n = lm.anatomy.n_layers
    reading = inspection(lm, ids, [lens], range(n + 1), 3, token_languages(lm.tokenizer))
    assert list(reading.columns) == list(COLUMNS)
    assert len(reading) == (n + 1) * len(ids) * 3
    plain = plain_distributions(lm, ids, lens if kind == "tuned" else None)
    for layer in range(n + 1):
        cells = reading[reading["layer"] == layer].sort_values(["position", "rank"])
        top = cells[cells["rank"] == 1]
        p = plain[layer]
        np.testing.assert_array_equal(top["token_id"].to_numpy(), p.argmax(-1).numpy())
        np.testing.assert_allclose(top["prob"].to_numpy(), p.max(-1).values.numpy(), atol=1e-4)
        entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)
        np.testing.assert_allclose(top["entropy"].to_numpy(), entropy.numpy(), atol=1e-4)
        want = p.topk(3, -1)
        np.testing.assert_allclose(cells["prob"].to_numpy().reshape(-1, 3), want.values.numpy(), atol=1e-4)
    inputs = reading[(reading["layer"] == 0) & (reading["rank"] == 1)]["input_token"].tolist()
    assert inputs == [token_text(lm.tokenizer, i) for i in ids]


def test_token_language_is_the_most_probable_language_ties_joined() -> None:
    columns = ("en", "fr", "ja", "zh")
    probs = np.array(
        [
            [0, 0, 0, 0, 1],  # no language
            [0, 1, 0, 0, 0],  # French only
            [0.7, 0.3, 0, 0, 0],  # mostly English
            [0, 0, 0.5, 0.5, 0],  # Han without frequencies: tied
        ],
        dtype=np.float32,
    )
    table = TokenLanguages(languages=columns, probs=probs, tokenizer_sha256="planted")
    names, shares = token_language(table, np.array([[0, 1], [2, 3], [7, 1]]))
    assert names == ["none", "fr", "en", "ja/zh", "none", "fr"]  # id 7: a head padded past the table
    np.testing.assert_allclose(shares, [1, 1, 0.7, 0.5, 1, 1])


def test_whitespace_and_invisible_characters_are_made_visible() -> None:
    assert visible(" the") == "␣the"
    assert visible("\n\n") == "↵↵" and visible("\t") == "⇥"
    assert visible("") == "∅"
    assert visible("a\u200bb\u00a0") == "a\\u200bb\\u00a0"
    assert visible("巴黎") == "巴黎"


def planted_reading(positions: int = 3, layers=(0, 2), k: int = 2) -> pd.DataFrame:
    """A reading whose tokens need escaping: markup, a space, a newline."""
    tokens = ["<script>alert(1)</script>", " Paris", "\n", "&amp;"]
    rows = []
    for lens in ("logit", "tuned"):
        for layer in layers:
            for pos in range(positions):
                for rank in range(1, k + 1):
                    rows.append(
                        {
                            "lens": lens, "layer": layer, "position": pos, "input_token": f"<in{pos}>",
                            "rank": rank, "token_id": rank, "token": tokens[(pos + rank) % 4],
                            "prob": 0.9 / rank, "entropy": 1.5, "token_language": "fr",
                            "token_language_p": 1.0,
                        }
                    )  # fmt: skip
    return pd.DataFrame(rows)[list(COLUMNS)]


def test_the_page_is_self_contained_one_cell_per_layer_and_position() -> None:
    reading = planted_reading()
    page = html_page(reading, "a <title>", "the <prompt>", ["a note"])
    assert not re.search(r"<script|https?:|src=|url\(|@import|<link", page, re.I)
    cells = re.findall(r"<td class='cell' data-layer='(\d+)' data-position='(\d+)'", page)
    assert len(cells) == 2 * 2 * 3 and len(set(cells)) == 2 * 3  # two lenses, each (layer, position) once
    assert page.count("<div class='tip'>") == len(cells)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "␣Paris" in page and "↵" in page
    assert "&amp;amp;" in page and "a &lt;title&gt;" in page and "the &lt;prompt&gt;" in page
    assert "td.cell:hover .tip{display:block}" in page


def test_stage_reads_the_first_item_of_every_language_and_resumes(tmp_path: Path) -> None:
    lm = tiny_model("gemma3")
    ds = toy_dataset()
    summary = run_inspect(lm, ds, tmp_path, layers=[1, 4], top_k=3)
    rows = Store(tmp_path).read("inspect")
    assert set(rows["language"]) == {"en", "de", "zh"} and set(rows["item_id"]) == {"q0"}
    assert summary["items"] == {"en": "q0", "de": "q0", "zh": "q0"} and summary["layers"] == [1, 4]
    for lang in ds.languages:
        ids = lm.tokenizer(summary["prompts"][lang]).input_ids
        assert len(rows[rows["language"] == lang]) == 2 * len(ids) * 3
        assert (tmp_path / f"inspect_{lang}.png").is_file() and (tmp_path / f"inspect_{lang}.html").is_file()
        last = summary["last_position"]["logit"][lang]
        assert [c["layer"] for c in last] == [1, 4]
    # the same reading as the one-prompt API, and a rerun computes nothing
    fr = rows[(rows["language"] == "de") & (rows["layer"] == 4)].reset_index(drop=True)
    alone = inspect_prompt(lm, summary["prompts"]["de"], layers=[4], top_k=3)
    pd.testing.assert_frame_equal(fr[list(COLUMNS)], alone)
    shards = {p: p.read_bytes() for p in (tmp_path / "inspect").iterdir()}
    stage = inspect_stage(lm, ds, tmp_path, layers=[1, 2, 4], top_k=3)
    assert [len(u.settings) for u in stage.todo(stage.units[0], stage.check())] == [1]  # layer 2 only
    run_inspect(lm, ds, tmp_path, layers=[1, 2, 4], top_k=3)
    assert all(p.read_bytes() == b for p, b in shards.items())
    assert sorted(Store(tmp_path).read("inspect")["layer"].unique()) == [1, 2, 4]


def test_another_top_k_or_lens_is_refused(tmp_path: Path) -> None:
    from crosslens.store import RunMismatchError

    lm = tiny_model("llama")
    ds = toy_dataset(("en", "de"))
    run_inspect(lm, ds, tmp_path, layers=[2], top_k=2)
    with pytest.raises(RunMismatchError, match="top_k"):
        inspect_stage(lm, ds, tmp_path, layers=[2], top_k=3).check()
    lens = random_tuned(lm)
    with pytest.raises(RunMismatchError, match="lenses"):
        inspect_stage(lm, ds, tmp_path, layers=[2], top_k=2, lenses=["logit", lens]).check()


def test_cli_reads_a_prompt_and_a_dataset_item_alike(saved_model: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "adhoc"
    assert main(["inspect", "-m", str(saved_model), "--prompt", PROMPT, "-o", str(out), "--every", "1"]) == 0
    for name in ("inspect.html", "inspect.png", "inspect.parquet"):
        assert (out / name).is_file(), name
    reading = pd.read_parquet(out / "inspect.parquet")
    assert sorted(reading["layer"].unique()) == [1, 2, 3, 4] and set(reading["rank"]) == {1, 2, 3, 4, 5}
    assert "top next token at the last position" in capsys.readouterr().out
    # an item of a dataset: the stage's own reading of it
    item = tmp_path / "item"
    argv = [
        "inspect",
        "-m",
        str(saved_model),
        "-d",
        "crosslens-mini",
        "--language",
        "fr",
        "--item",
        "mini-001",
    ]
    assert main([*argv, "-o", str(item), "--layers", "2,4", "--top-k", "3"]) == 0
    stage = tmp_path / "stage"
    assert main(["inspect-items", "-m", str(saved_model), "-d", "crosslens-mini", "--languages", "en,fr",
                 "-o", str(stage), "--layers", "2,4", "--top-k", "3"]) == 0  # fmt: skip
    rows = Store(stage).read("inspect")
    fr = (
        rows[rows["language"] == "fr"].drop(columns=["dataset", "language", "item_id"]).reset_index(drop=True)
    )
    pd.testing.assert_frame_equal(fr, pd.read_parquet(item / "inspect.parquet"))
    assert json.loads((stage / "inspect_summary.json").read_text())["items"] == {
        "en": "mini-001",
        "fr": "mini-001",
    }


def test_cli_through_a_trained_lens(saved_model: Path, tmp_path: Path) -> None:
    from crosslens.lenses.lens import model_identity
    from crosslens.models.loading import load_model

    lm = load_model(str(saved_model))
    lens = random_tuned(lm)
    lens.info = LensInfo(model_identity(lm), lens.layers)
    lens.save(tmp_path / "lens")
    out = tmp_path / "out"
    argv = ["inspect", "-m", str(saved_model), "--prompt", PROMPT, "-o", str(out), "--layers", "0,2,4",
            "--lens", "logit", "--lens", f"tuned:{tmp_path / 'lens'}", "--top-k", "2"]  # fmt: skip
    assert main(argv) == 0
    reading = pd.read_parquet(out / "inspect.parquet")
    assert list(dict.fromkeys(reading["lens"])) == ["logit", "tuned"]
    last = reading[reading["layer"] == 4].groupby("lens")["prob"].apply(list)
    assert last["logit"] == last["tuned"]  # the last layer is read as is by every lens
    page = (out / "inspect.html").read_text()
    assert "<h2>logit lens</h2>" in page and "<h2>tuned lens</h2>" in page


BAD = [
    ("an item that does not exist", ["-d", "crosslens-mini", "--language", "fr", "--item", "mini-999"],
     ("--item", "crosslens-mini", "'mini-999'", "'mini-001'", "crosslens datasets")),
    ("an unknown dataset", ["-d", "crosslens-minii", "--language", "fr"], ("--dataset", "'crosslens-mini'")),
    ("a language the dataset lacks", ["-d", "crosslens-mini", "--language", "xx"], ("--language", "'xx'")),
    ("no language for the item", ["-d", "crosslens-mini"], ("--language",)),
    ("an empty prompt", ["--prompt", "  "], ("--prompt", "empty")),
    ("--top-k 0", ["--prompt", "x", "--top-k", "0"], ("--top-k",)),
    ("a prompt and an item", ["--prompt", "x", "-d", "crosslens-mini"], ("--prompt", "not both")),
    ("nothing to read", [], ("--prompt",)),
    ("--item without a dataset", ["--prompt", "x", "--item", "mini-001"], ("--item", "--dataset")),
    ("a layer beyond the depth", ["--prompt", "x", "--layers", "9"], ("--layers", "9")),
    ("an unknown lens", ["--prompt", "x", "--lens", "lucky"], ("--lens", "lucky")),
    ("a tuned lens without a folder", ["--prompt", "x", "--lens", "tuned"], ("--lens", "tuned:LENS_DIR")),
]  # fmt: skip


@pytest.mark.parametrize("extra, words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_inputs_are_one_line_before_the_model_loads(
    extra: list[str], words: tuple[str, ...], saved_model: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    def no_load(*args: object, **kw: object) -> None:
        raise AssertionError("a bad input must be refused before the model loads")

    monkeypatch.setattr("crosslens.models.loading.load_model", no_load)
    code = main(["inspect", "-m", str(saved_model), "-o", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    line = " ".join(err[err.index("error:") :].split())
    for word in words:
        assert word in line, line
    assert not (tmp_path / "out").exists()


def test_an_experiment_with_inspect_puts_one_picture_per_language_in_the_report(
    saved_model: Path, tmp_path: Path
) -> None:
    from crosslens.experiment.config import parse_config
    from crosslens.experiment.runner import run_experiment

    config = {
        "models": [str(saved_model)],
        "datasets": [{"name": "crosslens-mini", "languages": ["en", "zh"], "limit": 4}],
        "layers": [2, 4],
        "lens": {"enabled": False},
        "pca": {"enabled": False},
        "inspect": {"top_k": 3},
        "output": str(tmp_path / "runs"),
    }
    report = run_experiment(parse_config(config), progress=False)
    html = report.read_text()
    for lang in ("en", "zh"):
        assert f"Lens picture of item mini-001 ({lang})" in html
    folder = tmp_path / "runs" / saved_model.name / "crosslens-mini"
    assert (folder / "inspect_zh.html").is_file()
    assert "inspection" in html and "item mini-001; lenses logit; top 3; layers 2, 4" in html


# -- headless Chromium ---------------------------------------------------------------------------------------
CHROMIUM = next(
    (
        p
        for p in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser"))
        if p and Path(p).is_file()
    ),
    None,
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,900",
]


class DevTools:
    """Chromium driven over ``--remote-debugging-pipe`` (fd 3 in, fd 4 out, NUL-separated JSON): a real
    mouse hover without any package beyond the standard library."""

    def __init__(self, profile: Path):
        cmd_r, self.cmd_w = os.pipe()
        self.res_r, res_w = os.pipe()

        def fds() -> None:  # dup first: a pipe already at fd 3 or 4 keeps its close-on-exec flag
            a, b = os.dup(cmd_r), os.dup(res_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            preexec_fn=fds, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(cmd_r)
        os.close(res_w)
        self.buffer, self.n = b"", 0

    def call(self, method: str, session: str | None = None, **params: object) -> dict:
        self.n += 1
        message = {"id": self.n, "method": method, "params": params} | (
            {"sessionId": session} if session else {}
        )
        os.write(self.cmd_w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 60
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self.n:
                    assert "error" not in reply, reply
                    return reply["result"]
            ready, _, _ = select.select([self.res_r], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"no answer to {method}"
            chunk = os.read(self.res_r, 1 << 20)
            assert chunk, f"chromium closed the pipe on {method}"
            self.buffer += chunk

    def evaluate(self, session: str, expression: str) -> object:
        return self.call("Runtime.evaluate", session, expression=expression, returnByValue=True)["result"][
            "value"
        ]

    def close(self) -> None:
        self.call("Browser.close")
        self.proc.wait(timeout=60)
        os.close(self.cmd_w)
        os.close(self.res_r)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_the_page_renders_in_headless_chromium_and_the_hover_shows_the_top_k(
    saved_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert main(["inspect", "-m", str(saved_model), "--prompt", PROMPT, "-o", str(out), "--layers", "1,4",
                 "--top-k", "4"]) == 0  # fmt: skip
    page = out / "inspect.html"
    reading = pd.read_parquet(out / "inspect.parquet")
    dom = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'ud'}", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    positions = reading["position"].nunique()
    assert len(re.findall(r'<td class="cell"', dom)) == 2 * positions
    assert dom.count('<div class="tip">') == 2 * positions
    chrome = DevTools(tmp_path / "ud2")
    try:
        target = chrome.call("Target.createTarget", url=page.resolve().as_uri())["targetId"]
        session = chrome.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for _ in range(200):
            if chrome.evaluate(session, "location.protocol == 'file:' && document.readyState == 'complete'"):
                break
            time.sleep(0.05)
        cell = "document.querySelector(\"td.cell[data-layer='4'][data-position='3']\")"
        hidden = chrome.evaluate(session, f"getComputedStyle({cell}.querySelector('.tip')).display")
        x, y = chrome.evaluate(
            session, f"(r => [r.x + r.width / 2, r.y + r.height / 2])({cell}.getBoundingClientRect())"
        )
        chrome.call("Input.dispatchMouseEvent", session, type="mouseMoved", x=x, y=y)
        shown, text = chrome.evaluate(
            session, f"(t => [getComputedStyle(t).display, t.innerText])({cell}.querySelector('.tip'))"
        )
        shot = chrome.call("Page.captureScreenshot", session, format="png")["data"]
    finally:
        chrome.close()
    (tmp_path / "hover.png").write_bytes(base64.b64decode(shot))
    assert (hidden, shown) == ("none", "block")
    cell_rows = reading[(reading["layer"] == 4) & (reading["position"] == 3)].sort_values("rank")
    lines = text.splitlines()
    assert lines[0].startswith("layer 4, position 3") and "entropy" in lines[-1]
    assert len(lines) == 2 + len(cell_rows) == 6
    for line, row in zip(lines[1:], cell_rows.itertuples()):
        assert line.split("\t")[:3] == [str(row.rank), visible(row.token), f"{row.prob:.3f}"]


# -- Gemma 3 270M --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_gemma_reads_a_french_question_ending_in_the_models_own_prediction(tmp_path: Path) -> None:
    from crosslens.models.loading import load_model

    lm = load_model("gemma-3-270m")
    prompt = "Question : Tokyo est la capitale de quel pays ? Réponse : Tokyo est la capitale du"
    reading = inspect_prompt(lm, prompt, layers=[0, 6, 12, 18], top_k=5)
    ids = lm.tokenizer(prompt).input_ids
    with torch.no_grad():
        own = lm.model(torch.tensor([ids])).logits[0].float().softmax(-1)
    last = reading[(reading["layer"] == 18) & (reading["rank"] == 1)].sort_values("position")
    np.testing.assert_array_equal(last["token_id"].to_numpy(), own.argmax(-1).numpy())
    answer = last.iloc[-1]
    assert answer["token"].strip() == "Japon" and answer["token_language"] == "fr"
