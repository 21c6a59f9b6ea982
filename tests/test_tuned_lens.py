"""The lens interface and the tuned lens: identity at init, training beats the logit lens, resume,
refusals (another model, pickles, trained-on items), the lens stage and CLI, tuned-lens's format."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CORPUS, FAMILIES, tiny_model
from crosslens.cli import main
from crosslens.lenses.lens import LensError, LensInfo, LogitLens, TunedLens, load_lens
from crosslens.lenses.training import Corpus, TrainSettings, corpus_from_dataset, train_lens
from crosslens.models.anatomy import Anatomy
from crosslens.models.loading import LoadedModel
from crosslens.scoring.choices import score_prompts
from crosslens.stages.lens.stage import lens_stage, run_lens
from crosslens.store import RunMismatchError
from helpers import toy_dataset

TEXT = Corpus(tuple(f"{line} {k}" for k, line in enumerate(CORPUS * 3)), {"source": "test"})
QUICK = TrainSettings(
    layers=(0, 1, 2, 3),
    tokens=3000,
    batch=4,
    positions=8,
    seq_len=32,
    val_tokens=200,
    lr=3e-3,
    checkpoint_every=5,
)


def random_lens(lm, layers=(1, 2), scale=0.05, seed=0) -> TunedLens:
    lens = TunedLens(lm.anatomy, layers, LensInfo({}, list(layers)), sha256="test")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lin in lens.translators.values():
            lin.weight.copy_(scale * torch.randn(lin.weight.shape, generator=g))
            lin.bias.copy_(scale * torch.randn(lin.bias.shape, generator=g))
    return lens


@pytest.mark.parametrize("family", FAMILIES)
def test_untrained_tuned_lens_is_the_logit_lens(family):
    lm = tiny_model(family)
    n = lm.anatomy.n_layers
    tuned = TunedLens(lm.anatomy, range(n), LensInfo({}, list(range(n))))
    logit = LogitLens(lm.anatomy)
    h = 5 * torch.randn(6, lm.anatomy.d_model, generator=torch.Generator().manual_seed(1))
    for layer in range(n + 1):
        torch.testing.assert_close(tuned.logits(h, layer), logit.logits(h, layer), atol=1e-6, rtol=0)
    if family == "gemma2":  # the softcap bends the head's logits under both lenses
        assert tuned.logits(h, 2).abs().max() <= lm.model.config.final_logit_softcapping


def test_batched_readings_translate_each_layer_with_its_own_map(tiny):
    """One projection for all layers, yet each layer's states go through that layer's translator:
    the scores equal log_softmax(head(h + A_l h + b_l)) from transformers' own hidden states."""
    lm = tiny
    lens = random_lens(lm, layers=(1, 2))
    ids = lm.tokenizer("Question: What is the capital of France? Answer:").input_ids
    cont = lm.tokenizer(" Paris", add_special_tokens=False).input_ids
    labels = [lm.tokenizer(" A", add_special_tokens=False).input_ids[-1]]
    [(_, sc)] = list(score_prompts(lm, [ids], [1, 2, 4], [labels], [[cont]], lens=lens))
    with torch.no_grad():
        out = lm.model(torch.tensor([ids + cont[:-1]]), output_hidden_states=True)
    for layer in (1, 2):
        h = out.hidden_states[layer][0]
        with torch.no_grad():
            x = h + lens.translators[str(layer)](h)
            logp = torch.log_softmax(lm.anatomy.lens_logits(x, layer), -1)
        pos = len(ids) - 1
        np.testing.assert_allclose(sc.label_logprobs[layer], logp[pos, labels].numpy(), atol=1e-4)
        want = [float(logp[pos + k, t]) for k, t in enumerate(cont)]
        np.testing.assert_allclose(sc.text_logprobs[layer][0], want, atol=1e-4)
    # The last layer is the model's own output under every lens.
    final = torch.log_softmax(out.logits[0, len(ids) - 1].float(), -1)
    np.testing.assert_allclose(sc.label_logprobs[4], final[labels].numpy(), atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_beats_the_logit_lens_at_every_trained_layer(family, tmp_path, one_torch_thread):
    lm = tiny_model(family)
    lens = train_lens(lm, TEXT, tmp_path / "lens", QUICK)
    kl = lens.info.val_kl
    assert set(kl["tuned"]) == {"0", "1", "2", "3"}
    for layer in kl["tuned"]:
        assert kl["tuned"][layer] < kl["logit"][layer], (layer, kl)
    doc = json.loads((tmp_path / "lens" / "lens.json").read_text())
    assert doc["val_kl"] == kl and doc["model"]["spec"] == lm.spec
    assert doc["training"]["corpus"] == {"source": "test"}
    # Exactly `tokens` positions are trained: 94 steps of 4 documents x 8 positions at least (more
    # where the tokenizer leaves documents shorter than 9 tokens, which give fewer positions).
    assert doc["training"]["positions"]["train"] == 3000 and doc["training"]["steps"] >= 94
    # The held-out documents hold fewer than val_tokens positions here: the count says so.
    assert 0 < doc["training"]["positions"]["validation"] <= 200
    # Loaded back, it reads exactly as trained.
    again = load_lens(f"tuned:{tmp_path / 'lens'}", lm)
    h = torch.randn(3, lm.anatomy.d_model)
    torch.testing.assert_close(again.logits(h, 2), lens.logits(h, 2))


def test_resume_after_a_kill_gives_the_same_weights(tmp_path, one_torch_thread):
    lm = tiny_model("gemma2")
    whole = train_lens(lm, TEXT, tmp_path / "whole", QUICK)

    class Killed(Exception):
        pass

    def kill(step: int, steps: int, loss: float, positions: int) -> None:
        if step == 13:  # after the checkpoint of step 10, before the next
            raise Killed

    with pytest.raises(Killed):
        train_lens(lm, TEXT, tmp_path / "resumed", QUICK, on_step=kill)
    assert not (tmp_path / "resumed" / "lens.json").exists()
    assert (tmp_path / "resumed" / "checkpoint.safetensors").exists()
    resumed = train_lens(lm, TEXT, tmp_path / "resumed", QUICK)
    for key, value in whole.tensors().items():
        assert torch.equal(value, resumed.tensors()[key]), key
    assert resumed.sha256 == whole.sha256
    assert not (tmp_path / "resumed" / "checkpoint.safetensors").exists()
    # Finished: reused as is; other settings or another model: refused.
    assert train_lens(lm, TEXT, tmp_path / "resumed", QUICK).sha256 == whole.sha256
    with pytest.raises(LensError, match="other settings .*tokens: 3000 -> 6000"):
        train_lens(lm, TEXT, tmp_path / "resumed", TrainSettings(**{**QUICK.__dict__, "tokens": 6000}))
    with pytest.raises(LensError, match="corpus: other text"):
        train_lens(lm, Corpus(TEXT.documents[1:]), tmp_path / "resumed", QUICK)


def test_a_lens_of_another_model_is_refused(tmp_path, one_torch_thread):
    lm = tiny_model("llama")
    train_lens(lm, TEXT, tmp_path / "lens", TrainSettings(**{**QUICK.__dict__, "tokens": 200}))
    for other in ("qwen2", "mistral"):  # same shapes as llama (mistral: even the same family layout)
        with pytest.raises(LensError, match="was made for another model"):
            load_lens(f"tuned:{tmp_path / 'lens'}", tiny_model(other))
    lens = load_lens(f"tuned:{tmp_path / 'lens'}", lm)
    with pytest.raises(LensError, match="built for another loaded model"):
        lens_stage(tiny_model("qwen2"), toy_dataset(), tmp_path / "out", layers=[1], lens=lens)
    # A changed weight file is refused too.
    weights = tmp_path / "lens" / "lens.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(LensError, match="does not match the hash"):
        load_lens(f"tuned:{tmp_path / 'lens'}", lm)
    with pytest.raises(LensError, match="holds no lens"):
        load_lens(f"tuned:{tmp_path}", lm)
    with pytest.raises(LensError, match="unknown lens"):
        load_lens("tunned:x", lm)


def test_lenses_saved_by_the_tuned_lens_project(tmp_path):
    """tuned-lens's TunedLens.save: config.json + params.pt of the translators' state dict
    ("<i>.weight", "<i>.bias" for hidden_states[i], i < L); read with weights_only=True."""
    from crosslens.lenses.lens import tuned_lens_hash

    lm = tiny_model("llama")
    n, d = lm.anatomy.n_layers, lm.anatomy.d_model
    g = torch.Generator().manual_seed(3)
    state = {f"{i}.{p}": 0.05 * torch.randn(*((d, d) if p == "weight" else (d,)), generator=g)
             for i in range(n) for p in ("weight", "bias")}  # fmt: skip
    folder = tmp_path / "tl"
    folder.mkdir()
    config = {"base_model_name_or_path": "tiny", "d_model": d, "num_hidden_layers": n, "bias": True,
              "base_model_revision": None, "unembed_hash": tuned_lens_hash(lm.anatomy),
              "lens_type": "linear_tuned_lens"}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    torch.save(state, folder / "params.pt")
    lens = load_lens(f"tuned:{folder}", lm)
    assert lens.layers == list(range(n)) and lens.info.source == "tuned-lens"
    h = torch.randn(2, d)
    want = lm.anatomy.lens_logits(h + h @ state["1.weight"].T + state["1.bias"], 1)
    torch.testing.assert_close(lens.logits(h, 1), want, atol=1e-5, rtol=1e-5)
    # Another model's hash, shape or anything but plain tensors: refused.
    (folder / "config.json").write_text(json.dumps(config | {"unembed_hash": "0" * 64}))
    with pytest.raises(LensError, match="another model"):
        load_lens(f"tuned:{folder}", lm)
    (folder / "config.json").write_text(json.dumps(config | {"num_hidden_layers": n + 1}))
    with pytest.raises(LensError, match="num_hidden_layers"):
        load_lens(f"tuned:{folder}", lm)
    (folder / "config.json").write_text(json.dumps(config))
    torch.save({"0.weight": state["0.weight"], "extra": Path("x")}, folder / "params.pt")
    with pytest.raises(LensError, match="not a plain tensor file"):
        load_lens(f"tuned:{folder}", lm)


def test_lens_stage_through_a_tuned_lens(tmp_path, one_torch_thread):
    lm = tiny_model("gemma2")
    ds = toy_dataset()
    settings = TrainSettings(**{**QUICK.__dict__, "layers": (1, 3)})
    lens = train_lens(lm, TEXT, tmp_path / "lens", settings)
    out = tmp_path / "out"
    logit = run_lens(lm, ds, out, layers=[1, 3, 4])
    tuned = run_lens(lm, ds, out, layers=[1, 3, 4], lens=f"tuned:{tmp_path / 'lens'}")
    assert (out / "lens_summary.json").exists() and (out / "lens_tuned_summary.json").exists()
    assert tuned["lens"] == "tuned" and logit["lens"] == "logit"
    assert tuned["val_kl"] == lens.info.val_kl and tuned["lens_sha256"] == lens.sha256
    run = json.loads((out / "run.json").read_text())
    assert run["stages"]["lens_tuned"]["fingerprint"]["lens"] == {"kind": "tuned", "sha256": lens.sha256}
    assert run["stages"]["lens"]["fingerprint"]["lens"] == "logit"
    # The last layer reads the same through both; earlier ones differ.
    assert tuned["latent_accuracy"]["native"][4] == logit["latent_accuracy"]["native"][4]
    assert tuned["log_ratio"][1]["per_language"] != logit["log_ratio"][1]["per_language"]
    # A layer the lens was not trained for, another lens into the same folder: refused.
    with pytest.raises(LensError, match="no translator for layers \\[0\\]"):
        lens_stage(lm, ds, out, layers=[0, 1], lens=lens)
    other = train_lens(lm, TEXT, tmp_path / "other", TrainSettings(**{**settings.__dict__, "seed": 1}))
    with pytest.raises(RunMismatchError, match="lens"):
        lens_stage(lm, ds, out, layers=[1, 3, 4], lens=other).check()


def test_a_lens_is_never_read_on_the_items_it_was_trained_on(tmp_path, one_torch_thread):
    lm = tiny_model("qwen2")
    ds = toy_dataset()
    small = TrainSettings(**{**QUICK.__dict__, "tokens": 200, "layers": (1,)})
    train_lens(lm, corpus_from_dataset(ds.subset(["q4", "q5", "q6"])), tmp_path / "lens", small)
    with pytest.raises(LensError, match="trained on the text of 1 of the items"):
        lens_stage(
            lm, ds.subset(["q0", "q1", "q6"]), tmp_path / "out", layers=[1], lens=f"tuned:{tmp_path / 'lens'}"
        )
    run_lens(
        lm, ds.subset(["q0", "q1", "q2"]), tmp_path / "out", layers=[1], lens=f"tuned:{tmp_path / 'lens'}"
    )


def test_cli_train_lens_then_read_with_both_lenses(saved_model, tmp_path, capsys, one_torch_thread):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXT.documents) + "\n")
    lens_dir = tmp_path / "lens"
    args = ["train-lens", "--model", str(saved_model), "--corpus", str(corpus), "--layers", "1,3",
            "--tokens", "600", "--batch", "4", "--positions", "8", "--seq-len", "32", "--val-tokens", "100",
            "--out", str(lens_dir)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "validation KL" in printed and "wrote" in printed
    kl = json.loads((lens_dir / "lens.json").read_text())["val_kl"]
    assert all(kl["tuned"][k] < kl["logit"][k] for k in ("1", "3"))
    out = tmp_path / "out"
    args = ["lens", "--model", str(saved_model), "-d", "crosslens-mini", "--languages", "en,de",
            "--limit", "3", "--layers", "1,3,4", "--lens", "logit", "--lens", f"tuned:{lens_dir}",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "logit lens" in printed and "tuned lens" in printed and "val KL" in printed
    assert main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "Tuned lens per layer" in report and "fig10_lens_fidelity.png" in report
    assert (out / "fig2_lens_tuned.png").exists()
    # Before the model loads: a lens for another depth, a folder without a lens, an untrained layer.
    bad = [
        (["--lens", f"tuned:{tmp_path}"], "holds no lens"),
        (["--lens", "tuned"], "'tuned' without a folder"),
        (["--lens", f"tuned:{lens_dir}", "--lens", f"tuned:{tmp_path}"], "name each lens kind once"),
        (["--lens", "tuned:x", "--lens", "wrong"], "unknown lens"),
    ]
    for extra, message in bad:
        assert main(args[:-6] + extra + ["--out", str(tmp_path / "o2")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_run_trains_the_tuned_lens_it_reads_with(tmp_path, one_torch_thread):
    """``lens: {lenses: [logit, tuned], train: ...}``: the run trains a lens per model x dataset on the
    dataset's unread items, reads through it, and a re-run reuses it (nothing retrained or rewritten)."""
    from crosslens.experiment.config import parse_config
    from crosslens.experiment.runner import run_experiment

    lm = tiny_model("gemma3")
    data = {
        "models": [lm.spec],
        "datasets": [{"name": "crosslens-mini", "languages": ["en", "de", "zh"], "limit": 6}],
        "layers": [1, 3, 4],
        "lens": {"lenses": ["logit", "tuned"], "train": {"tokens": 400, "batch": 4, "positions": 8,
                                                         "seq_len": 32, "val_tokens": 64}},
        "pca": {"enabled": False},
        "batch_size": 8,
        "output": str(tmp_path / "runs"),
    }  # fmt: skip
    run_experiment(parse_config(data, check_models=False), progress=False, models={lm.spec: lm})
    folder = tmp_path / "runs" / lm.spec / "crosslens-mini"
    doc = json.loads((folder / "tuned_lens" / "lens.json").read_text())
    assert doc["layers"] == [1, 3] and doc["training"]["corpus"]["source"] == "dataset"
    from crosslens.store import Store

    read = set(Store(folder).read("lens_tuned")["item_id"])
    assert len(read) == 6 and not read & set(doc["training"]["corpus"]["item_ids"])
    assert len(doc["training"]["corpus"]["item_ids"]) == 64 - 6
    tuned = json.loads((folder / "lens_tuned_summary.json").read_text())
    assert tuned["val_kl"] == doc["val_kl"] and tuned["n_items"] == 6
    assert "Tuned lens per layer" in (tmp_path / "runs" / "report.md").read_text()
    stamp = {p: p.stat().st_mtime_ns for p in (folder / "tuned_lens").iterdir()}
    shards = sorted(p.name for p in (folder / "lens_tuned").glob("*.parquet"))
    run_experiment(parse_config(data, check_models=False), progress=False, models={lm.spec: lm})
    assert stamp == {p: p.stat().st_mtime_ns for p in (folder / "tuned_lens").iterdir()}
    assert shards == sorted(p.name for p in (folder / "lens_tuned").glob("*.parquet"))
    # Other training settings for the same folder: refused, nothing written.
    data["lens"]["train"]["tokens"] = 800
    with pytest.raises(LensError, match="other settings .*tokens: 400 -> 800"):
        run_experiment(parse_config(data, check_models=False), progress=False, models={lm.spec: lm})


@pytest.mark.parametrize(
    ("lens", "message"),
    [
        ({"lenses": ["logit", "tuned"]}, "'tuned' without a folder needs train"),
        ({"lenses": ["logit"], "train": {}}, "trains the lens named 'tuned'"),
        ({"lenses": ["tuned:a", "tuned:b"]}, "name each lens kind once"),
        ({"lenses": ["tunde"]}, "unknown lens 'tunde'"),
        ({"lenses": ["tuned"], "train": {"corpus": ["x.txt"], "dataset": {"name": "xcopa"}}}, "not both"),
        ({"lenses": ["tuned"], "train": {"corpus": ["/nonexistent/x.txt"]}}, "lens.train.corpus\\[0\\]"),
        ({"lenses": ["tuned"], "train": {"dataset": {"name": "xstorycloz"}}}, "did you mean 'xstorycloze'"),
        ({"lenses": ["tuned:/nonexistent"]}, "lens.lenses: /nonexistent holds no lens"),
    ],
)
def test_bad_lens_configs_are_one_line(lens, message, tiny_llama_dir):
    from crosslens.experiment.config import ConfigError, parse_config

    data = {"models": [str(tiny_llama_dir)], "datasets": [{"name": "crosslens-mini"}], "lens": lens}
    with pytest.raises(ConfigError, match=message) as err:
        parse_config(data)
    assert "\n" not in str(err.value)


def test_resume_after_kill_9_in_another_process(tmp_path, one_torch_thread):
    """A real SIGKILL mid-training (right after step 13; checkpoint at 10), then a resume here: the
    weights equal an uninterrupted run's bit for bit."""
    import os
    import signal
    import subprocess
    import sys

    script = f"""
import os, signal, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import torch
torch.set_num_threads(1)
from test_tuned_lens import QUICK, TEXT
from conftest import tiny_model
from crosslens.lenses.training import train_lens

def die(step, steps, loss, positions):
    if step == 13:
        os.kill(os.getpid(), signal.SIGKILL)

train_lens(tiny_model("llama"), TEXT, {str(tmp_path / "killed")!r}, QUICK, on_step=die)
"""
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=os.environ
        | {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])},
    )
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "lens.json").exists()
    lm = tiny_model("llama")
    resumed = train_lens(lm, TEXT, tmp_path / "killed", QUICK)
    whole = train_lens(lm, TEXT, tmp_path / "whole", QUICK)
    assert resumed.sha256 == whole.sha256


