"""growlm eval vs lm-evaluation-harness on the same exported model and the same examples.

Trains a small LLaMA briefly (GPT-2 tokenizer, Wikipedia text from the shared data folder),
exports it as a HF Llama folder, then scores the zero-shot tasks and WikiText with
(1) growlm's evaluator and (2) lm-eval's HF backend, whose task YAMLs (written to a temp dir)
point at the same local files and spell out lm-eval's own prompt templates over their fields.
SciQ takes its prompt, choices and target from lm-eval's installed sciq.yaml over the original
test.json; LogiQA uses lm-eval's own `utils_logiqa` prompt and target functions over the
records growlm reads from the original Test.txt (the hub copy lm-eval would download is
built from that file). Prints both tools' scores side by side, their wall times and the
speed ratio.

Needs: pip install lm-eval==0.4.13 (a benchmark-only extra, not a growlm dependency).
Run:   python benchmarks/eval_speed.py --limit 500
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from growlm.model import ModelConfig, Transformer  # noqa: E402
from growlm.model.llama import cross_entropy  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ZERO_SHOT = ("lambada", "hellaswag", "piqa", "arc_easy", "arc_challenge", "openbookqa",
             "winogrande", "sciq", "logiqa")


# ---------------------------------------------------------------- model


def train_small_model(data: Path, tokenizer, args) -> tuple[ModelConfig, dict]:
    """A few hundred AdamW steps on Wikipedia text, enough for non-trivial scores."""
    cfg = ModelConfig(vocab_size=tokenizer.get_vocab_size(), d_model=args.d_model,
                      n_layers=args.n_layers, n_heads=args.d_model // 64,
                      max_seq_len=args.seq_len)
    torch.manual_seed(0)
    model = Transformer(cfg)
    if args.train_steps == 0:
        return cfg, model.state_dict()
    texts = []
    with gzip.open(data / "corpus/enwiki_2015_wikiextractor/train.jsonl.gz", "rt") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            if sum(map(len, texts)) > 6_000_000:
                break
    from growlm.data.tokenizer import bos_policy

    policy = bos_policy(tokenizer)  # documents as growlm data prepare writes them
    ids = [t for doc in policy.encode(tokenizer, texts) for t in (*doc, policy.eos_id)]
    tokens = torch.tensor(ids)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    seq, batch = args.train_seq, args.train_batch
    gen = torch.Generator().manual_seed(0)
    t0 = time.time()
    for step in range(args.train_steps):
        starts = torch.randint(0, len(tokens) - seq - 1, (batch,), generator=gen)
        x = torch.stack([tokens[s: s + seq] for s in starts])
        y = torch.stack([tokens[s + 1: s + seq + 1] for s in starts])
        lr_scale = min(1.0, (step + 1) / 30) * (1 - step / args.train_steps)
        for group in opt.param_groups:
            group["lr"] = 3e-3 * lr_scale
        loss = cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == args.train_steps - 1:
            print(f"  train step {step:4d}  loss {loss.item():.3f}  ({time.time() - t0:.0f} s)",
                  flush=True)
    return cfg, model.state_dict()


# ---------------------------------------------------------------- lm-eval task configs


def _q(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid YAML double-quoted scalar


UTILS = '''
from lm_eval.tasks.hellaswag.utils import preprocess
from lm_eval.tasks.logiqa.utils_logiqa import doc_to_target as logiqa_target
from lm_eval.tasks.logiqa.utils_logiqa import doc_to_text as logiqa_text
from lm_eval.tasks.wikitext.preprocess_wikitext import process_results, wikitext_detokenizer
from growlm.eval.tasks import hellaswag_capitalise_tail


def hellaswag_docs(dataset):
    def one(doc):
        return {"query": preprocess(hellaswag_capitalise_tail(doc["ctx"])),
                "choices": [preprocess(e) for e in doc["endings"]], "gold": int(doc["label"])}
    return dataset.map(one)


def wg_gold(doc):
    return int(doc["gold"])


def wg_rest(doc):
    return doc["continuation"].strip()


def wg_options(doc):
    return list(doc["context_options"])
'''


def _mc_yaml(name: str, path: Path, text: str, choice: str, target: str,
             metrics=("acc", "acc_norm"), extra: str = "") -> str:
    metric_list = "".join(f"  - metric: {m}\n    aggregation: mean\n    higher_is_better: true\n"
                          for m in metrics)
    return (f"task: growlm_{name}\ndataset_path: json\n"
            f"dataset_kwargs:\n  data_files:\n    test: {_q(str(path))}\n"
            f"test_split: test\noutput_type: multiple_choice\n{extra}"
            f"doc_to_text: {text}\ndoc_to_choice: {choice}\ndoc_to_target: {target}\n"
            f"metric_list:\n{metric_list}")


def _lm_eval_sciq() -> dict:
    """doc_to_text / doc_to_choice / doc_to_target of lm-eval's installed sciq task."""
    import lm_eval
    import yaml

    path = Path(lm_eval.__file__).parent / "tasks/sciq/sciq.yaml"
    spec = yaml.safe_load(path.read_text())
    return {k: spec[k] for k in ("doc_to_text", "doc_to_choice", "doc_to_target")}


