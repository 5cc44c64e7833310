"""Model loading: which loader runs, which modules get LoRA, and the Unsloth path.

Two loaders, chosen by `qwenvl.loader`:

* `transformers`: Axolotl's own loading (bitsandbytes 4-bit through `load_in_4bit` +
  `adapter: qlora`, PEFT LoRA). The plugin only sets `lora_target_modules` to the regex built by
  `lora_target_regex`, so the `qwenvl.finetune_*` flags pick the same modules as Unsloth would.
* `unsloth`: `FastVisionModel.from_pretrained` + `FastVisionModel.get_peft_model` (GPU only).
* `auto`: `unsloth` when CUDA and the `unsloth` extra are both present, else `transformers`.

The pure parts (`resolve_loader`, `check_loader_supported`, `lora_target_regex`,
`unsloth_*_kwargs`, `axolotl_keys_for_loader`) import neither torch nor Unsloth. Importing
Unsloth patches transformers/TRL/PEFT globally, so nothing here imports it unless the Unsloth
path really runs.

Target-module selection (mirrors Unsloth 2026.10.9)
---------------------------------------------------
`FastVisionModel.get_peft_model` (unsloth/models/vision.py:4910) builds its regex with
`unsloth_zoo.peft_utils.get_peft_regex` (unsloth_zoo/peft_utils.py:148). For a model it:

1. collects the leaf names of every `nn.Linear` and keeps those seen more than once or inside a
   numbered layer stack (`.N.`): for Qwen2.5-VL that is `qkv proj gate_proj up_proj down_proj`
   (ViT) and `q_proj k_proj v_proj o_proj gate_proj up_proj down_proj` (LLM). `lm_head` and the
   merger's `mlp.0` / `mlp.2` are seen once outside a stack, so they are never LoRA targets: the
   merger is only trained through `lora_modules_to_save`;
2. fullmatches `.*?(?:PARTS).*?(?:COMPONENTS).*?\\.(?:LEAVES)` where PARTS are
   `vision|image|visual|patch` (finetune_vision_layers) and/or `language|text`
   (finetune_language_layers), COMPONENTS are `self_attn|attention|attn|mixer` (attention) and/or
   `mlp|feed_forward|ffn|dense|mixer` (mlp), plus a `\\bmodel\\.layers\\.N` branch when language
   layers are on (which never matches transformers 5's `model.language_model.layers`);
3. with an explicit `target_modules` list: if any flag is off, the list replaces LEAVES in the same
   regex; if all four flags are on, the list goes to PEFT unchanged (suffix match, so `proj` then
   also hits the ViT's Conv3d `patch_embed.proj`). `embed_tokens` / `lm_head` in the list are moved
   to `modules_to_save` first (`_redirect_embedding_targets`, unsloth/models/_utils.py:11531);
   a string `target_modules` is used as a regex as is.

`lora_target_regex` rebuilds that regex without a model (Qwen2.5-VL's leaves are fixed), and
`lora_target_modules_for` applies it to a model the way PEFT does (`re.fullmatch` on every module
name). `tests/test_loading.py` checks both against `get_peft_regex` itself on the tiny model.

Hook design for the Unsloth path (Axolotl 0.20.0)
-------------------------------------------------
No plugin hook returns a model, and `ModelLoader.load()` (axolotl/loaders/model.py:304-378) runs,
in order: `_apply_pre_model_load_setup` (:313; builds the bitsandbytes config at :1051-1078 when
`adapter: qlora` + `load_in_4bit`), `PLUGIN_MANAGER.pre_model_load` (:316), `_build_model`
(:319), `_apply_post_model_load_setup` (:331: `merge_and_unload()` of any PeftModel at :419-423,
`gradient_checkpointing_enable` at :626-632, `prepare_model_for_kbit_training` at :1424-1432 which
upcasts every non-4-bit parameter, ViT and lm_head included, to fp32), `_load_adapters` (:336 ->
`load_adapter` -> PEFT `get_peft_model`, axolotl/loaders/adapter.py:460), then the post-load
patches (:345; the Triton LoRA kernels at axolotl/loaders/patch_manager.py:271 / :1223, which the
schema auto-enables for lora/qlora at axolotl/utils/schemas/config.py:1968-1990).

Recommended: `install_unsloth_loader_patch()` from `pre_model_load`, the hatchery precedent
(axolotl/integrations/hatchery/plugin.py:43-89 swaps `ModelLoader._build_model`). It swaps four
`ModelLoader` methods on the class, once per process, each delegating to Axolotl's original unless
the loader is the Unsloth *training* load (`qwenvl.loader` resolves to `unsloth`, not
`inference`, not `reference_model`):

* `_build_model` -> `FastVisionModel.from_pretrained` (quantizes itself, keeps the ViT, merger and
  lm_head in 16-bit); returns `skip_move_to_device=True` (Unsloth placed it). The base is NOT a
  PeftModel yet, so :419-423 has nothing to merge.
* `_configure_embedding_dtypes` (model.py:599-642) -> no-op for that model: it would upcast
  every `*norm*` module to fp32 and cast back, and call `gradient_checkpointing_enable()`, which
  resets each layer's `_gradient_checkpointing_func` that Unsloth installed for its offloaded
  ("unsloth") or non-reentrant checkpointing. It is also the only caller of:
* `_prepare_model_for_quantization` -> no-op for that model: Unsloth's `get_peft_model` runs its
  own k-bit preparation (vision.py:5302, `unsloth/models/_utils.py:4683`), PEFT's would upcast
  the 16-bit towers to fp32.
* `_load_adapters` -> `FastVisionModel.get_peft_model`, returning the model's `LoraConfig`, so
  `save_initial_configs` (axolotl/train.py:546) still writes `adapter_config.json` and the output
  is an ordinary PEFT adapter for `axolotl merge-lora` / `axolotl inference` (which load through
  Axolotl's own path, because they run with `inference=True` or not through ModelLoader at all:
  the default memory-efficient merge reads safetensors, axolotl/cli/merge_lora.py:84-156).

The user's `adapter: qlora` + `load_in_4bit: true` stay truthful, so merge-lora still simulates
NF4 (`simulate_nf4`, axolotl/cli/merge_lora.py:102-107) and Axolotl's qlora validators apply;
the bnb config Axolotl builds is simply never used. `register` must force `lora_{mlp,qkv,o,embedding}_kernel:
false` (else they are auto-enabled and patched onto Unsloth's PEFT model) and refuse
`lora_target_linear: true` (adapter.py:178-186 would union every linear leaf into the targets),
`load_in_8bit`, `peft_use_dora`, `lora_model_dir`, `relora`, `rl`, `fsdp`/`fsdp_config`/
`deepspeed` (unproven under Unsloth here), `activation_offloading` / `selective_checkpointing`
(Unsloth checkpoints and offloads) and the other fused-loss patches (`chunked_cross_entropy`,
`cut_cross_entropy`, Liger's cross-entropy; Unsloth fuses lm_head + loss). See
`axolotl_keys_for_loader`.

What Axolotl still does to the Unsloth model, on purpose: `_reinit_lora_from_seed` redraws each
`lora_A` from `seed` in place (a per-module seed, same shapes and dtypes), `_adjust_model_config`
and the trainer's own `gradient_checkpointing_enable()` (transformers' Trainer.train, when
`gradient_checkpointing: true`), which Unsloth patches to keep its offloading shim and which the
standalone Unsloth + TRL recipe calls too (SFTConfig defaults gradient_checkpointing to True).

Logits. Unsloth's fused loss returns empty logits for every forward with labels. Eval loss is
unaffected; the Axolotl features that read logits (`do_bench_eval`, `eval_table_size`) make the
plugin set `UNSLOTH_RETURN_LOGITS=1` at config time (`request_unsloth_logits`), with a warning.

Import order. Axolotl's CLI imports transformers, PEFT and TRL (axolotl.cli.config) before any
plugin is imported, so a plugin cannot import Unsloth first (Unsloth warns about it); Unsloth is
imported lazily in `_build_model` and still compiles its Qwen2.5-VL forward at `from_pretrained`.
Measured back to back on one GPU (benchmarks/results/2026-11-27-h100-issue5.md): Axolotl's train
entry point with `import unsloth` first ran at 2,464 tokens/s, the plugin's lazy import at 2,698,
with the same losses, so the plugin keeps the lazy import and needs no special launcher.

Rejected alternatives:

* A custom `adapter:` name served by the plugin's `load_adapter` hook (adapter.py:554-561,
  allowed by axolotl/utils/schemas/peft.py:211-219 once `get_adapter_capabilities` declares it):
  it avoids the bnb config, the kbit preparation and the kernel auto-enable because those test
  `adapter in ("lora", "qlora")`, but `_build_model` must still be swapped (the hook receives an
  already-loaded 16-bit model: a 72B would not fit), `load_in_4bit` without a built-in adapter
  needs the custom name everywhere (`validate_adapter`, peft.py:201-209), and merge-lora,
  `training_args.qlora` (axolotl/core/builders/causal.py:180) and `simulate_nf4` no longer see a
  qlora run. More surface, same patch.
* Doing everything in `_build_model` (load + get_peft_model): the PeftModel is merged straight back
  by `_apply_post_model_load_setup` (model.py:419-423).
* `post_model_build` / `pre_lora_load` hooks: they get the model but cannot replace it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

try:  # Axolotl's logger shows the plugin's INFO lines in `axolotl train` output
    from axolotl.utils.logging import get_logger

    LOG = get_logger(__name__)
except ImportError:  # pragma: no cover - the pure helpers work without Axolotl
    LOG = logging.getLogger(__name__)

LoaderName = Literal["unsloth", "transformers"]
LOADER_CHOICES = ("auto", "unsloth", "transformers")

# Leaf names of the LoRA-able Linears of Qwen2.5-VL, as get_peft_regex collects them (a leaf seen
# more than once, or inside a numbered layer stack). ViT blocks: attn.qkv, attn.proj,
# mlp.{gate,up,down}_proj. LLM layers: self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj.
QWEN2_5_VL_LINEAR_LEAVES = (
    "qkv", "proj", "gate_proj", "up_proj", "down_proj", "q_proj", "k_proj", "v_proj", "o_proj",
)  # fmt: skip

# unsloth_zoo.peft_utils.get_peft_regex's default tags (peft_utils.py:148-158).
VISION_TAGS = ("vision", "image", "visual", "patch")
LANGUAGE_TAGS = ("language", "text")
ATTENTION_TAGS = ("self_attn", "attention", "attn", "mixer")
MLP_TAGS = ("mlp", "feed_forward", "ffn", "dense", "mixer")
MOE_ROUTER_LEAVES = frozenset({"router"})  # peft_utils.py:39, never auto-targeted
# Unsloth trains these as full modules (modules_to_save), never as LoRA targets.
EMBEDDING_LEAVES = frozenset({"embed_tokens", "lm_head"})

UNSLOTH_GPU_MESSAGE = (
    "qwenvl.loader: unsloth needs a CUDA GPU: Unsloth needs a GPU for vision models "
    "(its CPU backend raises NotImplementedError in FastVisionModel.from_pretrained), and no CUDA "
    "device is visible. `qwenvl.loader: transformers` runs on CPU (with load_in_4bit: false and "
    "adapter: lora, since bitsandbytes 4-bit needs a GPU too), or use `qwenvl.loader: auto`."
)
UNSLOTH_MISSING_MESSAGE = (
    "qwenvl.loader: unsloth needs the `unsloth` and `unsloth_zoo` packages: "
    "pip install 'axolotl-qwenvl-plugin[unsloth]' (or set `qwenvl.loader: transformers`)."
)

_OFFLINE_VALUES = {"1", "true", "yes", "on"}


# -- which loader ----------------------------------------------------------------------------------


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def unsloth_installed() -> bool:
    """Whether the `unsloth` extra is importable (checked without importing it)."""
    return all(importlib.util.find_spec(name) is not None for name in ("unsloth", "unsloth_zoo"))


def _loader_value(settings_loader: Any) -> str:
    value = getattr(settings_loader, "value", settings_loader)  # the args Enum or its str value
    value = str(value).strip().lower() if value is not None else "auto"
    if value not in LOADER_CHOICES:
        raise ValueError(
            f"qwenvl.loader must be one of {', '.join(LOADER_CHOICES)}, got {settings_loader!r}"
        )
    return value


def world_size() -> int:
    """Training processes in this launch (`WORLD_SIZE`, set by accelerate / torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE") or 1))
    except ValueError:
        return 1


def resolve_loader(settings_loader: str, *, cuda_available: bool, unsloth_installed: bool) -> LoaderName:
    """The loader that runs: an explicit choice is kept, `auto` picks unsloth with CUDA and the
    unsloth extra, on one GPU or under DDP (each rank loads its own copy on its own GPU; measured
    on 2xH100 in benchmarks/results/). Does not check that an explicit `unsloth` can run: see
    `check_loader_supported`."""
    value = _loader_value(settings_loader)
    if value == "auto":
        return "unsloth" if (cuda_available and unsloth_installed) else "transformers"
    return value  # type: ignore[return-value]


def check_loader_supported(settings_loader: str, *, cuda_available: bool, unsloth_installed: bool) -> LoaderName:
    """`resolve_loader`, refusing an explicit `loader: unsloth` that cannot run here (config time)."""
    loader = resolve_loader(settings_loader, cuda_available=cuda_available, unsloth_installed=unsloth_installed)
    if loader == "unsloth":
        if not cuda_available:
            raise ValueError(UNSLOTH_GPU_MESSAGE)
        if not unsloth_installed:
            raise ValueError(UNSLOTH_MISSING_MESSAGE)
    return loader


# -- which modules get LoRA ------------------------------------------------------------------------


def _alternation(names: Iterable[str]) -> str:
    return "|".join(re.escape(name) for name in names)


def split_embedding_targets(
    target_modules: Sequence[str] | str | None,
    modules_to_save: Sequence[str] | None,
    *,
    finetune_language_layers: bool = True,
) -> tuple[list[str] | str | None, list[str] | None]:
    """Move `embed_tokens` / `lm_head` (any dotted spelling) from the LoRA targets to
    modules_to_save, as Unsloth's `_redirect_embedding_targets` does (only when language layers
    are trained, only for a list). Returns (target_modules, modules_to_save)."""
    saved = None if modules_to_save is None else list(modules_to_save)
    if not isinstance(target_modules, (list, tuple)) or not finetune_language_layers:
        return (list(target_modules) if isinstance(target_modules, tuple) else target_modules), saved
    targets = list(dict.fromkeys(target_modules))
    moved = [name for name in targets if name.rsplit(".", 1)[-1] in EMBEDDING_LEAVES]
    if not moved:
        return targets, saved
    remaining = [name for name in targets if name not in moved]
    if not remaining:
        raise ValueError(
            f"lora_target_modules {targets} holds only {', '.join(moved)}, which are trained as "
            "full modules (lora_modules_to_save), not LoRA targets; add at least one projection, "
            "e.g. q_proj, or leave lora_target_modules unset to use the qwenvl.finetune_* flags"
        )
    saved = saved or []
    saved.extend(name for name in moved if name not in saved)
    return remaining, saved


def lora_target_regex(
    finetune_vision_layers: bool,
    finetune_language_layers: bool,
    finetune_attention_modules: bool,
    finetune_mlp_modules: bool,
    extra_target_modules: Sequence[str] | str | None = None,
    *,
    linear_leaves: Sequence[str] = QWEN2_5_VL_LINEAR_LEAVES,
) -> str:
    """The PEFT `target_modules` regex (fullmatch on module names) that Unsloth's
    `get_peft_model` builds for Qwen2.5-VL from the four flags.

    `extra_target_modules` is Axolotl's `lora_target_modules`: a list of leaf names narrows the
    leaves (and is matched as PEFT matches a list when all four flags are on, as in Unsloth); a
    string is a user regex, returned unchanged. Embedding leaves must already be split off
    (`split_embedding_targets`). `linear_leaves` defaults to Qwen2.5-VL's; `lora_target_modules_for`
    passes the leaves it finds in a model.
    """
    if isinstance(extra_target_modules, str):
        return extra_target_modules
    if not (finetune_vision_layers or finetune_language_layers):
        raise ValueError(
            "qwenvl.finetune_vision_layers and finetune_language_layers are both false: no layer "
            "to put LoRA on"
        )
    if not (finetune_attention_modules or finetune_mlp_modules):
        raise ValueError(
            "qwenvl.finetune_attention_modules and finetune_mlp_modules are both false: no module "
            "to put LoRA on"
        )
    if extra_target_modules is not None:
        leaves = list(dict.fromkeys(extra_target_modules))
        if not leaves:
            raise ValueError("lora_target_modules is an empty list")
        embedding = [name for name in leaves if name.rsplit(".", 1)[-1] in EMBEDDING_LEAVES]
        if embedding and finetune_language_layers:
            raise ValueError(
                f"{embedding} must be moved to modules_to_save first (split_embedding_targets)"
            )
        if all((finetune_vision_layers, finetune_language_layers,
                finetune_attention_modules, finetune_mlp_modules)):  # fmt: skip
            # Unsloth hands an unscoped list to PEFT as is: `key == t or key.endswith("." + t)`.
            return r"(?:.*\.)?(?:" + _alternation(leaves) + r")"
    else:
        leaves = [leaf for leaf in linear_leaves if leaf not in MOE_ROUTER_LEAVES]

    parts = (VISION_TAGS if finetune_vision_layers else ()) + (
        LANGUAGE_TAGS if finetune_language_layers else ()
    )
    components = (ATTENTION_TAGS if finetune_attention_modules else ()) + (
        MLP_TAGS if finetune_mlp_modules else ()
    )
    leaf_group = r"(?:" + _alternation(leaves) + r")"
    parts_group = "|".join(parts)
    components_group = "|".join(components)
    regex = r".*?(?:" + parts_group + r").*?(?:" + components_group + r").*?\." + leaf_group
    if finetune_language_layers:
        regex = (
            r"(?:" + regex + r")|(?:\bmodel\.layers\.[\d]{1,}(?!.*\.experts\.\d)\..*?(?:"
            + components_group + r").*?\.(?:" + leaf_group + r"))"
        )
    return regex


def linear_leaves_of(model) -> list[str]:
    """Leaf names get_peft_regex auto-targets in `model`: Linear leaves seen more than once or
    inside a numbered layer stack, in first-seen order (peft_utils.py:187-210)."""
    import torch

    names = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    counts = Counter(name.rsplit(".", 1)[-1] for name in names)
    in_stack = {name.rsplit(".", 1)[-1] for name in names if re.search(r"\.\d+\.", name)}
    return [
        leaf
        for leaf, count in counts.items()
        if leaf not in MOE_ROUTER_LEAVES and (count != 1 or leaf in in_stack)
    ]


def lora_target_modules_for(
    model,
    finetune_vision_layers: bool = False,
    finetune_language_layers: bool = True,
    finetune_attention_modules: bool = True,
    finetune_mlp_modules: bool = True,
    extra_target_modules: Sequence[str] | str | None = None,
) -> list[str]:
    """Sorted names of the modules of `model` that get LoRA, matched the way PEFT matches a regex
    (`re.fullmatch` on every `named_modules()` name), leaving out parameter-free leaves as Unsloth
    does. Raises when nothing matches (Unsloth would silently widen the regex instead)."""
    if extra_target_modules is None:
        regex = lora_target_regex(
            finetune_vision_layers, finetune_language_layers, finetune_attention_modules,
            finetune_mlp_modules, linear_leaves=linear_leaves_of(model),
        )  # fmt: skip
    else:
        regex = lora_target_regex(
            finetune_vision_layers, finetune_language_layers, finetune_attention_modules,
            finetune_mlp_modules, extra_target_modules,
        )  # fmt: skip
    selected = []
    for name, module in model.named_modules():
        if not name or not re.fullmatch(regex, name, flags=re.DOTALL):
            continue
        if next(module.parameters(recurse=False), None) is None and next(module.children(), None) is None:
            continue  # placeholder (e.g. Identity) that get_peft_regex excludes
        selected.append(name)
    if not selected:
        raise ValueError(f"no module of {type(model).__name__} matches the LoRA target regex {regex!r}")
    return sorted(selected)


def lora_wrapped_module_names(peft_model) -> list[str]:
    """Sorted names (relative to the base model, as PEFT matched them) of the modules that carry
    a LoRA adapter in a PeftModel, for checking what `get_peft_model` really did."""
    from peft.tuners.lora import LoraLayer

    prefix = "base_model.model."
    return sorted(
        name[len(prefix) :] if name.startswith(prefix) else name
        for name, module in peft_model.named_modules()
        if isinstance(module, LoraLayer) and getattr(module, "lora_A", None)
    )


# -- Axolotl keys each loader needs ----------------------------------------------------------------

_KERNEL_KEYS = ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "lora_embedding_kernel")
_UNVERIFIED_SHARDING = ("deepspeed", "fsdp", "fsdp_config")
_UNSLOTH_REFUSED = {
    "load_in_8bit": "Unsloth's vision path is wired for 4-bit or 16-bit here; use load_in_4bit",
    "peft_use_dora": "DoRA is not wired through FastVisionModel.get_peft_model",
    "lora_model_dir": "continuing from an adapter is not wired for the Unsloth path; use "
    "resume_from_checkpoint, or qwenvl.loader: transformers",
    "relora": "ReLoRA merges and re-wraps the model, which would undo Unsloth's patches",
    "rl": "only supervised training is wired for the Unsloth path",
    "fsdp": "FSDP under Unsloth is unproven with this plugin",
    "fsdp_config": "FSDP under Unsloth is unproven with this plugin",
    "deepspeed": "DeepSpeed under Unsloth is unproven with this plugin",
    "activation_offloading": "Unsloth already offloads activations "
    '(qwenvl.use_gradient_checkpointing: "unsloth")',
    "selective_checkpointing": "Unsloth sets up gradient checkpointing itself "
    "(qwenvl.use_gradient_checkpointing)",
    # Unsloth rewrites Qwen2.5-VL's forward to fuse lm_head + cross-entropy; a second loss patch
    # would replace that forward (and lose the memory saving) or fight over it.
    "chunked_cross_entropy": "Unsloth fuses lm_head and the loss itself",
    "cut_cross_entropy": "Unsloth fuses lm_head and the loss itself",
    "liger_cross_entropy": "Unsloth fuses lm_head and the loss itself",
    "liger_fused_linear_cross_entropy": "Unsloth fuses lm_head and the loss itself",
}

