"""Keep a frozen vision tower out of the backward pass.

transformers 5's `enable_input_require_grads` (called by PEFT/Axolotl when an adapter is loaded,
and again by the Trainer when it turns on gradient checkpointing) hooks the input embeddings of
every `PreTrainedModel` inside the model, and in Qwen2.5-VL that includes the ViT's `patch_embed`.
The ViT's activations then require grad although none of its weights train: backward runs
through the whole vision tower (and, with checkpointing, recomputes it) for a gradient nobody
uses. With a 448x448 image and a 16-frame video in a 2.6k-token 3B sample that is about 18% of
the step's hardware FLOPs (benchmarks/flops.py, `bwd_unneeded`).

`FrozenVisionGradients` removes that hook from a vision tower with no trainable parameter at
the start of training, after the Trainer's own `gradient_checkpointing_enable`. The LLM keeps its
hook, so LoRA gradients are unchanged (tests/test_frozen_vision.py compares them). The Unsloth
path needs it too: the Trainer's `gradient_checkpointing_enable()` re-adds the hook there, and
on H100 runs the plugin logs its removal on every Unsloth job (benchmarks/results/).
"""

from __future__ import annotations

from axolotl.utils.logging import get_logger
from transformers import TrainerCallback

LOG = get_logger(__name__)

# The name of the hook function transformers' `enable_input_require_grads` registers.
REQUIRE_GRADS_HOOK = "make_inputs_require_grads"


def frozen_vision_towers(model) -> list:
    """Vision towers (`PreTrainedModel`s whose class name says Vision) with no trainable weight."""
    from transformers import PreTrainedModel

    towers = []
    for module in model.modules():
        if isinstance(module, PreTrainedModel) and "Vision" in type(module).__name__:
            if not any(p.requires_grad for p in module.parameters()):
                towers.append(module)
    return towers


def drop_frozen_vision_input_grads(model) -> int:
    """Remove `enable_input_require_grads`' hook from each frozen vision tower; returns how many."""
    removed = 0
    for tower in frozen_vision_towers(model):
        try:
            embeddings = tower.get_input_embeddings()
        except NotImplementedError:
            continue
        hooks = getattr(embeddings, "_forward_hooks", None) or {}
        for key in [k for k, fn in hooks.items() if getattr(fn, "__name__", "") == REQUIRE_GRADS_HOOK]:
            del hooks[key]
            removed += 1
    return removed


class FrozenVisionGradients(TrainerCallback):
    """Drop the frozen ViT's require-grads hook once the Trainer has set up checkpointing."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None and drop_frozen_vision_input_grads(model):
            LOG.info("qwenvl: the vision tower is frozen; its activations no longer require grad "
                     "(no backward or recompute through the ViT)")  # fmt: skip
