"""How many bytes each kind of tensor of a training step takes: the precision a memory
estimate assumes.

Three settings, and which run uses which:

- ``bf16-mixed``: the seed papers' accounting (Lee et al.; STEP's P_i), which `growlm plan`
  shows at paper scale: bf16 weights and gradients, an fp32 master copy and two fp32 Adam
  moments per trainable parameter (2 + 2 + 4 + 8 = 16 bytes), a frozen parameter only its
  bf16 weight (2 bytes); bf16 activations; a fused optimizer step.
- ``fp32``: how growlm trains on CPU. Everything is fp32: a trainable parameter is its weight,
  gradient and two moments (4 + 4 + 8 = 16 bytes, no master copy), a frozen one 4 bytes; every
  activation is 4 bytes; torch's CPU AdamW updates one tensor at a time and needs two
  temporaries of that tensor's size.
- ``bf16-autocast``: how growlm trains on CUDA. Weights, gradients and moments stay fp32 (as on
  CPU); `torch.autocast` runs the matmuls in bf16, so their outputs (q, k, v, attention,
  SwiGLU) are bf16, while the residual stream and the RMSNorm outputs stay fp32 (the model
  normalises in fp32 and adds bf16 branch outputs onto the fp32 stream). Autocast keeps a bf16
  copy of every trainable weight from its first use in the forward until the backward ends,
  and the bf16 copy of a frozen weight is saved for the backward where a gradient passes
  through it. AdamW is fused (no temporaries). Not measured by this project's CPU-only checks.

LoRA factors are kept in at least fp32 under every setting (growlm.adapters.lora), so an
adapter parameter is 4 + 4 + 8 = 16 bytes everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from growlm.errors import GrowlmError


@dataclass(frozen=True)
class Precision:
    name: str
    weight: int  # bytes per stored weight, trainable or frozen
    grad: int  # bytes per gradient of a trainable weight
    master: int  # bytes of an fp32 master copy per trainable weight (0: the weight is fp32)
    moment: int  # bytes per Adam moment (two per trainable parameter)
    activation: int  # bytes per element of a matmul output (the compute dtype)
    stream: int  # bytes per element of the residual stream and of RMSNorm outputs
    weight_copy: int  # bytes per weight element of autocast's low-precision copies (0: none)
    fused_optimizer: bool  # the optimizer step needs no per-tensor temporaries
    summary: str  # one line for plan tables and logs

    @property
    def trainable(self) -> int:
        """Bytes of model state per trainable parameter (weight, gradient, master, moments)."""
        return self.weight + self.grad + self.master + 2 * self.moment

    @property
    def frozen(self) -> int:
        return self.weight


ADAPTER_BYTES = 16  # fp32 LoRA factor: weight 4, gradient 4, two Adam moments 8

BF16_MIXED = Precision("bf16-mixed", weight=2, grad=2, master=4, moment=4, activation=2, stream=2,
                       weight_copy=0, fused_optimizer=True,
                       summary="bf16 weights, gradients and activations, fp32 master copy and "
                               "Adam moments (the papers' accounting)")
FP32 = Precision("fp32", weight=4, grad=4, master=0, moment=4, activation=4, stream=4,
                 weight_copy=0, fused_optimizer=False,
                 summary="fp32 weights, gradients, Adam moments and activations (growlm on CPU)")
BF16_AUTOCAST = Precision("bf16-autocast", weight=4, grad=4, master=0, moment=4, activation=2,
                          stream=4, weight_copy=2, fused_optimizer=True,
                          summary="fp32 weights, gradients and Adam moments, bf16 autocast "
                                  "matmuls, fp32 residual stream (growlm on CUDA)")
PRECISIONS = {p.name: p for p in (BF16_MIXED, FP32, BF16_AUTOCAST)}


def precision(name: str) -> Precision:
    """The setting called `name`; GrowlmError naming the allowed ones otherwise."""
    try:
        return PRECISIONS[name]
    except KeyError:
        raise GrowlmError(f"precision {name!r}: allowed are {', '.join(PRECISIONS)}") from None


def run_precision(device_type: str) -> Precision:
    """What a growlm run on `device_type` ("cpu" or "cuda") stores and computes in."""
    return BF16_AUTOCAST if device_type == "cuda" else FP32