# Axolotl features that read `outputs.logits` of a forward with labels: under Unsloth those are
# empty unless UNSLOTH_RETURN_LOGITS=1 (the fused loss never materialises them).
_LOGIT_CONSUMERS = {
    "do_bench_eval": "the MMLU-style bench eval reads prediction logits",
    "eval_table_size": "the prediction table callback reads prediction logits",
}


def _settings_value(settings, key: str):
    return settings.get(key) if isinstance(settings, dict) else getattr(settings, key)


def axolotl_keys_for_loader(cfg: dict, loader: LoaderName, settings) -> list[str]:
    """Make a raw Axolotl config dict (at `register`) agree with `loader`; returns the problems
    (contradicting keys) for the caller to raise, after applying what can be applied.

    Both loaders: `lora_target_linear: true` is refused (adapter.py:178-186 would union every
    linear leaf into the targets, defeating the qwenvl.finetune_* flags); Axolotl's LoRA Triton
    kernels are forced off (an explicit `true` is refused).
    `transformers`: `lora_target_modules` becomes the `lora_target_regex` string (PEFT fullmatches
    a string, adapter.py:191-194 passes it through); DeepSpeed / FSDP get a not-tested warning.
    `unsloth`: an `adapter` of lora/qlora is required, and the keys in `_UNSLOTH_REFUSED` are refused.
    """
    problems: list[str] = []
    if cfg.get("lora_target_linear"):
        problems.append(
            "`lora_target_linear: true` would put LoRA on every linear layer, vision tower "
            "included; remove it and choose modules with qwenvl.finetune_* (or lora_target_modules)"
        )
    adapter = cfg.get("adapter")
    user_targets = cfg.get("lora_target_modules") or None
    # Axolotl 0.20 switches its Triton LoRA kernels on for lora/qlora; they patch the attention
    # class, which fails for Qwen2.5-VL ("could not import attention class for model_type:
    # qwen2_5_vl"), and under Unsloth they would land on Unsloth's model. Off for both loaders.
    for key in _KERNEL_KEYS:
        if cfg.get(key):
            problems.append(
                f"`{key}: true`: Axolotl's Triton LoRA kernels do not load on Qwen2.5-VL"
                + (" and would patch Unsloth's model" if loader == "unsloth" else "")
                + "; remove it (the plugin sets it to false)"
            )
        cfg[key] = False
    if loader == "transformers":
        for key in _UNVERIFIED_SHARDING:
            if cfg.get(key):
                LOG.warning(
                    "qwenvl: `%s` with qwenvl.loader: transformers is not tested by this plugin; "
                    "DDP is (README, Multi-GPU). Media-free batches get a masked placeholder image "
                    "so every rank runs the vision tower.", key,
                )  # fmt: skip
        if adapter in ("lora", "qlora") and not problems:
            targets, saved = split_embedding_targets(
                user_targets, cfg.get("lora_modules_to_save"),
                finetune_language_layers=_settings_value(settings, "finetune_language_layers"),
            )  # fmt: skip
            cfg["lora_target_modules"] = lora_target_regex(
                _settings_value(settings, "finetune_vision_layers"),
                _settings_value(settings, "finetune_language_layers"),
                _settings_value(settings, "finetune_attention_modules"),
                _settings_value(settings, "finetune_mlp_modules"),
                targets,
            )
            if saved:
                cfg["lora_modules_to_save"] = saved
        return problems

    if adapter not in ("lora", "qlora"):
        problems.append(
            f"qwenvl.loader: unsloth trains a LoRA: set `adapter: qlora` (with load_in_4bit: true) "
            f"or `adapter: lora`, not {adapter!r}"
        )
    for key, why in _UNSLOTH_REFUSED.items():
        if cfg.get(key):
            problems.append(f"`{key}` is not supported with qwenvl.loader: unsloth: {why}")
    return problems