def _bfloat16(lm: LoadedModel) -> LoadedModel:
    """The same model (same spec and identity) loaded in bfloat16."""
    model = copy.deepcopy(lm.model).to(torch.bfloat16)
    return dataclasses.replace(lm, model=model, dtype=torch.bfloat16, anatomy=Anatomy.of(model))


def test_a_checkpoint_of_another_model_dtype_or_setting_is_refused(tmp_path, one_torch_thread):
    """A checkpoint carries the whole training fingerprint: resumed by another model of the same shapes,
    the same model in another dtype, other settings or text, it is refused (one line, nothing
    changed) instead of continuing from the first model's weights; by the same one it resumes to the
    weights of an uninterrupted run."""
    from safetensors import safe_open
    from safetensors.torch import save

    lm = tiny_model("llama")
    folder = tmp_path / "lens"

    class Killed(Exception):
        pass

    def kill(step: int, steps: int, loss: float, positions: int) -> None:
        if step == 13:  # after the checkpoint of step 10
            raise Killed

    with pytest.raises(Killed):
        train_lens(lm, TEXT, folder, QUICK, on_step=kill)
    checkpoint = folder / "checkpoint.safetensors"
    before = checkpoint.read_bytes()
    cases = [
        (tiny_model("gemma3"), "checkpoint .*checkpoint.safetensors was made for another model"),
        (tiny_model("qwen2"), "was made for another model"),
        (_bfloat16(lm), "partly trained lens with other settings \\(dtype: 'float32' -> 'bfloat16'\\)"),
    ]
    for other, message in cases:
        with pytest.raises(LensError, match=message) as err:
            train_lens(other, TEXT, folder, QUICK)
        assert "\n" not in str(err.value)
    with pytest.raises(LensError, match="other settings \\(lr: 0.003 -> 0.001\\)"):
        train_lens(lm, TEXT, folder, TrainSettings(**{**QUICK.__dict__, "lr": 1e-3}))
    with pytest.raises(LensError, match="corpus: other text"):
        train_lens(lm, Corpus(TEXT.documents[1:]), folder, QUICK)
    assert checkpoint.read_bytes() == before and not (folder / "lens.json").exists()
    # A checkpoint written before checkpoints named their model: refused, never trusted.
    with safe_open(checkpoint, "pt") as fh:
        meta = {k: v for k, v in (fh.metadata() or {}).items() if k != "model"}
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    old = tmp_path / "old"
    old.mkdir()
    (old / "checkpoint.safetensors").write_bytes(save(tensors, metadata=meta))
    with pytest.raises(LensError, match="records no model .*delete it"):
        train_lens(lm, TEXT, old, QUICK)
    resumed = train_lens(lm, TEXT, folder, QUICK)
    assert resumed.sha256 == train_lens(lm, TEXT, tmp_path / "whole", QUICK).sha256
    # A finished lens in another dtype is refused too (it was reused before).
    with pytest.raises(LensError, match="holds a lens trained with other settings \\(dtype"):
        train_lens(_bfloat16(lm), TEXT, folder, QUICK)