def write_lm_eval_tasks(data: Path, tmp: Path) -> None:
    from growlm.eval.records import read_logiqa_text

    icl = data / "eval/llm_foundry_icl"
    logiqa = tmp / "logiqa_test.jsonl"
    logiqa.write_text("".join(json.dumps(rec) + "\n" for rec, _ in
                              read_logiqa_text(data / "eval/logiqa/Test.txt")))
    sciq = _lm_eval_sciq()
    hs = tmp / "hellaswag_val.jsonl"
    with gzip.open(data / "eval/hellaswag/hellaswag_val.jsonl.gz", "rb") as src:
        hs.write_bytes(src.read())
    from growlm.eval.perplexity import read_wikitext

    pages = tmp / "wikitext_pages.jsonl"
    pages.write_text("".join(json.dumps({"page": p}) + "\n" for p in
                             read_wikitext(data / "corpus/wikitext-2-raw/wiki.test.raw")))
    (tmp / "utils.py").write_text(UTILS)
    yamls = {
        # lm-eval ARC: "Question: {question}\nAnswer:"; the local query already has "Question: ".
        "arc_easy": _mc_yaml("arc_easy", icl / "arc_easy.jsonl", _q("{{query}}\nAnswer:"),
                             "choices", "gold"),
        "arc_challenge": _mc_yaml("arc_challenge", icl / "arc_challenge.jsonl",
                                  _q("{{query}}\nAnswer:"), "choices", "gold"),
        # lm-eval PIQA: "Question: {goal}\nAnswer:"; the local query is "Question: {goal}\n".
        "piqa": _mc_yaml("piqa", icl / "piqa.jsonl", _q("{{query}}Answer:"), "choices", "gold"),
        "openbookqa": _mc_yaml("openbookqa", icl / "openbook_qa.jsonl", _q("{{query}}"),
                               "choices", "gold"),
        "hellaswag": _mc_yaml("hellaswag", hs, _q("{{query}}"), _q("choices"), _q("{{gold}}"),
                              extra="process_docs: !function utils.hellaswag_docs\n"),
        "winogrande": _mc_yaml("winogrande", icl / "winogrande.jsonl",
                               "!function utils.wg_gold", "!function utils.wg_options",
                               "!function utils.wg_rest", metrics=("acc",)),
        "sciq": _mc_yaml("sciq", data / "eval/sciq/test.json", _q(sciq["doc_to_text"]),
                         _q(sciq["doc_to_choice"]), _q(str(sciq["doc_to_target"]))),
        "logiqa": _mc_yaml("logiqa", logiqa, "!function utils.logiqa_text", _q("{{options}}"),
                           "!function utils.logiqa_target"),
        "lambada": (f"task: growlm_lambada\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                    f"    test: {_q(str(icl / 'lambada_openai.jsonl'))}\ntest_split: test\n"
                    "output_type: loglikelihood\ndoc_to_text: \"{{context}}\"\n"
                    "doc_to_target: \"{{' ' + continuation}}\"\nmetric_list:\n"
                    "  - metric: perplexity\n    aggregation: perplexity\n"
                    "    higher_is_better: false\n  - metric: acc\n    aggregation: mean\n"
                    "    higher_is_better: true\n"),
        "wikitext": (f"task: growlm_wikitext\ndataset_path: json\ndataset_kwargs:\n"
                     f"  data_files:\n    test: {_q(str(pages))}\ntest_split: test\n"
                     "output_type: loglikelihood_rolling\ndoc_to_text: \"\"\n"
                     "doc_to_target: !function utils.wikitext_detokenizer\n"
                     "process_results: !function utils.process_results\nmetric_list:\n"
                     "  - metric: word_perplexity\n  - metric: byte_perplexity\n"
                     "  - metric: bits_per_byte\n"),
    }
    for name, text in yamls.items():
        (tmp / f"growlm_{name}.yaml").write_text(text)


# ---------------------------------------------------------------- the two runs


class Timer:
    """Wall and CPU seconds per (tool, step). CPU time (all threads of this process) is the
    steadier number on a shared machine, where other jobs stretch wall time unevenly."""

    def __init__(self):
        self.seconds: dict[tuple[str, str], float] = {}
        self.cpu: dict[tuple[str, str], float] = {}

    def run(self, tool: str, step: str, fn, *a, **kw):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(*a, **kw)
        self.seconds[tool, step] = time.perf_counter() - t0
        self.cpu[tool, step] = time.process_time() - c0
        return out

    def total(self, tool: str, cpu: bool = False) -> float:
        table = self.cpu if cpu else self.seconds
        return sum(v for (t, _), v in table.items() if t == tool)


