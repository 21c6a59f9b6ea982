"""The latent stage: masses per language and entropy of the lens's distribution against a naive readout
from transformers' hidden states (every family, logit and tuned lens, last and answer positions), a
planted head with known masses, the summary's shares, the report section, the CLI and the one real
model run (Gemma 3 270M)."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from conftest import tiny_model
from crosslens.cli import main
from crosslens.data.prompts import get_template, render
from crosslens.data.registry import load_dataset
from crosslens.data.token_languages import token_languages
from crosslens.experiment.report import write_report
from crosslens.lenses.lens import LensInfo, TunedLens
from crosslens.models.anatomy import Anatomy
from crosslens.models.loading import LoadedModel
from crosslens.options import OptionError
from crosslens.scoring.choices import encode_continuation
from crosslens.scoring.options import EvalOptions
from crosslens.stages.base import run_stage
from crosslens.stages.latent.compute import elsewhere, shares
from crosslens.stages.latent.report import PART
from crosslens.stages.latent.stage import latent_stage, run_latent
from crosslens.stages.reporting import ResultFolder
from helpers import toy_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_lens(lm: LoadedModel, layers=(1, 2), seed: int = 0, scale: float = 0.05) -> TunedLens:
    """A tuned lens with small random translators (not the identity, so it reads differently)."""
    lens = TunedLens(lm.anatomy, layers, LensInfo({"n_layers": lm.anatomy.n_layers}, list(layers)), "test")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lin in lens.translators.values():
            lin.weight.copy_(scale * torch.randn(lin.weight.shape, generator=g))
            lin.bias.copy_(scale * torch.randn(lin.bias.shape, generator=g))
    return lens


def _naive(lm: LoadedModel, ids: list[int], layer: int, lens: TunedLens | None = None) -> np.ndarray:
    """The distribution at every position of ``ids`` at ``layer``, by hand from transformers' hidden
    states: hidden_states[l] (l < L) through the final norm and head (and the tuned translator), the
    model's own logits at the last layer (hidden_states[-1] is already normalised)."""
    model = lm.model
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_hidden_states=True)
        if layer == lm.anatomy.n_layers:
            logits = out.logits[0].float()
        else:
            h = out.hidden_states[layer][0]
            if lens is not None:
                h = h + lens.translators[str(layer)](h)
            logits = model.lm_head(model.model.norm(h)).float()
            cap = getattr(model.config, "final_logit_softcapping", None)
            if cap:
                logits = torch.tanh(logits / cap) * cap
    return torch.softmax(logits.double(), -1).numpy()


def test_masses_match_a_naive_readout_and_sum_to_one(tiny: LoadedModel, tmp_path: Path) -> None:
    """Every family, the logit and a tuned lens, the last prompt token (position 0) and each token of
    the gold answer: the stage's rows equal the readout of transformers' own hidden states."""
    ds = toy_dataset(languages=("de", "zh"), n=3)
    lens = random_lens(tiny, layers=(0, 1, 2))
    L = tiny.anatomy.n_layers
    stage = latent_stage(tiny, ds, tmp_path, layers=[0, 1, 2, L], opts=EvalOptions(batch_size=2),
                         lenses=["logit", lens], positions="answer")  # fmt: skip
    run_stage(stage)
    rows = pd.read_parquet(tmp_path / "latent")
    table = token_languages(tiny.tokenizer)
    mass = [f"mass_{c}" for c in table.columns]
    assert [c for c in rows.columns if c.startswith("mass_")] == mass
    np.testing.assert_allclose(rows[mass].sum(axis=1), 1.0, atol=1e-5)
    template = get_template(ds.template)
    for lang in ("de", "zh"):
        it = ds.item(lang, "q1")
        prompt = render(it, template)
        pids = tiny.tokenizer(prompt).input_ids
        answer = encode_continuation(tiny.tokenizer, prompt, pids, it.choices[it.gold])[0]
        ids = pids + answer
        read = rows[(rows.language == lang) & (rows.item_id == "q1")]
        assert len(read) == 2 * 4 * (len(ids) - len(pids) + 1)  # 2 lenses x 4 layers x positions
        for (layer, kind), got in read.groupby(["layer", "lens"]):
            p = _naive(tiny, ids, int(layer), lens if kind == "tuned" and layer != L else None)
            got = got.sort_values("position")
            first = len(pids) - 1
            assert got["position"].tolist() == list(range(len(ids) - first))
            want = p[first:] @ table.probs.astype(np.float64)
            np.testing.assert_allclose(
                got[mass].to_numpy(), want, atol=1e-4, err_msg=f"{lang} {layer} {kind}"
            )
            entropy = -(p[first:] * np.log(np.clip(p[first:], 1e-300, None))).sum(-1)
            np.testing.assert_allclose(got["entropy"].to_numpy(), entropy, atol=1e-4)
            assert got["token"].tolist() == [tiny.tokenizer.decode([t]) for t in ids[first:]]


