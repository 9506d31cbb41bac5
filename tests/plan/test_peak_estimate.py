"""The peak estimate against the CPU allocator's measured peak of real training steps.

Each configuration is built by the trainer's own boundary code and stepped by its train step;
the probe (growlm.memory_probe.PeakMemory) measures the second step, when the optimizer state
exists. What the step adds above the live bytes at its start (weights, optimizer state,
buffers, and anything else the test process holds) is compared with the estimate's peak above
weights, optimizer state and buffers. These are memory figures, not timings.
"""

import pytest
import torch

from growlm.config import config_from_dict
from growlm.memory_probe import PeakMemory
from growlm.stages import resolve_stages
from growlm.train import boundary
from growlm.train.parallel import Parallelism
from growlm.train.step import train_step

STAGES = {
    "full": [{"name": "s", "steps": 4}],
    "step_relora": [{"name": "a", "n_layers": 2, "steps": 4},
                    {"name": "b", "steps": 4, "grow": {"op": "interpolate", "add": 2},
                     "freeze": ["inherited"],
                     "adapters": {"kind": "relora", "rank": 4, "reset_every": 4, "rewarmup_steps": 1}}],
    "galore": [{"name": "s", "steps": 4}],
}


def _config(setup: str, vocab: int, checkpointing: bool, accumulation: int, batch: int = 4, seq: int = 64):
    optim = {"name": "galore", "galore": {"rank": 8}} if setup == "galore" else {"name": "adamw"}
    return config_from_dict({
        "run": {"name": "m", "device": "cpu", "activation_checkpointing": checkpointing},
        "model": {"vocab_size": vocab, "d_model": 64, "n_layers": 4, "n_heads": 4, "max_seq_len": seq},
        "data": {"train": "unused", "seq_len": seq},
        "train": {"global_batch_tokens": seq * batch * accumulation, "micro_batch_size": batch},
        "optim": optim, "stage": STAGES[setup]}, "test")


def _measured_step(cfg) -> tuple[int, object]:
    """(bytes the second step added at its peak above what was live at its start, estimate)."""
    stages = resolve_stages(cfg, cfg.source)
    handoff = None
    if len(stages) > 1:  # the previous stage's weights, as a hand-off
        handoff = boundary.HandOff(stages[-2].model, boundary.new_model(stages[-2].model, 1).state_dict())
    parallel = Parallelism(cfg.run, None, torch.device("cpu"))
    built = boundary.enter_stage(cfg, stages[-1], handoff, stages[-2] if handoff else None, parallel=parallel)
    built.module = parallel.wrap(built.model, built.optimizer)
    del handoff
    gen = torch.Generator().manual_seed(0)
    accumulation = boundary.accumulation_steps(cfg)

    def step():
        batches = []
        for _ in range(accumulation):
            x = torch.randint(0, cfg.model.vocab_size, (cfg.train.micro_batch_size, cfg.data.seq_len + 1),
                              generator=gen)
            batches.append((x[:, :-1].contiguous(), x[:, 1:].contiguous()))
        train_step(built, batches, lr=1e-3, grad_clip=1.0)

    step()
    with PeakMemory("cpu") as probe:
        step()
    return probe.peak_above_baseline_bytes, boundary.stage_memory(built, cfg)


@pytest.mark.parametrize("setup, vocab, checkpointing, accumulation, batch, moment", [
    ("full", 2048, False, 1, 4, "loss"),
    ("step_relora", 4096, True, 1, 4, "loss"),
    ("galore", 1024, False, 2, 4, "loss"),
    ("full", 8192, False, 1, 1, "optimizer step"),  # one short sequence: the gradients dominate
])
def test_estimated_peak_within_ten_percent_of_the_measured(setup, vocab, checkpointing, accumulation,
                                                           batch, moment):
    measured, est = _measured_step(_config(setup, vocab, checkpointing, accumulation, batch))
    estimated = est.peak - est.weights - est.optimizer_state - est.buffers
    assert est.precision == "fp32" and est.moment.startswith(moment)
    assert 0.9 < estimated / measured < 1.1, (setup, estimated, measured, est.moment)
