"""Model anatomy: where a causal LM keeps its blocks, final norm and unembedding.

One layer numbering is used by the whole project (lens, activations, steering):

* layer 0 is the embeddings output (the input of the first decoder block, after any
  embedding scaling such as Gemma's sqrt(d_model));
* layer l (1 <= l <= n_layers) is the output of decoder block l (1-based), i.e. the
  residual stream *before* the final norm.

transformers' ``hidden_states[-1]`` is the *post-norm* output of the last block, so it is
never used here: states are captured with hooks on the blocks themselves, and
:meth:`Anatomy.lens_logits` applies the final norm exactly once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn

from crosslens.errors import CrosslensError

__all__ = ["Family", "FAMILIES", "Anatomy", "UnsupportedModelError", "paper_layers", "capture_residuals"]


class UnsupportedModelError(CrosslensError, ValueError):
    """A model whose family has no adapter: we refuse rather than guess its layout."""


@dataclass(frozen=True)
class Family:
    """Module-path templates of one architecture family (steering-vectors style, no isinstance chains)."""

    blocks: str = "model.layers"
    final_norm: str = "model.norm"
    head: str = "lm_head"
    softcap_attr: str | None = None  # config attribute holding the final-logit softcap, if any
    mlp_act: str = "mlp.act_fn"  # in a block: the gated MLP's activation function (its output = the neurons)


_STANDARD = Family()
_GEMMA = Family(softcap_attr="final_logit_softcapping")

#: model_type -> family. Add a line here (and a tiny-model test) to support a new family.
FAMILIES: dict[str, Family] = {
    "llama": _STANDARD,
    "mistral": _STANDARD,
    "qwen2": _STANDARD,
    "qwen3": _STANDARD,
    "gemma": _GEMMA,
    "gemma2": _GEMMA,
    "gemma3_text": _GEMMA,
}


def family_for(model_type: str) -> Family:
    """Return the adapter for ``model_type`` or fail with one line that says how to add one."""
    try:
        return FAMILIES[model_type]
    except KeyError:
        known = ", ".join(sorted(FAMILIES))
        raise UnsupportedModelError(
            f"unsupported model family '{model_type}' (supported: {known}); to add one, register its "
            f"block/norm/head module paths in crosslens.anatomy.FAMILIES"
        ) from None


def paper_layers(n_layers: int, every: int = 4) -> list[int]:
    """The paper's schedule: every ``every``-th block, ending at the last one (42 -> 2, 6, ..., 42)."""
    if n_layers < 1 or every < 1:
        raise ValueError(f"paper_layers needs n_layers >= 1 and every >= 1, got {n_layers}, {every}")
    return list(range(n_layers % every or every, n_layers + 1, every))