def _planted(word_ids: dict[int, float]) -> LoadedModel:
    """The tiny llama with a head that ignores the state: logits = a bias putting ``word_ids``'s
    probabilities on those tokens and none elsewhere, at every layer and position."""
    lm = tiny_model("llama")
    model = copy.deepcopy(lm.model)
    vocab, d = model.lm_head.weight.shape
    head = nn.Linear(d, vocab, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-1e4)
        for token, p in word_ids.items():
            head.bias[token] = math.log(p)
    model.lm_head = head.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=lm.tokenizer, spec="tiny-llama-planted", revision="planted",
                       dtype=torch.float32, device="cpu", anatomy=Anatomy.of(model))  # fmt: skip


def test_a_planted_head_gives_the_known_masses(tmp_path: Path) -> None:
    tok = tiny_model("llama").tokenizer
    table = token_languages(tok)
    col = {c: j for j, c in enumerate(table.columns)}
    texts = {i: tok.decode([i]).strip() for i in range(len(tok))}
    comma = next(i for i, t in texts.items() if t == ",")
    german = max(texts, key=lambda i: table.probs[i, col["de"]])  # the vocabulary's most German token
    chinese = max(texts, key=lambda i: table.probs[i, col["zh"]])
    assert table.probs[comma, col["none"]] == 1 and table.probs[german, col["de"]] > 0.9
    lm = _planted({comma: 0.5, german: 0.3, chinese: 0.2})
    s = run_latent(lm, toy_dataset(n=2), tmp_path, layers=[0, 2, 4])
    rows = pd.read_parquet(tmp_path / "latent")
    want = 0.5 * table.probs[comma] + 0.3 * table.probs[german] + 0.2 * table.probs[chinese]
    for c in ("en", "de", "zh", "ja", "none"):
        np.testing.assert_allclose(rows[f"mass_{c}"], want[col[c]], atol=1e-6, err_msg=c)
    assert rows["mass_none"].min() >= 0.5 - 1e-6 and rows["mass_de"].min() >= 0.27
    h = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2))
    np.testing.assert_allclose(rows["entropy"], h, atol=1e-5)
    de = s["curves"]["last"]["logit"]["de"][2]
    assert de["native"]["mean"] == pytest.approx(want[col["de"]], abs=1e-6)
    assert de["en"]["mean"] == pytest.approx(want[col["en"]], abs=1e-6)
    assert de["none"]["mean"] == pytest.approx(want[col["none"]], abs=1e-6)
    assert de["other"]["mean"] == pytest.approx(1 - want[[col["en"], col["de"], col["none"]]].sum(), abs=1e-6)
    assert s["table"]["assigned_mass"]["logit"][2] == pytest.approx(1 - want[col["none"]], abs=1e-6)
    # The head ignores the prompt: every language's reading is the same, so is the control.
    assert de["native_elsewhere"]["mean"] == pytest.approx(de["native"]["mean"], abs=1e-6)


def test_shares_of_a_reading() -> None:
    """English prompts: native is English; a language the table cannot identify: native (and other) NaN."""
    rows = pd.DataFrame(
        {
            "language": ["en", "de", "et"],
            "mass_en": [0.5, 0.2, 0.1],
            "mass_de": [0.1, 0.3, 0.1],
            "mass_fr": [0.1, 0.1, 0.2],
            "mass_none": [0.3, 0.4, 0.6],
        }
    )
    got = shares(rows, {"en": "en", "de": "de", "et": None})
    np.testing.assert_allclose(got["native"], [0.5, 0.3, np.nan])
    np.testing.assert_allclose(got["other"], [0.2, 0.1, np.nan])
    np.testing.assert_allclose(got["en"] + got["native"].where(got.language != "en", 0) + got["other"]
                               + got["none"], [1, 1, np.nan])  # fmt: skip


def test_the_control_is_the_same_language_read_from_the_other_prompts() -> None:
    rows = pd.DataFrame(
        {
            "lens": "logit",
            "layer": 1,
            "item_id": ["a", "a", "a", "b", "b", "b"],
            "language": ["de", "fr", "zh", "de", "fr", "zh"],
            "mass_de": [0.5, 0.1, 0.3, 0.4, 0.2, 0.0],
            "mass_fr": [0.0, 0.6, 0.2, 0.1, 0.3, 0.1],
            "mass_zh": [0.1, 0.0, 0.2, 0.0, 0.0, 0.9],
        }
    )
    got = elsewhere(rows, {"de": "de", "fr": "fr", "zh": "zh", "et": None})
    np.testing.assert_allclose(got, [0.2, 0.1, 0.05, 0.1, 0.1, 0.0])


