"""Scoring: label tokenisation, batching/padding invariance, parity with a plain transformers loop."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import FAMILIES, tiny_model
from crosslens.data.prompts import get_template, render
from crosslens.models.passes import length_batches, prefix_groups
from crosslens.scoring.choices import (
    SHARED_PREFIX_MIN,
    encode_continuation,
    label_plan,
    rank_choices,
    score_prompts,
)
from helpers import plain_continuation_logprobs, plain_label_logprobs, toy_dataset


def test_label_plan_prefers_space_label_and_is_single_token(tiny):
    plan = label_plan(tiny.tokenizer)
    assert plan.form == "space"
    assert plan.letters == ("A", "B", "C", "D", "E")
    for letter, tid in zip(plan.letters, plan.token_ids):
        assert tiny.tokenizer(f"Answer: {letter}", add_special_tokens=False).input_ids[-1] == tid
    expected_prefix = "▁" if tiny.anatomy.model_type.startswith("gemma") else "Ġ"
    assert all(t.startswith(expected_prefix) for t in plan.tokens)


def test_label_plan_falls_back_to_bare_letters():
    class MergingTokenizer:
        """Pretend tokenizer where ' A' splits into two tokens but 'A' is one."""

        def __call__(self, text, add_special_tokens=True):
            class R:
                pass

            r = R()
            r.input_ids = [ord(c) for c in text.replace(" A", " \x00A").replace(" B", " \x00B")]
            return r

        def convert_ids_to_tokens(self, ids):
            return [chr(i) for i in ids]

    plan = label_plan(MergingTokenizer(), n_max=2)
    assert plan.form == "nospace"


def test_rank_ties_go_to_the_earlier_choice():
    assert rank_choices([-1.0, -0.5, -0.5, -2.0]) == [3, 1, 2, 4]


def _inputs(lm, ds, lang="de"):
    template = get_template(ds.template)
    items = [ds.item(lang, i) for i in ds.item_ids()]
    prompts = [render(it, template) for it in items]
    pids = [lm.tokenizer(p).input_ids for p in prompts]
    conts = [
        [encode_continuation(lm.tokenizer, p, pid, c)[0] for c in it.choices]
        for it, p, pid in zip(items, prompts, pids)
    ]
    labels = [label_plan(lm.tokenizer).for_n(len(it.choices)) for it in items]
    return items, prompts, pids, conts, labels


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_batched_equals_unbatched_and_plain_loop(tiny, padding_side):
    if padding_side == "right" and tiny.anatomy.model_type == "gemma3_text":
        pytest.skip("right padding past a sliding window is refused (see the next tests)")
    ds = toy_dataset()
    items, prompts, pids, conts, labels = _inputs(tiny, ds)
    L = tiny.anatomy.n_layers
    layers = [1, L]
    one = dict(score_prompts(tiny, pids, layers, labels, conts, batch_size=1))
    many = dict(score_prompts(tiny, pids, layers, labels, conts, batch_size=4, padding_side=padding_side))
    for i in range(len(items)):
        for layer in layers:
            np.testing.assert_allclose(one[i].label_logprobs[layer], many[i].label_logprobs[layer], atol=1e-4)
            for a, b in zip(one[i].text_logprobs[layer], many[i].text_logprobs[layer]):
                np.testing.assert_allclose(a, b, atol=1e-4)
        # The final layer is the model's own output: compare with the obvious implementation.
        np.testing.assert_allclose(
            many[i].label_logprobs[L], plain_label_logprobs(tiny, prompts[i], labels[i]), atol=1e-4
        )
        for c, got in zip(conts[i], many[i].text_logprobs[L]):
            np.testing.assert_allclose(got, plain_continuation_logprobs(tiny, pids[i], c), atol=1e-4)


def test_continuations_longer_than_sliding_window_are_exact():
    """Gemma 3's tiny config has an 8-token sliding window: cached continuations must respect it."""
    from conftest import tiny_model

    lm = tiny_model("gemma3")
    assert lm.model.config.sliding_window == 8
    ds = toy_dataset()
    items, prompts, pids, conts, labels = _inputs(lm, ds, "en")
    L = lm.anatomy.n_layers
    got = dict(score_prompts(lm, pids, [L], labels, conts, batch_size=3))
    for i in range(len(items)):
        assert len(pids[i]) > 8
        for c, lp in zip(conts[i], got[i].text_logprobs[L]):
            np.testing.assert_allclose(lp, plain_continuation_logprobs(lm, pids[i], c), atol=1e-4)


