"""Synthetic run directories: hand-written metrics.jsonl, run.json and shards meta.json."""

import json
from pathlib import Path

import pytest


def write_shards_meta(path: Path, tokenizer_sha: str = "a" * 64, fingerprint: str = "data-1") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "meta.json").write_text(json.dumps({
        "format": "growlm-shards", "version": 1, "dtype": "uint16",
        "tokenizer": {"name": "bpe", "sha256": tokenizer_sha, "vocab_size": 320, "eos_id": 0},
        "splits": {}, "sources": [], "fingerprint": fingerprint}))
    return path


def make_run(root: Path, name: str, curve: list[tuple[float, float]], *,
             stage_ends: list[int] | None = None, n_stages: int = 1, shards: Path | None = None,
             val: Path | None = None, tokens_per_flop: float = 1e-6,
             memory: list | None = None, eval_results: dict | None = None,
             stage_of_point: list[int] | None = None, extra_lines: str = "",
             legacy: bool = False, device: str = "auto", mfu: float | None = None) -> Path:
    """A run whose val curve is `curve` [(cumulative FLOPs, val loss)].

    One step record per curve point; stages (numbered from 1, as metrics.jsonl does):
    `stage_of_point[i]` (default all 1); `stage_ends`: stages that logged their end (default
    all); `memory[s - 1]`: the stage's memory dict, or (model state estimated, model state
    measured). `legacy`: write the format of older growlm versions (stages from 0, memory as
    estimated_bytes / measured_peak_bytes)."""
    run = root / name
    run.mkdir(parents=True)
    stage_of_point = stage_of_point or [1] * len(curve)
    stage_ends = list(range(1, n_stages + 1)) if stage_ends is None else stage_ends
    memory = memory or [(1000 * s, 2000 * s) for s in range(1, n_stages + 1)]
    memory = [m if isinstance(m, dict) else {"model_state_estimated_bytes": m[0], "model_state_bytes": m[1]}
              for m in memory]
    data = {"train": str(shards) if shards else "missing-shards", "seq_len": 32}
    if val is not None:
        data["val"] = str(val)
    config = {"run": {"name": name, "device": device}, "data": data,
              "stage": [{"name": f"s{i + 1}"} for i in range(n_stages)]}
    (run / "run.json").write_text(json.dumps({"fingerprint": "x", "config": config}))
    lines = []
    started: set[int] = set()
    shift = 1 if legacy else 0
    for i, ((flops, loss), stage) in enumerate(zip(curve, stage_of_point)):
        mem = memory[stage - 1]
        est = mem.get("model_state_estimated_bytes")
        meas = mem.get("model_state_bytes") or mem.get("peak_measured_bytes")
        if legacy:
            start_mem, end_mem = ({"estimated_bytes": est, "measured_peak_bytes": 0},
                                  {"estimated_bytes": est, "measured_peak_bytes": meas})
        else:
            start_mem = {"model_state_estimated_bytes": est, "model_state_bytes": None,
                         "peak_estimated_bytes": mem.get("peak_estimated_bytes"),
                         "peak_measured_bytes": None, "peak_measured_by": None}
            end_mem = {**start_mem, **mem}
        if stage not in started:
            started.add(stage)
            prev = curve[i - 1][0] if i else 0
            lines.append({"kind": "stage", "event": "start", "stage": stage - shift, "name": f"s{stage}",
                          "step": i, "tokens": prev * tokens_per_flop, "flops": prev,
                          "params": {"trainable": 10, "frozen": 5, "adapter": 1, "total": 16},
                          "flops_per_token": {"6nd": 60, "exact": 70, "attention": 10},
                          "memory": start_mem, "steps": 5, "model": {"n_layers": stage}})
        lines.append({"kind": "step", "stage": stage - shift, "stage_name": f"s{stage}", "step": i + 1,
                      "stage_step": i + 1, "tokens": flops * tokens_per_flop, "flops": flops,
                      "flops_6nd": flops * 0.9, "loss": loss + 0.1, "lr": 1e-3, "grad_norm": 1.0,
                      "tokens_per_s": 1000.0, "mfu": mfu, "time": float(i + 1),
                      **({"mem_bytes": meas} if legacy else {})})
        lines.append({"kind": "eval", "stage": stage - shift, "step": i + 1,
                      "tokens": flops * tokens_per_flop, "flops": flops, "flops_6nd": flops * 0.9,
                      "val_loss": loss})
        last_of_stage = i + 1 == len(curve) or stage_of_point[i + 1] != stage
        if last_of_stage and stage in stage_ends:
            lines.append({"kind": "stage", "event": "end", "stage": stage - shift, "name": f"s{stage}",
                          "step": i + 1, "memory": end_mem})
    text = "".join(json.dumps(r) + "\n" for r in lines) + extra_lines
    (run / "metrics.jsonl").write_text(text)
    if eval_results is not None:
        (run / "eval.json").write_text(json.dumps({"model": {}, "limit": None, "results": eval_results}))
    return run


@pytest.fixture(name="make_run")
def make_run_fixture():
    return make_run


@pytest.fixture(name="write_shards_meta")
def write_shards_meta_fixture():
    return write_shards_meta


@pytest.fixture
def shards(tmp_path) -> Path:
    return write_shards_meta(tmp_path / "shards")


@pytest.fixture
def runs_root(tmp_path) -> Path:
    root = tmp_path / "runs"
    root.mkdir()
    return root
