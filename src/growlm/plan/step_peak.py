"""STEP's layer split when the budget must hold a step's whole peak, not only model state.

STEP's integer program (growlm.plan.step_ip) minimises the largest stage's model state,
P_i = 16·n_i·P_layer + 2·N_{i-1}·P_layer + 16·N_{i-1}·E. A run also needs its activations and
the step's workspace, which grow with the micro-batch, the sequence length and the number of
layers a gradient passes through. Here each stage's cost is `growlm.plan.memory.estimate_peak`
of that stage as a STEP recipe builds it: N inherited layers (frozen, with rank-r adapters on
their linears) and n new trainable layers interpolated between them
(`growlm.grow.depth.insertion_counts`), the embedding, final norm and head frozen after stage 1
(or trainable), for one micro-batch of B × T tokens.

That peak is a maximum over moments of the step (the loss, the backward through each layer,
the optimizer step), so it is not linear in the layer counts and the MILP does not apply.
Because a stage's peak depends only on (N, n), the exact minimax split follows from a small
dynamic program over a table of at most L²/2 estimates: best_k(m) = min over n of
max(best_{k-1}(m - n), peak(m - n, n)), with best_1(m) = peak(0, m). Hand-written because
it is a dozen lines and needs no solver; `tests/plan/test_step_ip.py` checks it against
enumerating every split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from growlm.errors import GrowlmError
from growlm.grow.depth import insertion_counts
from growlm.model.config import ModelConfig
from growlm.plan.layout import parameter_names
from growlm.plan.memory import estimate_peak
from growlm.plan.precision import BF16_MIXED, Precision
from growlm.plan.step_ip import DEFAULT_TARGETS, StepSolution, check_stages

_MODULES = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
            "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


def stage_layout(cfg: ModelConfig, inherited: int, new: int, adapter_rank: int = 0,
                 embed_head: Literal["trainable", "frozen"] = "frozen",
                 targets: tuple[str, ...] = DEFAULT_TARGETS) -> tuple[ModelConfig, set[str], dict[str, int]]:
    """(shape, frozen parameter names, adapter parameters per linear) of a STEP stage with
    `inherited` old layers and `new` interpolated ones (stage 1: inherited = 0)."""
    shape = cfg.with_(n_layers=inherited + new)
    if inherited == 0:
        return shape, set(), {}
    old, position = [], 0
    for k in insertion_counts(inherited, new):
        old.append(position)
        position += 1 + k
    d, f, hd = shape.d_model, shape.hidden_dim, shape.head_size
    dims = {"q_proj": (d, shape.n_heads * hd), "k_proj": (d, shape.kv_heads * hd),
            "v_proj": (d, shape.kv_heads * hd), "o_proj": (shape.n_heads * hd, d),
            "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}
    frozen: set[str] = set()
    adapters: dict[str, int] = {}
    names = parameter_names(shape)
    for j in old:
        frozen |= {n for n in names if n.startswith(f"layers.{j}.")}
        for t in targets:
            if t in dims and (shape.block == "full" or _MODULES[t] == "self_attn") and adapter_rank:
                adapters[f"layers.{j}.{_MODULES[t]}.{t}"] = adapter_rank * sum(dims[t])
    if embed_head == "frozen":
        frozen |= {n for n in names if not n.startswith("layers.")}
    return shape, frozen, adapters


@dataclass
class PeakTable:
    """Estimated step peak of every STEP stage shape a split of `n_layers` can produce,
    keyed by (inherited layers, new layers); filled on first use."""

    cfg: ModelConfig
    adapter_rank: int
    batch: int
    seq_len: int
    precision: Precision = BF16_MIXED
    checkpointing: bool = False
    embed_head: Literal["trainable", "frozen"] = "frozen"
    targets: tuple[str, ...] = DEFAULT_TARGETS
    _peaks: dict[tuple[int, int], int] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.batch <= 0 or self.seq_len <= 0:
            raise GrowlmError(f"micro-batch size and sequence length must be positive, got "
                              f"{self.batch}, {self.seq_len}")
        if self.seq_len > self.cfg.max_seq_len:
            self.cfg = self.cfg.with_(max_seq_len=self.seq_len)

    @property
    def n_layers(self) -> int:
        return self.cfg.n_layers

    def peak(self, inherited: int, new: int) -> int:
        key = (inherited, new)
        if key not in self._peaks:
            shape, frozen, adapters = stage_layout(self.cfg, inherited, new, self.adapter_rank,
                                                   self.embed_head, self.targets)
            self._peaks[key] = estimate_peak(shape, frozen, adapters, self.batch, self.seq_len,
                                             precision=self.precision,
                                             checkpointing=self.checkpointing).peak
        return self._peaks[key]

    def stage_bytes(self, split: list[int]) -> list[int]:
        out, inherited = [], 0
        for n in split:
            out.append(self.peak(inherited, n))
            inherited += n
        return out


def solve_step_peak(table: PeakTable, stages: int) -> StepSolution:
    """The split of `table.n_layers` layers into `stages` stages (each adding ≥ 1 layer) whose
    largest estimated step peak is smallest (module docstring); ties go to the split that adds
    fewer layers early."""
    check_stages(table, stages)
    L = table.n_layers
    best = {m: (table.peak(0, m), [m]) for m in range(1, L - stages + 2)}
    for k in range(2, stages + 1):
        nxt = {}
        for m in range(k, L - (stages - k) + 1):
            options = [(max(best[m - n][0], table.peak(m - n, n)), best[m - n][1] + [n])
                       for n in range(1, m - k + 2) if m - n in best]
            nxt[m] = min(options, key=lambda o: (o[0], o[1]))
        best = nxt
    peak, split = best[L]
    return StepSolution(split, table.stage_bytes(split), peak, stages)
