"""Autoregressive GRU decoder over SELFIES tokens, with an optional property head on z."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vaeflow.models.distributions import gaussian_log_density
from vaeflow.models.outputs import DecoderOutput
from vaeflow.registry import DECODERS

# The special tokens at the start of every SELFIES vocabulary (ids 0, 1, 2, in this order): the
# molecule data side builds its vocabulary around them and decodes tokens with them.
PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIALS = (PAD, BOS, EOS)


@DECODERS.register("selfies_gru")
class SelfiesGRUDecoder(nn.Module):
    """z → GRU over SELFIES tokens (Gómez-Bombarelli et al. 2018 with SELFIES, Krenn et al. 2020,
    https://arxiv.org/abs/1905.13741): any token sequence decodes to a valid molecule.

    With a target, ``forward`` is teacher-forced and returns logits; without one it returns the
    code that ``generate`` starts from. The likelihood is categorical over tokens (padding after
    ``<eos>`` masked out) times, when ``predict_properties``, a Gaussian over the standardised
    properties (logP, QED, SA, weight) predicted from z by a small head: p(x, y | z) = p(x | z) p(y | z).
    The head reads z alone, never the condition: a property-conditional model's condition *is* y,
    and a head that read it would score p(y | z, y), a term it could satisfy without z.

    Args:
        input_spec: the data's spec (``vocab`` as a list of strings, ``max_tokens``, ``properties``).
        latent_dim: size of z.
        cond_dim: size of the condition vector concatenated to z; 0 for none.
        embed: token embedding width.
        hidden: GRU width.
        layers: GRU layers.
        dropout: dropout between GRU layers and on token embeddings while teacher forcing.
        word_dropout: while training, the share of teacher-forced input tokens (after ``<bos>``)
            replaced by ``<pad>``, whose embedding is fixed at zero (Bowman et al. 2016,
            https://arxiv.org/abs/1511.06349). A decoder that cannot read the previous tokens must
            read z, the usual remedy when an autoregressive decoder models the molecules well enough
            on its own that the KL falls to the free-bits floor.
        max_len: longest generated sequence (tokens, ``<eos>`` included); None uses the data's longest.
        temperature: softmax temperature when sampling tokens (``generate(mean=False)``).
        predict_properties: add the property head and its likelihood term.

    Shapes:
        z: (N, latent_dim); cond: (N, cond_dim); target.tokens: (N, L) → params: (N, L, V) logits
        (or (N, latent_dim + cond_dim) without a target); aux: (N, P) property predictions from z.
    """

    # The modalities whose batches this module reads; config validation rejects it for any other.
    modalities = ("molecule",)

    likelihood = "categorical"

    def __init__(
        self,
        *,
        input_spec: dict[str, Any],
        latent_dim: int,
        cond_dim: int = 0,
        embed: int = 64,
        hidden: int = 256,
        layers: int = 2,
        dropout: float = 0.0,
        word_dropout: float = 0.0,
        max_len: int | None = None,
        temperature: float = 1.0,
        predict_properties: bool = True,
    ):
        super().__init__()
        self.vocab: list[str] = list(input_spec["vocab"])
        self.pad, self.bos, self.eos = (self.vocab.index(t) for t in (PAD, BOS, EOS))
        self.max_len = int(max_len or input_spec["max_tokens"])
        self.temperature = temperature
        if not 0.0 <= word_dropout < 1.0:
            raise ValueError(f"word_dropout must be in [0, 1), got {word_dropout}")
        self.word_dropout = word_dropout
        self.layers, self.hidden = layers, hidden
        code = latent_dim + cond_dim
        v = len(self.vocab)
        self.embed = nn.Embedding(v, embed, padding_idx=self.pad)
        self.init = nn.Linear(code, layers * hidden)
        self.gru = nn.GRU(embed + code, hidden, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, v)
        n_props = len(input_spec.get("properties", ())) if predict_properties else 0
        self.property_head = nn.Sequential(nn.Linear(latent_dim, hidden), nn.SiLU(), nn.Linear(hidden, n_props)) if n_props else None
        # Learned log standard deviation of each standardised property.
        self.property_log_scale = nn.Parameter(torch.zeros(n_props)) if n_props else None
        # The first token must be an atom: an opening ring/branch token could decode to an empty molecule.
        first = torch.tensor([not (t in SPECIALS or t.startswith(("[Ring", "[Branch", "[=Ring", "[=Branch",
                                                                          "[#Ring", "[#Branch")))
                              for t in self.vocab])
        self.register_buffer("first_allowed", first, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in (self.embed, self.init, self.gru, self.out):
            m.reset_parameters()
        if self.property_head is not None:
            for m in self.property_head:
                if isinstance(m, nn.Linear):
                    m.reset_parameters()
            nn.init.zeros_(self.property_log_scale)
        with torch.no_grad():
            self.embed.weight[self.pad].zero_()

    def _code(self, z: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return torch.cat([z, cond], -1) if cond is not None else z

    def _h0(self, code: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.init(code)).view(-1, self.layers, self.hidden).transpose(0, 1).contiguous()  # (layers, N, H)

    def predict_properties(self, z: torch.Tensor) -> torch.Tensor:
        """The property head's standardised predictions from z alone (the condition is not read).

        Shapes:
            z: (N, latent_dim) → (N, P)

        Raises:
            ValueError: the decoder was built without a property head.
        """
        if self.property_head is None:
            raise ValueError("this model has no property head; train with model.decoder.predict_properties: true")
        return self.property_head(z)

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None, target: Any = None) -> DecoderOutput:
        code = self._code(z, cond)
        aux = self.property_head(z) if self.property_head is not None else None  # z alone: p(y | z)
        if target is None:
            return DecoderOutput(params=code, aux=aux)
        tokens = target.tokens.long()  # (N, L)
        inputs = torch.cat([torch.full_like(tokens[:, :1], self.bos), tokens[:, :-1]], 1)  # shift right: <bos> t1 … t_{L-1}
        if self.training and self.word_dropout > 0:
            drop = torch.rand(inputs.shape, device=inputs.device) < self.word_dropout
            drop[:, 0] = False  # <bos> stays
            inputs = inputs.masked_fill(drop, self.pad)
        e = self.drop(self.embed(inputs))  # (N, L, E)
        e = torch.cat([e, code[:, None].expand(-1, e.shape[1], -1)], -1)  # z at every step: (N, L, E + code)
        h, _ = self.gru(e, self._h0(code))
        return DecoderOutput(params=self.out(self.drop(h)), aux=aux)  # (N, L, V)

    def log_prob(self, output: DecoderOutput, target: Any) -> torch.Tensor:
        """log p(tokens | z) [+ log p(properties | z)], summed over tokens and properties.

        Shapes:
            output.params: (..., N, L, V); target.tokens: (N, L) → (..., N)
        """
        logits = output.params
        tokens = target.tokens.long().expand(logits.shape[:-1])
        lp = -F.cross_entropy(logits.flatten(0, -2), tokens.flatten(), reduction="none").view(tokens.shape)
        lp = (lp * (tokens != self.pad)).sum(-1)
        if output.aux is not None and getattr(target, "properties", None) is not None:
            y = target.properties.expand_as(output.aux)
            lp = lp + gaussian_log_density(y, output.aux, self.property_log_scale).sum(-1)
        return lp

    def mean(self, output: DecoderOutput) -> torch.Tensor:
        """The greedy (most likely token at each step) sequence. Shapes: (N, max_len) token ids."""
        return self.generate(output, None, mean=True)

    @torch.no_grad()
    def generate(self, output: DecoderOutput, generator: torch.Generator | None = None, *, mean: bool = True) -> torch.Tensor:
        """Token ids, greedy (``mean``) or sampled at ``temperature``; ``<pad>`` after ``<eos>``.

        Shapes:
            output.params: (N, latent_dim + cond_dim) → (N, max_len) long
        """
        code = output.params
        n = code.shape[0]
        h = self._h0(code)
        token = torch.full((n, 1), self.bos, dtype=torch.long, device=code.device)
        out = torch.full((n, self.max_len), self.pad, dtype=torch.long, device=code.device)
        # Rows still generating: a finished row leaves the batch, so a step costs only the unfinished
        # ones (sampled lengths vary widely; most rows end long before max_len).
        active = torch.arange(n, device=code.device)
        banned_always = torch.zeros(len(self.vocab), dtype=torch.bool, device=code.device)
        banned_always[[self.pad, self.bos]] = True
        for t in range(self.max_len):
            e = torch.cat([self.embed(token), code[active, None]], -1)  # (n_active, 1, E + code)
            y, h = self.gru(e, h)
            logits = self.out(y[:, 0]).float()  # (n_active, V)
            banned = ~self.first_allowed if t == 0 else banned_always
            logits = logits.masked_fill(banned, -math.inf)
            if mean:
                nxt = logits.argmax(-1)
            else:
                probs = torch.softmax(logits / self.temperature, -1)
                nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
            out[active, t] = nxt
            going = nxt != self.eos
            if not going.any():
                break
            if not going.all():
                active, h, nxt = active[going], h[:, going], nxt[going]
            token = nxt[:, None]
        return out
