"""Bad HF inputs and failing exports: one line naming the file and field, nothing half-written.

Covers malformed config.json and tokenizer.json files, a real full disk (a small tmpfs; an
RLIMIT_FSIZE subprocess), an output under a regular file, a NUL byte in a path, and an export
killed half-way (its temporary folder has a fixed name that the next export clears).
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from growlm.cli import main as cli_main
from growlm.errors import GrowlmError
from growlm.files import WriteError
from growlm.model import ModelConfig, Transformer
from growlm.model.hf import OLD_SUFFIX, TMP_SUFFIX, export_hf, load_hf_folder, to_hf_config

CFG = ModelConfig(vocab_size=300, d_model=64, n_layers=2, n_heads=4, max_seq_len=64)
REPO_SRC = Path(__file__).resolve().parents[2] / "src"


def _state(cfg: ModelConfig = CFG) -> dict:
    torch.manual_seed(0)
    return Transformer(cfg).state_dict()


@pytest.fixture
def folder(tmp_path) -> Path:
    return export_hf(CFG, _state(), tmp_path / "hf")


def _tokenizer(path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"])
    tok.train_from_iterator(["hello world, growing models in stages"] * 20, trainer)
    tok.save(str(path))
    return path


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ---------------------------------------------------------------- config.json

GOOD = to_hf_config(CFG)
CONFIG_CASES = {
    "list_at_top": ([GOOD], "must be a JSON object"),
    "heads_zero": (GOOD | {"num_attention_heads": 0}, "num_attention_heads=0"),
    "hidden_null": (GOOD | {"hidden_size": None}, "hidden_size=None"),
    "hidden_string": (GOOD | {"hidden_size": "64"}, "hidden_size='64'"),
    "hidden_bool": (GOOD | {"hidden_size": True}, "hidden_size=True"),
    "hidden_float": (GOOD | {"hidden_size": 64.0}, "hidden_size=64.0"),
    "layers_negative": (GOOD | {"num_hidden_layers": -1}, "num_hidden_layers=-1"),
    "layers_zero": (GOOD | {"num_hidden_layers": 0}, "num_hidden_layers=0"),
    "vocab_missing": ({k: v for k, v in GOOD.items() if k != "vocab_size"}, "missing the field 'vocab_size'"),
    "eps_zero": (GOOD | {"rms_norm_eps": 0}, "rms_norm_eps=0"),
    "eps_string": (GOOD | {"rms_norm_eps": "1e-5"}, "rms_norm_eps"),
    "theta_nan": (GOOD | {"rope_theta": math.nan, "rope_parameters": None}, "rope_theta=nan"),
    "tie_string": (GOOD | {"tie_word_embeddings": "yes"}, "tie_word_embeddings='yes'"),
    "rope_scaling_string": (GOOD | {"rope_scaling": "linear"}, "rope_scaling='linear'"),
    "llama3_incomplete": (GOOD | {"rope_parameters": {"rope_type": "llama3", "factor": 8.0}},
                          "low_freq_factor"),
    "kv_not_dividing": (GOOD | {"num_key_value_heads": 3}, "num_key_value_heads=3"),
    "heads_not_dividing": (GOOD | {"num_attention_heads": 5, "num_key_value_heads": 5, "head_dim": None},
                           "num_attention_heads=5"),
    "head_dim_odd": (GOOD | {"head_dim": 7}, "head_dim=7"),
    "model_type_number": (GOOD | {"model_type": 5}, "model_type=5"),
    "architectures_string": (GOOD | {"architectures": "LlamaForCausalLM"}, "architectures"),
    "layer_types_unknown": (GOOD | {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
                                    "layer_types": ["chunked_attention"] * 2}, "layer_types"),
}


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_bad_config_json_is_one_line_naming_file_and_field(case, folder, tmp_path, capsys):
    data, words = CONFIG_CASES[case]
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(GrowlmError, match=words) as e:
        load_hf_folder(folder)
    assert str(folder / "config.json") in str(e.value) and "\n" not in str(e.value)
    assert cli_main(["export", str(folder), str(tmp_path / "out")]) == 2
    assert words.split(" = ")[0].strip("'") in _one_line_error(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, words", [
    (b"", "not valid JSON"), (b"{'model_type': 'llama'}", "not valid JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
])
def test_unreadable_config_json(content, words, folder):
    (folder / "config.json").write_bytes(content)
    with pytest.raises(GrowlmError, match=words):
        load_hf_folder(folder)


# ---------------------------------------------------------------- tokenizer.json


def _tok_cases(good: dict) -> dict:
    model = good["model"]
    return {
        "not_json": (b"{", "not valid JSON"),
        "not_utf8": (b"\xff\xfe", "not UTF-8"),
        "list_at_top": ([good], "must hold a JSON object"),
        "model_missing": ({k: v for k, v in good.items() if k != "model"}, "model must be an object"),
        "vocab_string": (good | {"model": model | {"vocab": "abc"}}, "model.vocab must be"),
        "vocab_negative_id": (good | {"model": model | {"vocab": {"a": -1}}}, "model.vocab must map"),
        "added_not_list": (good | {"added_tokens": {"id": 0}}, "added_tokens must be a list"),
        "added_without_id": (good | {"added_tokens": [{"content": "<x>"}]}, r"added_tokens\[0\]"),
        "id_beyond_vocab": (good | {"added_tokens": [{"id": 5000, "content": "<x>", "special": True}]},
                            "ids up to 5000"),
        "unknown_model_type": (good | {"model": model | {"type": "NoSuchModel"}}, "cannot be loaded"),
    }


def test_malformed_tokenizer_json_on_export(tmp_path, capsys):
    good = json.loads(_tokenizer(tmp_path / "good.json").read_text())
    for case, (data, words) in _tok_cases(good).items():
        path = tmp_path / f"{case}.json"
        path.write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())
        with pytest.raises(GrowlmError, match=words) as e:
            export_hf(CFG, _state(), tmp_path / "out", tokenizer_json=path)
        assert str(path) in str(e.value) and "\n" not in str(e.value), case
        assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".json")) == [], case


def test_malformed_tokenizer_in_a_folder_being_reexported(folder, tmp_path, capsys):
    (folder / "tokenizer.json").write_text('{"model": 3}')
    assert cli_main(["export", str(folder), str(tmp_path / "out")]) == 2
    err = _one_line_error(capsys)
    assert "tokenizer.json" in err and "model must be an object" in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- paths and full disks


def test_output_under_a_regular_file_and_nul_bytes(folder, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli_main(["export", str(folder), str(blocker / "out")]) == 2
    assert "which is a file" in _one_line_error(capsys)
    assert cli_main(["export", str(folder), str(blocker)]) == 2
    assert "is a file" in _one_line_error(capsys)
    assert cli_main(["export", str(folder), str(tmp_path / "a\x00b")]) == 2
    assert "NUL byte" in _one_line_error(capsys)
    assert cli_main(["export", str(folder) + "\x00", str(tmp_path / "out")]) == 2
    assert "NUL byte" in _one_line_error(capsys)
    assert blocker.read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "hf"]


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs: a real full disk (needs root; skipped otherwise)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_full_disk_is_one_line_and_leaves_nothing(folder, tiny_disk, capsys):
    big = CFG.with_(d_model=128, n_heads=4)  # ~1 MB of fp32 weights: cannot fit in 256 KiB
    with pytest.raises(WriteError, match="No space left on device"):
        export_hf(big, _state(big), tiny_disk / "out")
    assert list(tiny_disk.iterdir()) == []
    src = export_hf(big, _state(big), folder.parent / "big")
    assert cli_main(["export", str(src), str(tiny_disk / "out")]) == 1
    assert "No space left on device" in _one_line_error(capsys)
    assert list(tiny_disk.iterdir()) == []


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_SRC)}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_file_size_limit_is_one_line(folder, tmp_path):
    """RLIMIT_FSIZE makes every write past the limit fail (EFBIG), like a quota."""
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024)); "
            "from growlm.cli import main; sys.exit(main(['export', sys.argv[1], sys.argv[2]]))")
    done = _run(code, str(folder), str(tmp_path / "out"))
    assert done.returncode == 1, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "File too large" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


# ---------------------------------------------------------------- killed exports


def test_a_killed_export_is_cleared_by_the_next(folder, tmp_path):
    out = tmp_path / "out"
    tmp = tmp_path / f".out{TMP_SUFFIX}"
    code = ("import sys, time; import growlm.model.hf as hf\n"
            "def stuck(tensors, path, metadata=None):\n"
            "    open(path, 'wb').write(b'partial'); time.sleep(600)\n"
            "hf.save_file = stuck\n"
            "from growlm.cli import main; main(['export', sys.argv[1], sys.argv[2]])\n")
    env = {**os.environ, "PYTHONPATH": str(REPO_SRC)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder), str(out)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not (tmp / "model.safetensors").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert tmp.is_dir() and not out.exists()  # what a kill leaves: the fixed-name temp folder
    export_hf(CFG, _state(), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "out"]
    assert load_hf_folder(out)[0] == CFG


def test_an_output_moved_aside_by_a_killed_export_is_restored(folder, tmp_path):
    """Killed between moving the old output aside and renaming the new one into place."""
    old = tmp_path / f".out{OLD_SUFFIX}"
    export_hf(CFG, _state(), old)
    with pytest.raises(GrowlmError, match="not empty"):  # the old output is back, and kept
        export_hf(CFG, _state(), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "out"]
    export_hf(CFG, _state(), old)  # both present: the replacement had finished
    export_hf(CFG, _state(), tmp_path / "out", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "out"]
