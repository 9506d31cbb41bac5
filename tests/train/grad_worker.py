"""Run under torchrun by test_numerics: one step of a DDP-wrapped stage on this rank's half of
the global batch; rank 0 saves the loss and the gradients."""

import sys
import tempfile
from pathlib import Path

import torch

from growlm.config import load_recipe
from growlm.stages import resolve_stages
from growlm.train.boundary import enter_stage
from growlm.train.distributed import maybe_init_distributed

sys.path.insert(0, str(Path(__file__).parent))
from test_numerics import RECIPE, Grads, masked_batch  # noqa: E402

from growlm.train.step import train_step  # noqa: E402


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.toml"
        path.write_text(RECIPE.format(out=tmp))
        cfg = load_recipe(path, ["train.micro_batch_size=4"])
        dist = maybe_init_distributed(cfg)
        built = enter_stage(cfg, resolve_stages(cfg)[0], None)
        built.module = dist.wrap(built.model)
        x, y = masked_batch()
        half = slice(4 * dist.rank, 4 * dist.rank + 4)
        hook = Grads()
        result = train_step(built, [(x[half], y[half])], lr=0.0, grad_clip=0.0, dist=dist, hooks=[hook])
        if dist.rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            torch.save({"loss": result.loss, "target_tokens": result.target_tokens, "grads": hook.grads},
                       out / "rank0.pt")
        dist.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