def test_exactly_tokens_positions_are_trained_and_reported(tmp_path, one_torch_thread):
    """`tokens` is the number of positions trained, whatever the documents' lengths: short documents
    give fewer positions per step, so more steps run, and the last step is cut at the count. What is
    reported (progress, lens.json) is what ran, validation positions included."""
    lm = tiny_model("llama")
    short = Corpus(tuple(f"{w} {k}" for k, w in enumerate(["one", "two", "three", "four", "five"] * 4)))
    settings = TrainSettings(layers=(1, 2), tokens=64, batch=8, positions=32, seq_len=32, val_tokens=1024)
    seen: list[tuple[int, int, int]] = []
    lens = train_lens(lm, short, tmp_path / "lens", settings, lambda s, n, loss, p: seen.append((s, n, p)))
    training = lens.info.training
    assert training["positions"]["train"] == 64 == seen[-1][2]
    assert [s for s, _, _ in seen] == list(range(1, training["steps"] + 1))
    assert all(n == training["steps"] for _, n, _ in seen)
    assert training["steps"] > 1  # 64 positions > one step of 8 short documents
    lengths = [len(lm.tokenizer(d).input_ids) for d in short.documents]
    held_out = training["documents"]["validation"]
    assert 0 < training["positions"]["validation"] <= held_out * (max(lengths) - 1) < 1024