def unsloth_logits_needed(cfg) -> list[str]:
    """The Axolotl features in `cfg` that need real logits from a forward with labels, which
    Unsloth's fused loss leaves empty (`EMPTY_LOGITS`) unless `UNSLOTH_RETURN_LOGITS=1`."""
    return [f"`{key}` ({why})" for key, why in _LOGIT_CONSUMERS.items() if cfg.get(key)]


def request_unsloth_logits(cfg) -> bool:
    """Set `UNSLOTH_RETURN_LOGITS=1` when an enabled Axolotl feature reads logits (costs the
    memory of materialising them; training loss is unchanged). Returns whether it was set."""
    needed = unsloth_logits_needed(cfg)
    if not needed:
        return False
    os.environ["UNSLOTH_RETURN_LOGITS"] = "1"
    LOG.warning(
        "qwenvl: %s need logits; set UNSLOTH_RETURN_LOGITS=1, so Unsloth materialises them "
        "(more memory than its fused loss). Turn those off to keep the fused loss.",
        ", ".join(needed),
    )
    return True


# -- the Unsloth path (GPU) ------------------------------------------------------------------------


def _offline() -> bool:
    return any(
        os.environ.get(var, "").strip().lower() in _OFFLINE_VALUES
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def prepare_unsloth_environment() -> None:
    """Environment Unsloth reads at import / load time. Statistics pings are always off (they
    download a README from the Hub, unsloth/models/_utils.py:4835-4895)."""
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")


def _is_local(path: str) -> bool:
    return Path(str(path)).expanduser().exists()


def unsloth_gradient_checkpointing(cfg, settings) -> str | bool:
    """`qwenvl.use_gradient_checkpointing`, else "unsloth" (offloaded) when Axolotl's
    `gradient_checkpointing` is on, else False."""
    value = _settings_value(settings, "use_gradient_checkpointing")
    if value is not None:
        return value
    return "unsloth" if cfg.get("gradient_checkpointing") else False


def unsloth_from_pretrained_kwargs(cfg, settings, *, offline: bool | None = None) -> dict:
    """Keyword arguments of `FastVisionModel.from_pretrained` for an Axolotl cfg (pure)."""
    base_model = str(cfg.get("base_model"))
    offline = _offline() if offline is None else offline
    kwargs: dict[str, Any] = {
        "model_name": base_model,
        "max_seq_length": cfg.get("sequence_len"),
        "load_in_4bit": bool(cfg.get("load_in_4bit")),
        # None: Unsloth picks bf16 where the GPU supports it (as Axolotl's `bf16: auto` does);
        # an explicit `fp16: true` (pre-Ampere cards) is passed on.
        "dtype": "float16" if cfg.get("fp16") is True and not cfg.get("bf16") else None,
        "use_gradient_checkpointing": unsloth_gradient_checkpointing(cfg, settings),
        "full_finetuning": False,
        "trust_remote_code": bool(cfg.get("trust_remote_code")),
        # Hub names may be remapped to Unsloth's pre-quantized repos; a local folder never is.
        "use_exact_model_name": _is_local(base_model),
    }
    if offline:
        kwargs["local_files_only"] = True
    if cfg.get("revision_of_model"):
        kwargs["revision"] = cfg.get("revision_of_model")
    if world_size() > 1:  # DDP: every rank holds its own copy on its own GPU
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return kwargs


def unsloth_peft_kwargs(cfg, settings) -> dict:
    """Keyword arguments of `FastVisionModel.get_peft_model` (besides the model) (pure)."""
    targets = cfg.get("lora_target_modules") or None
    modules_to_save = cfg.get("lora_modules_to_save") or None
    if isinstance(targets, tuple):
        targets = list(targets)
    seed = cfg.get("seed")
    return {
        "r": int(cfg.get("lora_r") or 8),
        "lora_alpha": int(cfg.get("lora_alpha") or 16),
        "lora_dropout": float(cfg.get("lora_dropout") or 0.0),
        "bias": "none",
        "target_modules": targets,
        "use_rslora": bool(cfg.get("peft_use_rslora")),
        "modules_to_save": list(modules_to_save) if modules_to_save else None,
        "finetune_vision_layers": bool(_settings_value(settings, "finetune_vision_layers")),
        "finetune_language_layers": bool(_settings_value(settings, "finetune_language_layers")),
        "finetune_attention_modules": bool(_settings_value(settings, "finetune_attention_modules")),
        "finetune_mlp_modules": bool(_settings_value(settings, "finetune_mlp_modules")),
        "use_gradient_checkpointing": unsloth_gradient_checkpointing(cfg, settings),
        "random_state": 3407 if seed is None else int(seed),
        "max_seq_length": cfg.get("sequence_len"),
    }


def expected_unsloth_targets(model, peft_kwargs: dict) -> list[str]:
    """The module names `get_peft_model(model, **peft_kwargs)` should wrap, per
    `lora_target_modules_for` (after the embedding redirect Unsloth applies)."""
    targets, _ = split_embedding_targets(
        peft_kwargs.get("target_modules"), peft_kwargs.get("modules_to_save"),
        finetune_language_layers=peft_kwargs["finetune_language_layers"],
    )  # fmt: skip
    return lora_target_modules_for(
        model,
        peft_kwargs["finetune_vision_layers"],
        peft_kwargs["finetune_language_layers"],
        peft_kwargs["finetune_attention_modules"],
        peft_kwargs["finetune_mlp_modules"],
        targets,
    )


def unsloth_load_base(cfg, settings):
    """`FastVisionModel.from_pretrained` -> (model, processor); the model has no adapter yet."""
    prepare_unsloth_environment()
    import unsloth  # noqa: F401  (patches transformers/TRL/PEFT on first import)
    from unsloth import FastVisionModel

    kwargs = unsloth_from_pretrained_kwargs(cfg, settings)
    if isinstance(kwargs["dtype"], str):
        import torch

        kwargs["dtype"] = getattr(torch, kwargs["dtype"])
    LOG.info(
        "qwenvl: loading %s with Unsloth %s FastVisionModel.from_pretrained(%s)",
        kwargs["model_name"], getattr(unsloth, "__version__", "?"),
        ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k != "model_name"),
    )  # fmt: skip
    return FastVisionModel.from_pretrained(**kwargs)


