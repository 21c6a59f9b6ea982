"""Small parallel datasets and an independent reference scorer for tests."""

from __future__ import annotations

import numpy as np
import torch

from crosslens.data.schema import Item, ParallelDataset

QUESTIONS = {
    "en": [
        ("What is the capital of France?", ["Berlin", "Paris", "Madrid", "Rome"], 1),
        ("How many legs does a dog have?", ["two", "four", "six"], 1),
        ("Which colour is the sky on a clear day?", ["green", "red", "blue", "black"], 2),
        ("What is 2 + 3?", ["5", "6"], 0),
        ("Which animal says moo?", ["cow", "cat", "dog", "bird", "fish"], 0),
        ("What do plants need to grow?", ["sunlight", "sand", "salt", "smoke"], 0),
        ("Which is a fruit?", ["stone", "apple", "chair", "car"], 1),
    ],
    "de": [
        ("Was ist die Hauptstadt von Frankreich?", ["Berlin", "Paris", "Madrid", "Rom"], 1),
        ("Wie viele Beine hat ein Hund?", ["zwei", "vier", "sechs"], 1),
        ("Welche Farbe hat der Himmel an einem klaren Tag?", ["grün", "rot", "blau", "schwarz"], 2),
        ("Was ist 2 + 3?", ["5", "6"], 0),
        ("Welches Tier macht muh?", ["Kuh", "Katze", "Hund", "Vogel", "Fisch"], 0),
        ("Was brauchen Pflanzen zum Wachsen?", ["Sonnenlicht", "Sand", "Salz", "Rauch"], 0),
        ("Was ist eine Frucht?", ["Stein", "Apfel", "Stuhl", "Auto"], 1),
    ],
    "zh": [
        ("法国的首都是哪里？", ["柏林", "巴黎", "马德里", "罗马"], 1),
        ("狗有几条腿？", ["两条", "四条", "六条"], 1),
        ("晴天的天空是什么颜色？", ["绿色", "红色", "蓝色", "黑色"], 2),
        ("2 + 3 等于多少？", ["5", "6"], 0),
        ("哪种动物会哞哞叫？", ["牛", "猫", "狗", "鸟", "鱼"], 0),
        ("植物生长需要什么？", ["阳光", "沙子", "盐", "烟"], 0),
        ("哪个是水果？", ["石头", "苹果", "椅子", "汽车"], 1),
    ],
}


def toy_dataset(languages=("en", "de", "zh"), n: int | None = None) -> ParallelDataset:
    items = {
        lang: [Item("toy", f"q{k}", lang, q, tuple(c), g) for k, (q, c, g) in enumerate(QUESTIONS[lang][:n])]
        for lang in languages
    }
    return ParallelDataset(
        "toy",
        list(languages),
        "en" if "en" in languages else None,
        items,
        {lang: 0 for lang in languages},
        "generic",
    )


def plain_label_logprobs(lm, prompt: str, label_ids: list[int]) -> np.ndarray:
    """The obvious implementation: one prompt, full forward, full logits, log-softmax."""
    ids = lm.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():  # logits_to_keep: the same logits, without projecting positions never read
        logits = lm.model(ids, logits_to_keep=1).logits[0, -1].float()
    return logits.log_softmax(-1)[label_ids].numpy()


def plain_continuation_logprobs(lm, prompt_ids: list[int], cont: list[int]) -> np.ndarray:
    ids = torch.tensor([list(prompt_ids) + list(cont)])
    with torch.no_grad():  # the logits of the last len(cont) + 1 positions: those predicting cont
        logp = lm.model(ids, logits_to_keep=len(cont) + 1).logits[0].float().log_softmax(-1)
    return np.array([logp[k, t].item() for k, t in enumerate(cont)])


def kill_after_first_shard(cmd: list[str], records, timeout: float = 300) -> None:
    """Start ``cmd``, SIGKILL it as soon as one finished shard is in ``records`` (or it ends)."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not list(records.glob("[!.]*.parquet")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