def test_cli_train_lens_resumes_by_any_path_and_refuses_another_model(
    tiny_llama_dir, saved_model, tmp_path, capsys, monkeypatch, one_torch_thread
):
    """Through main(): training interrupted (Ctrl-C) right after a checkpoint, then resumed. Another model
    of the same shapes or another dtype is refused with one line before anything changes; the same
    model by a relative path resumes to an uninterrupted run's weights (trained from a copy elsewhere),
    and the finished lens is reused by the copy. The counts printed are the counts trained."""
    import shutil

    import crosslens.lenses.training as training

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXT.documents) + "\n")
    lens_dir = tmp_path / "lens"

    def args(model, out=lens_dir, *extra):
        return ["train-lens", "--model", str(model), "--corpus", str(corpus), "--layers", "1,3", "--tokens",
                "200", "--batch", "4", "--positions", "8", "--seq-len", "32", "--val-tokens", "100",
                "--checkpoint-every", "2", "--out", str(out), *extra]  # fmt: skip

    write = training._checkpoint

    def interrupted(*a, **k):
        write(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "_checkpoint", interrupted)
    assert main(args(tiny_llama_dir.resolve())) == 130
    monkeypatch.undo()
    checkpoint = lens_dir / "checkpoint.safetensors"
    before = checkpoint.read_bytes()
    capsys.readouterr()
    monkeypatch.setattr("crosslens.models.loading.load_model", lambda *a, **k: pytest.fail("model loaded"))
    other = [(saved_model, [], "made for another model"), (tiny_llama_dir, ["--dtype", "bfloat16"], "dtype")]
    for model, extra, words in other:
        assert main(args(model, lens_dir, *extra)) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "checkpoint.safetensors" in lines[0] and words in lines[0], err
    monkeypatch.undo()
    assert checkpoint.read_bytes() == before and not (lens_dir / "lens.json").exists()
    copy = tmp_path / "elsewhere" / "model-copy"
    shutil.copytree(tiny_llama_dir, copy)
    monkeypatch.chdir(tiny_llama_dir.parent)
    assert main(args(f"./{tiny_llama_dir.name}")) == 0
    printed = " ".join(capsys.readouterr().out.split())  # the console wraps lines
    assert main(args(copy, tmp_path / "whole")) == 0
    capsys.readouterr()
    doc = json.loads((lens_dir / "lens.json").read_text())
    assert (
        doc["weights_sha256"] == json.loads((tmp_path / "whole" / "lens.json").read_text())["weights_sha256"]
    )
    counts = doc["training"]["positions"]
    assert counts["train"] == 200 and f"{counts['validation']} held-out positions" in printed
    assert f"200 positions in {doc['training']['steps']} steps" in printed
    assert main(args(copy)) == 0 and "reused" in capsys.readouterr().out
    assert main(args(saved_model)) == 2 and "made for another model" in capsys.readouterr().err


def test_head_dtype_bfloat16_and_auto(tmp_path, monkeypatch, one_torch_thread):
    """bfloat16 for the frozen head still trains below the logit lens (loss in float32); ``auto`` picks
    bfloat16 only where the hardware multiplies it, and the lens records the dtype it used."""
    import crosslens.lenses.training as training

    lm = tiny_model("gemma2")
    bf16 = train_lens(
        lm, TEXT, tmp_path / "bf16", TrainSettings(**{**QUICK.__dict__, "head_dtype": "bfloat16"})
    )
    assert all(bf16.info.val_kl["tuned"][k] < bf16.info.val_kl["logit"][k] for k in bf16.info.val_kl["tuned"])
    assert bf16.info.training["settings"]["head_dtype"] == "bfloat16"
    small = {**QUICK.__dict__, "tokens": 100, "head_dtype": "auto"}
    for units, want in ((False, "float32"), (True, "bfloat16")):
        monkeypatch.setattr(training, "bf16_units", lambda device, units=units: units)
        lens = train_lens(lm, TEXT, tmp_path / want, TrainSettings(**small))
        assert lens.info.training["settings"]["head_dtype"] == want