@dataclass(frozen=True)
class Anatomy:
    """The parts of a loaded causal LM that the lens, activations and steering need."""

    model_type: str
    blocks: nn.ModuleList
    final_norm: nn.Module
    head: nn.Module
    softcap: float | None
    mlp_act: str = "mlp.act_fn"
    #: The dtype :meth:`log_normaliser` multiplies the head in when not the head's own: bf16-mixed's
    #: bfloat16 (its float32 head would be the slowest product of a lens or cloze run).
    normaliser_dtype: torch.dtype | None = None

    @classmethod
    def of(cls, model: nn.Module, normaliser_dtype: torch.dtype | None = None) -> Anatomy:
        """Read the anatomy of ``model`` through its family's module-path table."""
        model_type = model.config.model_type
        fam = family_for(model_type)
        modules = dict(model.named_modules())
        missing = [p for p in (fam.blocks, fam.final_norm, fam.head) if p not in modules]
        if missing:
            raise UnsupportedModelError(
                f"model of type '{model_type}' lacks modules {missing}; its layout differs from the "
                "crosslens adapter in crosslens.anatomy.FAMILIES"
            )
        softcap = getattr(model.config, fam.softcap_attr, None) if fam.softcap_attr else None
        return cls(
            model_type,
            modules[fam.blocks],
            modules[fam.final_norm],
            modules[fam.head],
            softcap,
            fam.mlp_act,
            normaliser_dtype,
        )

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def d_model(self) -> int:
        return int(self.head.weight.shape[1])

    @property
    def unembed_weight(self) -> torch.Tensor:
        return self.head.weight

    @property
    def unembed_bias(self) -> torch.Tensor | None:
        return getattr(self.head, "bias", None)

    def neurons(self, layer: int) -> nn.Module:
        """The module whose output is block ``layer``'s MLP neurons: act_fn(gate_proj(x)), the
        factor that multiplies up_proj(x) before down_proj (LAPE's activation, Tang et al. 2024)."""
        if not 1 <= layer <= self.n_layers:
            raise ValueError(f"neuron layer {layer} out of range 1..{self.n_layers}")
        try:
            return self.blocks[layer - 1].get_submodule(self.mlp_act)
        except AttributeError:
            raise UnsupportedModelError(
                f"model of type '{self.model_type}' has no MLP activation module at '{self.mlp_act}' in its "
                "blocks; register it as Family.mlp_act in crosslens.anatomy.FAMILIES"
            ) from None

    @property
    def n_neurons(self) -> int:
        """MLP neurons per block (the gated MLP's intermediate size)."""
        return int(self.blocks[0].get_submodule(self.mlp_act.rsplit(".", 1)[0]).gate_proj.out_features)

    def check_layers(self, layers: Sequence[int]) -> list[int]:
        """Validate a layer list against the numbering above; returns it sorted and de-duplicated."""
        bad = [ell for ell in layers if not 0 <= int(ell) <= self.n_layers]
        if bad:
            raise ValueError(f"layers {bad} out of range: this model has layers 0..{self.n_layers}")
        return sorted({int(ell) for ell in layers})

    def lens_logits(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """Map a residual state at the output of block ``layer`` to float32 vocabulary logits.

        Exactly the model's own head: final norm once, unembedding (+ bias), final-logit softcap.
        For ``layer == n_layers`` this reproduces the model's output logits.
        """
        self.check_layers([layer])
        return self._head(self._normed(h))

    def _normed(self, h: torch.Tensor) -> torch.Tensor:
        w = self.head.weight
        return self.final_norm(h.to(device=w.device, dtype=w.dtype))

    def _head(self, hn: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """float32 logits of normalised states ``hn``: every token, or (float32 throughout) only the
        tokens ``rows`` (N, k) of each state."""
        w, bias = self.head.weight, self.unembed_bias
        if rows is None:
            logits = nn.functional.linear(hn, w, bias).float()
        else:
            logits = torch.einsum("nd,nkd->nk", hn.float(), w[rows].float())
            if bias is not None:
                logits = logits + bias[rows].float()
        return self.cap(logits)

    @cached_property
    def _normaliser_head(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The unembedding (and bias) :meth:`log_normaliser` multiplies: the head's, or a copy in
        ``normaliser_dtype`` made once (Gemma 3 270M: 335 MB in bfloat16)."""
        w, bias = self.head.weight, self.unembed_bias
        if self.normaliser_dtype in (None, w.dtype):
            return w, bias
        cast = self.normaliser_dtype
        return w.detach().to(cast), (bias.detach().to(cast) if bias is not None else None)

    def cap(self, logits: torch.Tensor) -> torch.Tensor:
        """The final-logit softcap (Gemma 2), or the logits unchanged."""
        return torch.tanh(logits / self.softcap) * self.softcap if self.softcap else logits

    def token_logprobs(
        self, h: torch.Tensor, layer: int, targets: torch.Tensor, max_elements: int = 2**26
    ) -> torch.Tensor:
        """log softmax(lens_logits(h))[targets] for rows of ``h``: ``(N, d)``; ``targets``: (N,) or
        (N, k). Returns float32 (N,) / (N, k). At most ``max_elements`` logits exist at a time, so a
        262k vocabulary never materialises a (positions x vocab) matrix beyond the budget.

        A float32 head gives the float32 log-softmax of its projection, row block by row block. A
        lower-precision one (bfloat16; bf16-mixed's normaliser) gives the targets' logits computed in
        float32 from each normalised state and the targets' unembedding rows (near-equal bfloat16
        logits would round to exact ties, which argmax gives to choice A; see docs/lens.md) minus
        :meth:`log_normaliser`, whose blocks keep its bfloat16 products from waiting on float32
        elementwise work. (The blocked normaliser is also 1.4x faster and closer to float64 in
        float32 — 6e-6 instead of 7e-5 on Gemma 3's 262k vocabulary — but it would move float32
        results by those 7e-5, and float32 is the reference every other precision is measured by.)
        """
        self.check_layers([layer])
        squeeze = targets.dim() == 1
        tg = targets.unsqueeze(-1) if squeeze else targets
        hn = self._normed(h)
        if self._normaliser_head[0].dtype == torch.float32:
            rows = max(1, max_elements // self.head.weight.shape[0])
            out = _by_rows(lambda x, t: torch.log_softmax(self._head(x), dim=-1).gather(-1, t), hn, tg, rows)
        else:
            rows = max(1, max_elements // max(1, tg.shape[-1] * hn.shape[-1]))  # (rows, k, d) unembedding
            out = _by_rows(self._head, hn, tg, rows) - self.log_normaliser(hn, max_elements)[:, None]
        return out.squeeze(-1) if squeeze else out

    def log_normaliser(self, hn: torch.Tensor, max_elements: int = 2**26) -> torch.Tensor:
        """logsumexp over the vocabulary of the (capped) logits of normalised states ``hn`` (N, d), in
        float32 (N,).

        The head is multiplied in its own dtype, or ``normaliser_dtype`` (bf16-mixed), with float32
        accumulation, in blocks of ``VOCAB_BLOCK`` vocabulary rows; each block's logits are cast to
        float32, reduced to one logsumexp per state, and the blocks' values are combined in float32.
        A block is small enough to stay in cache, so the elementwise work (cast, max, exp, sum) costs
        a fraction of one pass over a full (rows x vocab) matrix, and the states share each read of
        a block's unembedding rows.
        """
        w, bias = self._normaliser_head
        rows = min(ROW_BLOCK, max(1, max_elements // VOCAB_BLOCK))
        hn = hn.to(w.dtype)
        out = torch.full((len(hn), -(-w.shape[0] // VOCAB_BLOCK)), -torch.inf, device=hn.device)
        for k, v in enumerate(range(0, w.shape[0], VOCAB_BLOCK)):
            wv, bv = w[v : v + VOCAB_BLOCK], bias[v : v + VOCAB_BLOCK] if bias is not None else None
            for s in range(0, len(hn), rows):
                logits = self.cap(nn.functional.linear(hn[s : s + rows], wv, bv).float())
                out[s : s + rows, k] = torch.logsumexp(logits, -1)
        return torch.logsumexp(out, -1)


def _by_rows(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], hn: torch.Tensor, tg: torch.Tensor, rows: int
) -> torch.Tensor:
    """``fn(states, targets)`` over blocks of ``rows`` states, concatenated (float32 (N, k))."""
    parts = [fn(hn[s : s + rows], tg[s : s + rows].to(hn.device)) for s in range(0, len(hn), rows)]
    return torch.cat(parts) if parts else torch.empty(tg.shape)


#: The normaliser's blocks (:meth:`Anatomy.log_normaliser`): vocabulary rows of the head and states
#: multiplied at a time; 512 x 8192 float32 logits (16 MiB) stay in a server CPU's cache. On the 2-core
#: EPYC (AVX512-BF16), 1024 states x Gemma 3's 262k vocabulary in bfloat16: 1.05 s instead of 1.71 s
#: for one (256 x 262k) block at a time (one thread; docs/benchmarks.md).
VOCAB_BLOCK = 8192
ROW_BLOCK = 512


def _block_output(output: object) -> torch.Tensor:
    # transformers 5 decoder layers return a tensor; older ones a tuple whose first item is the state.
    return output[0] if isinstance(output, tuple) else output  # type: ignore[index,return-value]


@contextlib.contextmanager
def capture_residuals(
    anatomy: Anatomy, layers: Sequence[int], index: torch.Tensor | None = None
) -> Iterator[dict[int, torch.Tensor]]:
    """Record the residual stream at ``layers`` (project numbering) during the forward passes run
    inside the block.

    ``index``: optional (batch, k) long tensor of sequence positions; when given only those
    positions are kept (the memory-bounded path), giving (batch, k, d) per layer, else (batch, seq, d).
    Hooks are registered inside ``try`` and always removed.
    """
    layers = anatomy.check_layers(layers)
    store: dict[int, torch.Tensor] = {}

    def keep(layer: int, h: torch.Tensor) -> None:
        if index is not None:
            idx = index.to(h.device).unsqueeze(-1).expand(-1, -1, h.shape[-1])
            h = h.gather(1, idx)
        store[layer] = h.detach()

    handles = []
    try:
        for layer in layers:
            if layer == 0:

                def pre(_m: nn.Module, args: tuple, kwargs: dict) -> None:
                    keep(0, args[0] if args else kwargs["hidden_states"])

                handles.append(anatomy.blocks[0].register_forward_pre_hook(pre, with_kwargs=True))
            else:

                def post(_m: nn.Module, _a: tuple, output: object, layer: int = layer) -> None:
                    keep(layer, _block_output(output))

                handles.append(anatomy.blocks[layer - 1].register_forward_hook(post))
        yield store
    finally:
        for handle in handles:
            handle.remove()
