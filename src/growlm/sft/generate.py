"""`growlm generate SOURCE --prompt TEXT`: a quick look at what a model writes.

SOURCE is a run directory, a checkpoint directory or an (exported) HF model folder; its
tokenizer.json is used. Decoding is greedy at temperature 0, otherwise sampling with
temperature and nucleus (top-p, Holtzman et al. 2020) filtering; it stops at EOS or after
--max-new-tokens. There is no KV cache (growlm's models are small): each step re-runs the
model on the last max_seq_len tokens.

The prompt is encoded by the BOS policy (growlm.data.tokenizer), as training data and SFT
examples are: the tokenizer's post-processor is off and the policy's start tokens go in front
— `<s>` for a Llama-2-layout tokenizer, nothing for GPT-2's byte-level BPE (--bos on|off
overrides). These are the ids `transformers` gives for the prompt on the exported folder, so
both continue the same sequence. An empty prompt starts from the policy's prefix token (BOS,
else EOS), i.e. a fresh document. Special-token text inside the prompt is encoded as plain text.
With --template, the prompt is the instruction of an Alpaca-style record and the model
continues after the template's response marker, as after SFT.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer

from growlm.errors import GrowlmError
from growlm.model.config import ModelConfig
from growlm.model.llama import Transformer, rope_tables


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        metavar="CKPT_OR_HF_FOLDER",
        help="run directory (newest checkpoint), checkpoint directory or HF model folder (Llama, Mistral, Qwen2, Qwen3)",
    )
    parser.add_argument(
        "--prompt", required=True, help="prompt text (the instruction with --template)"
    )
    parser.add_argument("--input", default="", help="with --template: the record's optional input")
    parser.add_argument(
        "--template",
        default=None,
        help="wrap the prompt in a template: alpaca, plain or a TOML file (default: raw text)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1]")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--bos", default="auto", choices=("auto", "on", "off"),
                        help="BOS token before the prompt: auto = what the tokenizer's "
                             "post-processor adds, as in training data (default: auto)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where to run the model (default: cuda when available)")


MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit integer


def check_sampling(max_new_tokens: int, temperature: float, top_p: float, seed: int = 0) -> None:
    if max_new_tokens < 1:
        raise GrowlmError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if not 0 <= temperature < float("inf"):
        raise GrowlmError(f"--temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise GrowlmError(f"--top-p must be in (0, 1], got {top_p}")
    if not 0 <= seed <= MAX_SEED:
        raise GrowlmError(f"--seed must be between 0 and {MAX_SEED}, got {seed}")


# ---------------------------------------------------------------- loading


def _load_state(source: Path) -> tuple[ModelConfig, dict, Path | None]:
    from growlm.init_source import load_source

    return load_source(source)


def load_for_generation(
    source: str | Path, device: str | torch.device = "cpu"
) -> tuple[Transformer, Tokenizer]:
    """(model in eval mode on `device`, tokenizer) from a run, checkpoint or HF folder."""
    source = Path(source)
    if not source.exists():
        raise GrowlmError(f"{source} does not exist; give a run dir, checkpoint dir or HF folder")
    cfg, state, tok_path = _load_state(source)
    if tok_path is None:
        raise GrowlmError(
            f"{source}: no tokenizer.json found beside the weights; generation needs it"
        )
    from growlm.data.tokenizer import check_vocab_fit, load_tokenizer

    tokenizer = load_tokenizer(tok_path)
    check_vocab_fit(cfg.vocab_size, tokenizer, str(source))
    with torch.device("meta"):
        model = Transformer(cfg)
    model.to_empty(device="cpu")
    cos, sin = rope_tables(cfg, cfg.max_seq_len)  # buffers are not in the state dict
    model.rope_cos.copy_(cos)
    model.rope_sin.copy_(sin)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), tokenizer


# ---------------------------------------------------------------- decoding


def next_token(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> int:
    """One token id from last-position logits (vocab,)."""
    if temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        sorted_probs[before >= top_p] = 0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


@torch.inference_mode()
def generate_ids(
    model: Transformer,
    prompt_ids: list[int],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    eos_id: int | None = None,
    seed: int = 0,
) -> list[int]:
    """New token ids after `prompt_ids` (without the final EOS)."""
    check_sampling(max_new_tokens, temperature, top_p, seed)
    if not prompt_ids:
        raise GrowlmError("the prompt is empty")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    window = model.cfg.max_seq_len
    ids = list(prompt_ids)
    out: list[int] = []
    for _ in range(max_new_tokens):
        context = torch.tensor([ids[-window:]], dtype=torch.long, device=device)
        token = next_token(model(context)[0, -1], temperature, top_p, generator)
        if token == eos_id:
            break
        ids.append(token)
        out.append(token)
    return out


def generate_text(
    model: Transformer,
    tokenizer: Tokenizer,
    prompt: str,
    *,
    template=None,
    input: str = "",
    max_new_tokens: int = 128,
    temperature: float = 0.0,  # noqa: A002
    top_p: float = 1.0,
    seed: int = 0,
    bos: str = "auto",
) -> str:
    """The model's continuation of `prompt` (wrapped in `template` when given); `bos` is the
    BOS policy setting (growlm.data.tokenizer.bos_policy)."""
    from growlm.data.tokenizer import bos_policy

    if template is not None:
        from growlm.sft.template import load_template

        prompt = load_template(template).prompt_text(prompt, input)
    policy = bos_policy(tokenizer, bos)
    ids = prompt_ids(tokenizer, prompt, policy)
    new = generate_ids(model, ids, max_new_tokens, temperature, top_p, policy.eos_id, seed)
    return tokenizer.decode(new)


def prompt_ids(tokenizer: Tokenizer, prompt: str, policy) -> list[int]:
    """The ids generation continues: the policy's start tokens + the prompt as plain text, or
    the prefix token alone for an empty prompt (a fresh document)."""
    from growlm.data.tokenizer import encoder_for_data

    ids = policy.encode(encoder_for_data(tokenizer), [prompt])[0]
    return ids or [policy.prefix_id]


def run(args: argparse.Namespace) -> int:
    check_sampling(args.max_new_tokens, args.temperature, args.top_p, args.seed)
    if args.input and args.template is None:
        raise GrowlmError("--input needs --template (it fills the template's {input})")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise GrowlmError("--device cuda but no CUDA device is available")
    device = (
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    model, tokenizer = load_for_generation(args.source, device)
    text = generate_text(
        model,
        tokenizer,
        args.prompt,
        template=args.template,
        input=args.input,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        bos=args.bos,
    )
    sys.stdout.write(text + "\n")
    return 0