def test_right_padding_past_sliding_window_is_refused():
    from conftest import tiny_model

    lm = tiny_model("gemma3")
    ds = toy_dataset()
    _, _, pids, conts, labels = _inputs(lm, ds, "en")
    with pytest.raises(ValueError, match="sliding window"):
        list(score_prompts(lm, pids, [1], labels, conts, batch_size=3, padding_side="right"))


def test_encode_continuation_keeps_prompt_tokens(tiny):
    prompt = "Question: What is 2 + 3? A: 5 B: 6 Answer:"
    pids = tiny.tokenizer(prompt).input_ids
    cont, joint = encode_continuation(tiny.tokenizer, prompt, pids, "Paris")
    assert joint
    assert tiny.tokenizer(prompt + " Paris").input_ids == pids + cont


def test_length_batches_groups_similar_lengths():
    batches = length_batches([5, 1, 4, 2, 3], batch_size=2)
    assert batches == [[1, 3], [4, 2], [0]]
    assert length_batches([10, 10, 10], batch_size=8, max_tokens=20) == [[0, 1], [2]]


def test_prefix_groups_share_only_long_whole_prefixes():
    passage = list(range(100, 140))  # 40 shared tokens
    prompts = [
        passage + [1, 2, 3],  # 0 \
        [7, 8, 9],  # 1 alone
        passage + [1, 2, 4, 5],  # 2  > one group sharing the 39 tokens all four have
        passage[:20] + [6],  # 3 alone: shares only 20 tokens
        passage + [1, 9],  # 4 /
        passage,  # 5 joins: its own last token (the 40th) stays its own
    ]
    groups = prefix_groups(prompts, min_shared=32)
    assert sorted(sorted(m) for _, m in groups) == [[0, 2, 4, 5], [1], [3]]
    for k, members in groups:
        if len(members) == 1:
            assert k == 0
            continue
        assert k >= 32
        assert all(prompts[m][:k] == prompts[members[0]][:k] and len(prompts[m]) > k for m in members)
    assert prefix_groups(prompts, min_shared=32) == groups  # deterministic


def test_shared_prefixes_give_the_labels_of_separate_prompts(tiny):
    """Two or three questions about one passage: labels at every layer as if scored one by one."""
    passage = " ".join(["The river crossed the old valley near the town of Amber."] * 4)
    questions = ["Where is the town?", "What crossed it?", "Is it old?", "Who lives there?", "Why?"]
    prompts = [f"P: {passage}\nQ: {q}\nA: yes\nB: no\nAnswer:" for q in questions]
    prompts += ["Q: Short and alone?\nA: yes\nB: no\nAnswer:"]
    pids = [tiny.tokenizer(p).input_ids for p in prompts]
    labels = [label_plan(tiny.tokenizer).for_n(2)] * len(prompts)
    groups = prefix_groups(pids, SHARED_PREFIX_MIN)
    assert any(len(m) == len(questions) for _, m in groups), "the passage prompts must share"
    layers = [0, 1, tiny.anatomy.n_layers]
    shared = dict(score_prompts(tiny, pids, layers, labels, batch_size=3))
    alone = dict(score_prompts(tiny, pids, layers, labels, batch_size=1, padding_side="right"))
    for i, prompt in enumerate(prompts):
        for layer in layers:
            np.testing.assert_allclose(
                shared[i].label_logprobs[layer], alone[i].label_logprobs[layer], atol=1e-4
            )
        np.testing.assert_allclose(
            shared[i].label_logprobs[layers[-1]], plain_label_logprobs(tiny, prompt, labels[i]), atol=1e-4
        )