def unsloth_apply_lora(model, cfg, settings):
    """`FastVisionModel.get_peft_model` with Axolotl's LoRA keys and the qwenvl flags; checks
    that the wrapped modules are exactly the ones `lora_target_modules_for` predicts."""
    from unsloth import FastVisionModel

    peft_kwargs = unsloth_peft_kwargs(cfg, settings)
    expected = expected_unsloth_targets(model, peft_kwargs)
    peft_model = FastVisionModel.get_peft_model(model, **peft_kwargs)
    wrapped = lora_wrapped_module_names(peft_model)
    if wrapped != expected:
        missing = sorted(set(expected) - set(wrapped))
        extra = sorted(set(wrapped) - set(expected))
        raise RuntimeError(
            "qwenvl: Unsloth put LoRA on other modules than the qwenvl.finetune_* flags select "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"extra {extra[:5]}{'...' if len(extra) > 5 else ''}); the transformers loader would "
            "train a different set. Please report this with your unsloth version."
        )
    LOG.info(
        "qwenvl: Unsloth FastVisionModel.get_peft_model put LoRA r=%s on %d modules "
        "(vision=%s language=%s attention=%s mlp=%s, rslora=%s)",
        peft_kwargs["r"], len(wrapped), peft_kwargs["finetune_vision_layers"],
        peft_kwargs["finetune_language_layers"], peft_kwargs["finetune_attention_modules"],
        peft_kwargs["finetune_mlp_modules"], peft_kwargs["use_rslora"],
    )  # fmt: skip
    return peft_model