def run_both(folder: Path, data: Path, tmp: Path, tasks: list[str], args):
    """Load each tool's model once, then score task by task, alternating the two tools so a
    change in machine load affects both alike. Returns (ours, theirs, timer)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from growlm.eval import evaluate, load_for_eval

    timer = Timer()
    model, tokenizer, _ = timer.run("growlm", "load", load_for_eval, folder)
    manager = TaskManager(include_path=str(tmp))
    lm = timer.run("lm-eval", "load", HFLM, pretrained=str(folder), dtype="float32",
                   device="cpu", batch_size=args.batch_size)
    ours, theirs = {}, {}
    for task in tasks:
        limit = args.wikitext_limit if task == "wikitext" else args.limit
        ours.update(timer.run("growlm", task, evaluate, model, tokenizer, [task], data_dir=data,
                              limit=limit, batch_size=args.batch_size))
        res = timer.run("lm-eval", task, lm_eval.simple_evaluate, model=lm, tasks=[f"growlm_{task}"],
                        limit=limit, bootstrap_iters=0, log_samples=False,
                        task_manager=manager)
        theirs[task] = {k.split(",")[0]: v for k, v in res["results"][f"growlm_{task}"].items()
                        if isinstance(v, float)}
        a, b = timer.seconds["growlm", task], timer.seconds["lm-eval", task]
        ca, cb = timer.cpu["growlm", task], timer.cpu["lm-eval", task]
        print(f"  {task:<14} wall: growlm {a:7.1f} s  lm-eval {b:7.1f} s  ratio {b / a:5.2f}x"
              f"   cpu: growlm {ca:7.1f} s  lm-eval {cb:7.1f} s  ratio {cb / ca:5.2f}x",
              flush=True)
    return ours, theirs, timer


METRICS = {"wikitext": ("word_perplexity", "byte_perplexity", "bits_per_byte"),
           "lambada": ("acc", "perplexity"), "winogrande": ("acc",)}


def compare(ours: dict, theirs: dict, tasks: list[str]) -> float:
    """Print the side-by-side table; return the largest accuracy gap in points."""
    print(f"\n{'task':<14} {'metric':<16} {'growlm':>12} {'lm-eval':>12} {'diff':>10}")
    worst = 0.0
    for task in tasks:
        for metric in METRICS.get(task, ("acc", "acc_norm")):
            a, b = ours[task][metric], theirs[task].get(metric, float("nan"))
            is_acc = metric.startswith("acc")
            diff = (a - b) * 100 if is_acc else (a - b) / b * 100
            unit = "pts" if is_acc else "%"
            print(f"{task:<14} {metric:<16} {a:>12.4f} {b:>12.4f} {diff:>+8.2f}{unit:>3}")
            if is_acc:
                worst = max(worst, abs(diff))
    return worst


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=500, help="examples per zero-shot task")
    p.add_argument("--wikitext-limit", type=int, default=8, help="WikiText documents")
    p.add_argument("--tasks", default=",".join((*ZERO_SHOT, "wikitext")))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--train-seq", type=int, default=128)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=512, help="the model's context length")
    p.add_argument("--model", help="use this exported HF folder (GPT-2 tokenizer) instead of "
                   "training one")
    p.add_argument("--save-model", help="keep the trained model's HF folder here")
    p.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 16))
    p.add_argument("--data-dir", default=os.environ.get("GROWLM_DATA",
                                                          str(REPO.parent / "shared" / "data")))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.data_dir)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        print("lm-eval is not installed: pip install lm-eval==0.4.13", file=sys.stderr)
        return 1
    from growlm.eval.loading import load_tokenizer_file
    from growlm.model.hf import export_hf

    tok_file = data / "tokenizers/gpt2/tokenizer.json"
    tokenizer = load_tokenizer_file(tok_file)
    tmp = Path(tempfile.mkdtemp(prefix="growlm-eval-speed-"))
    try:
        if args.model:
            folder = Path(args.model)
            print(f"model: {folder}", flush=True)
        else:
            print(f"model: d_model={args.d_model} n_layers={args.n_layers} vocab=50257 "
                  f"ctx={args.seq_len}; training {args.train_steps} steps", flush=True)
            cfg, state = train_small_model(data, tokenizer, args)
            folder = export_hf(cfg, state, tmp / "model", tokenizer_json=tok_file)
            if args.save_model:
                shutil.copytree(folder, args.save_model, dirs_exist_ok=True)
        write_lm_eval_tasks(data, tmp)
        print(f"\nscoring {tasks} (limit {args.limit}, wikitext docs {args.wikitext_limit}, "
              f"batch {args.batch_size}, {args.threads} threads)", flush=True)
        ours, theirs, timer = run_both(folder, data, tmp, tasks, args)
        t_ours, t_theirs = timer.total("growlm"), timer.total("lm-eval")
        worst = compare(ours, theirs, tasks)
        c_ours, c_theirs = timer.total("growlm", cpu=True), timer.total("lm-eval", cpu=True)
        print(f"\nwall time: growlm {t_ours:.1f} s, lm-eval {t_theirs:.1f} s, "
              f"speed ratio {t_theirs / t_ours:.2f}x (goal >= 2x)")
        print(f"cpu time:  growlm {c_ours:.1f} s, lm-eval {c_theirs:.1f} s, "
              f"ratio {c_theirs / c_ours:.2f}x  (model loading included in both)")
        print(f"largest accuracy gap: {worst:.2f} points (goal <= 0.5)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