def test_a_prefix_every_prompt_shares_is_encoded_once_and_changes_no_reading(tiny, monkeypatch):
    """Few-shot prompts (one exemplar block, questions of different lengths) with answer texts:
    labels and continuations at every layer as a plain forward of each whole prompt gives them,
    for every family (tiny Gemma 3's 8-token sliding window is far shorter than these prompts)."""
    import crosslens.scoring.choices as scoring

    block = (
        "Q: Which is a colour? A: red B: dog Answer: A\n\nQ: Which is an animal? A: cat B: blue Answer: A\n\n"
    )
    questions = ["Which one swims?", "Name the one that flies over the sea at night?", "Which?"]
    prompts = [f"{block}Q: {q} A: fish B: stone Answer:" for q in questions]
    pids = [tiny.tokenizer(p).input_ids for p in prompts]
    labels = [label_plan(tiny.tokenizer).for_n(2)] * len(prompts)
    conts = [
        [encode_continuation(tiny.tokenizer, p, ids, c)[0] for c in ("fish", "a stone")]
        for p, ids in zip(prompts, pids)
    ]
    groups = scoring._share(pids)
    assert len(groups) == 1 and sorted(groups[0][1]) == [0, 1, 2] and groups[0][0] >= SHARED_PREFIX_MIN
    encoded: list[int] = []
    real = scoring.prompt_pass
    monkeypatch.setattr(
        scoring, "prompt_pass", lambda lm, ps, *a, **k: encoded.append(len(ps)) or real(lm, ps, *a, **k)
    )
    layers = [0, 1, tiny.anatomy.n_layers]
    got = dict(score_prompts(tiny, pids, layers, labels, conts, batch_size=2))
    assert encoded == [1], "the shared block is encoded once for all three prompts (two chunks of 2 + 1)"
    final = layers[-1]
    for i, prompt in enumerate(prompts):
        np.testing.assert_allclose(
            got[i].label_logprobs[final], plain_label_logprobs(tiny, prompt, labels[i]), atol=1e-4
        )
        for j, cont in enumerate(conts[i]):
            np.testing.assert_allclose(
                got[i].text_logprobs[final][j], plain_continuation_logprobs(tiny, pids[i], cont), atol=1e-4
            )
    if tiny.anatomy.model_type == "gemma3_text":
        return  # right padding past its 8-token window is refused; its final layer is checked above
    alone = dict(score_prompts(tiny, pids, layers, labels, conts, batch_size=1, padding_side="right"))
    for i in range(len(prompts)):
        for layer in layers:
            np.testing.assert_allclose(
                got[i].label_logprobs[layer], alone[i].label_logprobs[layer], atol=1e-4
            )
            for j in range(2):
                np.testing.assert_allclose(
                    got[i].text_logprobs[layer][j], alone[i].text_logprobs[layer][j], atol=1e-4
                )


def test_share_prefers_the_prefix_every_prompt_has_when_it_saves_more():
    from crosslens.scoring.choices import _share

    block = list(range(100, 200))  # a 100-token exemplar block
    passage_a, passage_b = list(range(300, 340)), list(range(400, 440))
    prompts = [
        block + passage_a + [1],
        block + passage_a + [2],
        block + passage_b + [3],
        block + passage_b + [4],
    ]
    assert _share(prompts) == [(100, [0, 1, 2, 3])]  # saves 3 x 100 tokens, the pairs 2 x 140
    head = list(range(100, 135))  # 35 tokens every prompt has, 80 each pair has
    pa, pb = head + list(range(300, 345)), head + list(range(400, 445))
    pairs = [pa + [1], pa + [2], pb + [3], pb + [4]]
    assert _share(pairs) == [(80, [0, 1]), (80, [2, 3])]  # 2 x 80 saved beats 3 x 35


def _windowed_mistral():
    """A tiny Mistral with a 6-token sliding window and no layer types (one mask for all layers)."""
    from dataclasses import replace

    import torch
    from transformers import AutoModelForCausalLM

    from conftest import _config
    from crosslens.models.anatomy import Anatomy

    base = tiny_model("mistral")
    config = _config("mistral", len(base.tokenizer))
    config.sliding_window = 6
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.load_state_dict(base.model.state_dict())
    assert getattr(model.config, "layer_types", None) is None
    return replace(base, model=model, anatomy=Anatomy.of(model), spec="tiny-mistral-window-6")


def _plain_states(lm, ids: list[int], layers: list[int]):
    """Residual states at every position of one unpadded sequence (the model's own masks)."""
    import torch

    from crosslens.models.anatomy import capture_residuals

    with torch.inference_mode(), capture_residuals(lm.anatomy, layers) as states:
        lm.model.get_decoder()(input_ids=torch.tensor([ids]))
    return {layer: h[0] for layer, h in states.items()}


@pytest.fixture(params=[*FAMILIES, "mistral-window-6"])
def tree_model(request):
    return _windowed_mistral() if request.param == "mistral-window-6" else tiny_model(request.param)