def test_bad_inputs_before_any_work(tmp_path: Path) -> None:
    lm, ds = tiny_model("gemma3"), toy_dataset(n=2)
    with pytest.raises(OptionError, match="'xx' names no language"):
        latent_stage(lm, ds, tmp_path, languages=["en", "xx"])
    with pytest.raises(OptionError, match="positions"):
        latent_stage(lm, ds, tmp_path, positions="first")
    with pytest.raises(ValueError, match="no translator for layers"):
        latent_stage(lm, ds, tmp_path, layers=[3], lenses=[random_lens(lm)])
    assert not any(tmp_path.iterdir())


def test_an_unidentified_language_is_read_with_its_native_mass_missing(tmp_path: Path) -> None:
    """Estonian has no token list: its English mass and entropy are read, its native mass is missing."""
    lm = tiny_model("qwen2")
    base = toy_dataset(n=2)
    et = [replace(it, language="et") for it in base.items["de"]]
    ds = replace(base, languages=["en", "et"], items={"en": base.items["en"], "et": et}, dropped={})
    s = run_latent(lm, ds, tmp_path, layers=[2, 4])
    assert s["unidentified"] == ["et"] and s["native"]["et"] is None
    cell = s["curves"]["last"]["logit"]["et"][4]
    assert math.isnan(cell["native"]["mean"]) and 0 <= cell["en"]["mean"] <= 1 and cell["entropy"]["mean"] > 0


def test_report_section_and_printed_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tiny-gemma3" / "crosslens-mini"
    lm = tiny_model("gemma3")
    ds = load_dataset("crosslens-mini", ["en", "de", "sw"]).limit(4)
    s = run_latent(lm, ds, out, layers=[1, 2, 4], lenses=["logit", random_lens(lm, (1, 2))],
                   positions="answer")  # fmt: skip
    assert set(s["curves"]) == {"last", "answer"} and s["lenses"] == ["logit", "tuned"]
    from crosslens.stages.latent.cli import print_summary

    print_summary(json.loads((out / "latent_summary.json").read_text()), out)
    printed = capsys.readouterr().out
    assert "tuned lens, last prompt token" in printed and "token-language table" in printed
    write_report(tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert "Latent language per layer (logit lens, the last prompt token)" in page
    assert "Latent language per layer (tuned lens, the gold answer" in page
    assert "token-language table" in page  # a line of the run metadata
    [(header, cells)] = PART.columns(ResultFolder.read(out, tmp_path))  # the evaluation's language table
    assert header.startswith("peak English mass") and set(cells) == {"en", "de", "sw"}
    for name in ("fig11_latent.png", "fig11_latent_answer.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")


def test_the_command_reads_prints_and_resumes(saved_model: Path, toy_jsonl_dir: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out = tmp_path / "out"
    argv = ["latent", "-m", str(saved_model), "-d", "jsonl", "--data-dir", str(toy_jsonl_dir), "-o", str(out),
            "--layers", "1,4", "--limit", "3"]  # fmt: skip
    assert main(argv) == 0
    printed = " ".join(capsys.readouterr().out.split())  # rich wraps lines at the terminal's width
    assert "logit lens, last prompt token" in printed and (out / "fig11_latent.png").is_file()
    rows = pd.read_parquet(out / "latent")
    assert len(rows) == 3 * 3 * 2 and set(rows["lens"]) == {"logit"}
    shards = sorted(p.name for p in (out / "latent").iterdir())
    assert main(argv) == 0  # resumed: nothing to compute, nothing rewritten
    assert sorted(p.name for p in (out / "latent").iterdir()) == shards


@pytest.mark.slow
def test_gemma_answers_in_the_native_language_at_the_last_layer(tmp_path: Path) -> None:
    """Gemma 3 270M on four crosslens-mini items: masses sum to 1; after "Answer:" the last layer's
    mass is on the answer letters ("none"); at the gold answer's tokens the last layer is in the
    prompt's language, above English and above the same language read from the other prompts."""
    from crosslens.models.loading import load_model

    lm = load_model("gemma-3-270m")
    ds = load_dataset("crosslens-mini", ["en", "zh", "hi"]).limit(4)
    s = run_latent(lm, ds, tmp_path, layers=[12, 18], opts=EvalOptions(batch_size=4), positions="answer")
    rows = pd.read_parquet(tmp_path / "latent")
    mass = [c for c in rows.columns if c.startswith("mass_")]
    np.testing.assert_allclose(rows[mass].sum(axis=1), 1.0, atol=1e-4)
    assert s["table"]["vocab_share"] > 0.8
    for lang in ("en", "zh", "hi"):
        assert s["curves"]["last"]["logit"][lang][18]["none"]["mean"] > 0.5, lang
    for lang in ("zh", "hi"):
        cell = s["curves"]["answer"]["logit"][lang][18]
        assert cell["native"]["mean"] > max(cell["en"]["mean"], cell["native_elsewhere"]["mean"] + 0.1), lang
