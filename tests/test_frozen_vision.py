"""A frozen ViT leaves the backward pass, and LoRA gradients stay exactly the same."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from axolotl_qwenvl_plugin.frozen_vision import drop_frozen_vision_input_grads, frozen_vision_towers


def _lora_model(tiny_model_dir, *, vision_lora: bool):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="eager")
    targets = r".*language_model.*\.(q_proj|v_proj|down_proj)"
    if vision_lora:
        targets = r".*(language_model.*\.(q_proj|v_proj|down_proj)|visual.*\.qkv)"
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    # What Axolotl's adapter loading and the Trainer do before training starts.
    model.enable_input_require_grads()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def _batch(processor):
    image = Image.fromarray((torch.rand(84, 112, 3) * 255).to(torch.uint8).numpy())
    text = "a picture <|vision_start|><|image_pad|><|vision_end|> of noise, described in words"
    batch = processor(text=[text], images=[image], return_tensors="pt")
    batch["labels"] = batch["input_ids"].clone()
    return batch


def _grads_and_vit_grad_flag(model, batch):
    seen = {}
    tower = frozen_vision_towers(model) or [model.base_model.model.model.visual]

    def record(module, inputs, out):
        seen.setdefault("vit_requires_grad", _first(out).requires_grad)

    handle = tower[0].register_forward_hook(record)
    from torch.utils.flop_counter import FlopCounterMode

    model.zero_grad()
    with FlopCounterMode(display=False) as counter:
        loss = model(**batch).loss
        loss.backward()
    handle.remove()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads, seen["vit_requires_grad"], counter.get_total_flops()


def _first(out):
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "pooler_output") and out.pooler_output is not None:
        return out.pooler_output
    return out[0]


def test_frozen_vit_leaves_backward_with_identical_lora_gradients(tiny_model_dir, processor):
    model = _lora_model(tiny_model_dir, vision_lora=False)
    batch = _batch(processor)
    assert len(frozen_vision_towers(model)) == 1

    loss_before, grads_before, vit_grad_before, flops_before = _grads_and_vit_grad_flag(model, batch)
    assert vit_grad_before  # transformers' hook drags the frozen ViT into the graph

    # one hook from enable_input_require_grads, one more from gradient_checkpointing_enable
    assert drop_frozen_vision_input_grads(model) == 2
    assert drop_frozen_vision_input_grads(model) == 0
    loss_after, grads_after, vit_grad_after, flops_after = _grads_and_vit_grad_flag(model, batch)

    assert not vit_grad_after
    assert loss_after == pytest.approx(loss_before, rel=0, abs=0)
    assert grads_after.keys() == grads_before.keys() and len(grads_after) > 0
    for name, grad in grads_before.items():
        torch.testing.assert_close(grads_after[name], grad, rtol=0, atol=0, msg=name)
    assert flops_after < flops_before  # no ViT backward and no ViT recompute


def test_a_vision_tower_that_trains_keeps_its_hook(tiny_model_dir, processor):
    model = _lora_model(tiny_model_dir, vision_lora=True)
    assert frozen_vision_towers(model) == []
    assert drop_frozen_vision_input_grads(model) == 0
    _, grads, vit_grad, _ = _grads_and_vit_grad_flag(model, _batch(processor))
    assert vit_grad
    vision_grads = [g for n, g in grads.items() if ".visual." in n]
    assert vision_grads and all(torch.count_nonzero(g) > 0 for g in vision_grads)