@pytest.mark.parametrize("cached", [False, True])
def test_tree_pass_reads_each_path_as_its_own_forward(tree_model, cached):
    """Trees (a prefix, questions after it, answers after each question; siblings never see each
    other) give the states of one plain forward per path, at every layer, for every family: tiny
    Gemma 3's 8-token and the Mistral's 6-token windows are far shorter than these paths, Gemma 2
    runs eager soft-capped attention. After a cache (prompts of different lengths, left-padded)
    the rows follow their own prompt."""
    from crosslens.models.passes import prompt_pass, tree_pass

    lm = tree_model
    layers = [0, 1, lm.anatomy.n_layers]
    tok = list(range(5, 60))
    roots = [tok[:3], tok[10:24]] if cached else [[], []]
    pp = prompt_pass(lm, roots, [], "left", use_cache=True) if cached else None
    prefix, q1, a1, q2, a2, b1 = tok[:20], tok[20:25], tok[25:28], tok[28:35], tok[35:39], tok[40:43]
    rows = [
        [(prefix, -1), (q1, 0), (a1, 1), (q2, 0), (a2, 3)],  # a passage, two questions, an answer each
        [(tok[44:55], -1), (b1, 0), (tok[30:32], 0)],  # a prompt and two answers
    ]
    paths = [
        [prefix + q1 + a1, prefix + q2 + a2],
        [tok[44:55] + b1, tok[44:55] + tok[30:32]],
    ]
    owner = [1, 0]
    keep = [list(range(39)), list(range(16))]
    got = tree_pass(lm, rows, layers, keep, pp, owner if cached else None)
    for r, row_paths in enumerate(paths):
        root = roots[owner[r]]
        # offsets of each path's tokens in the row: the shared part, then each path's own segments
        offsets = (
            [list(range(28)), list(range(20)) + list(range(28, 39))]
            if r == 0
            else [list(range(14)), list(range(11)) + list(range(14, 16))]
        )
        for path, where in zip(row_paths, offsets):
            plain = _plain_states(lm, root + path, layers)
            for layer in layers:
                np.testing.assert_allclose(
                    got[layer][r][where].numpy(), plain[layer][len(root) :].numpy(), atol=1e-4, rtol=1e-4
                )


def test_trees_pad_nothing_inside_a_row_and_little_between_rows(monkeypatch):
    """Prompts of very different lengths with answers of different lengths: each forward computes at
    most MAX_PADDING more tokens than its trees hold, and the readings are those of plain forwards."""
    import crosslens.models.passes as passes
    from crosslens.models.passes import MAX_PADDING

    lm = tiny_model("llama")
    prompts = [
        "Q: Which one swims? A: fish B: stone Answer:",
        "Q: Name the animal that flies over the sea at night and sleeps by day? A: owl B: a cat Answer:",
        "Q: Which? A: x B: y Answer:",
    ]
    pids = [lm.tokenizer(p).input_ids for p in prompts]
    conts = [[encode_continuation(lm.tokenizer, p, ids, c)[0] for c in ("fish", "a stone on the beach")]
             for p, ids in zip(prompts, pids)]  # fmt: skip
    labels = [label_plan(lm.tokenizer).for_n(2)] * len(prompts)
    seen: list[tuple[int, int]] = []
    real = passes.tree_pass

    def counted(lm, rows, *args, **kwargs):
        lengths = [sum(len(t) for t, _ in row) for row in rows]
        seen.append((sum(lengths), len(rows) * max(lengths)))
        return real(lm, rows, *args, **kwargs)

    monkeypatch.setattr("crosslens.scoring.choices.tree_pass", counted)
    got = dict(score_prompts(lm, pids, [lm.anatomy.n_layers], labels, conts, batch_size=3))
    assert seen and all(computed <= (1 + MAX_PADDING) * needed for needed, computed in seen)
    final = lm.anatomy.n_layers
    for i, prompt in enumerate(prompts):
        np.testing.assert_allclose(
            got[i].label_logprobs[final], plain_label_logprobs(lm, prompt, labels[i]), atol=1e-4
        )
        for c, lp in zip(conts[i], got[i].text_logprobs[final]):
            np.testing.assert_allclose(lp, plain_continuation_logprobs(lm, pids[i], c), atol=1e-4)


def test_length_batches_stop_before_too_much_padding():
    assert length_batches([10, 10, 11, 20, 21], batch_size=8, max_padding=0.1) == [[0, 1, 2], [3, 4]]
    # sizes: a group of 3 prompts and one of 2 exceed a batch of 4 together
    assert length_batches([5, 5], batch_size=4, sizes=[3, 2]) == [[0], [1]]