def load_with_unsloth(cfg, settings):
    """Base model + LoRA through Unsloth, outside Axolotl's ModelLoader -> (model, processor)."""
    model, processor = unsloth_load_base(cfg, settings)
    return unsloth_apply_lora(model, cfg, settings), processor


# -- wiring into Axolotl's ModelLoader -------------------------------------------------------------

_PATCHED_FLAG = "_qwenvl_unsloth_patched"
_MODEL_FLAG = "_qwenvl_unsloth"


def unsloth_owns(loader) -> bool:
    """Whether this ModelLoader is the Unsloth training load (not inference / merge / a reference
    model, and `qwenvl.loader` resolves to unsloth here)."""
    if getattr(loader, "inference", False) or getattr(loader, "reference_model", False):
        return False
    cfg = loader.cfg
    if cfg.get("merge_lora") or cfg.get("adapter") not in ("lora", "qlora"):
        return False
    from .settings import qwenvl_settings

    if "qwenvl" not in cfg:
        return False
    loader_choice = qwenvl_settings(cfg).loader
    return (
        resolve_loader(
            loader_choice, cuda_available=cuda_available(), unsloth_installed=unsloth_installed()
        )
        == "unsloth"
    )


def install_unsloth_loader_patch(model_loader_cls=None) -> bool:
    """Swap four methods of Axolotl's `ModelLoader` (once per process) so the Unsloth training
    load goes through FastVisionModel and every other load keeps Axolotl's code:

    * `_build_model` -> `FastVisionModel.from_pretrained`;
    * `_configure_embedding_dtypes` -> skipped for Unsloth's model: Axolotl's version upcasts
      every `*norm*` module to fp32 and back and calls `gradient_checkpointing_enable()`, which
      would reset the layers' `_gradient_checkpointing_func` that Unsloth set up (its offloaded
      "unsloth" mode / non-reentrant shim); Unsloth has already chosen dtypes and checkpointing;
    * `_prepare_model_for_quantization` -> skipped for Unsloth's model (no PEFT k-bit
      preparation, which would upcast the 16-bit ViT / lm_head to fp32);
    * `_load_adapters` -> `FastVisionModel.get_peft_model`.

    Call from `pre_model_load`. Returns False when it was already installed."""
    if model_loader_cls is None:
        from axolotl.loaders import ModelLoader as model_loader_cls
    if getattr(model_loader_cls, _PATCHED_FLAG, False):
        return False
    original_build = model_loader_cls._build_model
    original_dtypes = model_loader_cls._configure_embedding_dtypes
    original_prepare = model_loader_cls._prepare_model_for_quantization
    original_adapters = model_loader_cls._load_adapters

    def _build_model(self) -> bool:
        if not unsloth_owns(self):
            return original_build(self)
        from .settings import qwenvl_settings

        self.model, self._qwenvl_unsloth_processor = unsloth_load_base(
            self.cfg, qwenvl_settings(self.cfg)
        )
        setattr(self.model, _MODEL_FLAG, True)
        return True  # Unsloth placed the model; Axolotl must not move it

    def _configure_embedding_dtypes(self):
        if getattr(self.model, _MODEL_FLAG, False):
            LOG.info(
                "qwenvl: Unsloth chose the dtypes and gradient checkpointing; Axolotl's "
                "embedding/norm casts and gradient_checkpointing_enable() are skipped"
            )
            return None
        return original_dtypes(self)

    def _prepare_model_for_quantization(self):
        if getattr(self.model, _MODEL_FLAG, False):
            return None  # Unsloth's get_peft_model prepares k-bit training itself
        return original_prepare(self)

    def _load_adapters(self):
        if not getattr(self.model, _MODEL_FLAG, False):
            return original_adapters(self)
        from .settings import qwenvl_settings

        self.model = unsloth_apply_lora(self.model, self.cfg, qwenvl_settings(self.cfg))
        setattr(self.model, _MODEL_FLAG, True)
        return self.model.peft_config["default"]

    model_loader_cls._build_model = _build_model
    model_loader_cls._configure_embedding_dtypes = _configure_embedding_dtypes
    model_loader_cls._prepare_model_for_quantization = _prepare_model_for_quantization
    model_loader_cls._load_adapters = _load_adapters
    setattr(model_loader_cls, _PATCHED_FLAG, True)
    return True


def loaded_by_unsloth(model) -> bool:
    """Whether `model` (or the model a PeftModel wraps) came from the plugin's Unsloth path."""
    return bool(getattr(model, _MODEL_FLAG, False))  # a PeftModel forwards unknown attributes
