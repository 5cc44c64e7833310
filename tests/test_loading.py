"""Loader choice, the CPU refusal, and the LoRA target mapping of `qwenvl.finetune_*`.

CPU (main .venv):   .venv/bin/python -m pytest tests/test_loading.py -q
Unsloth half:       .venv-unsloth/bin/python -m pytest tests/test_loading.py -q -m unsloth
  (calls unsloth_zoo's own get_peft_regex on the tiny model; skipped where unsloth_zoo is absent)
GPU half (`gpu`):   loads the tiny model through FastVisionModel and checks the wrapped modules.
"""

from __future__ import annotations

import itertools
import os
import re

import pytest
from helpers import write_minimal_config

from axolotl_qwenvl_plugin import loading
from axolotl_qwenvl_plugin.args import Loader, QwenVLConfig
from axolotl_qwenvl_plugin.loading import (
    axolotl_keys_for_loader,
    check_loader_supported,
    lora_target_modules_for,
    lora_target_regex,
    resolve_loader,
    split_embedding_targets,
    unsloth_from_pretrained_kwargs,
    unsloth_peft_kwargs,
)

FLAG_NAMES = (
    "finetune_vision_layers",
    "finetune_language_layers",
    "finetune_attention_modules",
    "finetune_mlp_modules",
)
ALL_FLAGS = list(itertools.product((False, True), repeat=4))
VALID_FLAGS = [f for f in ALL_FLAGS if (f[0] or f[1]) and (f[2] or f[3])]
INVALID_FLAGS = [f for f in ALL_FLAGS if f not in VALID_FLAGS]
ATTENTION_LEAVES = {"q_proj", "k_proj", "v_proj", "o_proj", "qkv", "proj"}
MLP_LEAVES = {"gate_proj", "up_proj", "down_proj"}


def flag_id(flags) -> str:
    return "".join(name[9] if on else "-" for name, on in zip(FLAG_NAMES, flags))  # v l a m


# -- loader choice ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("choice", "cuda", "installed", "expected"),
    [
        ("auto", True, True, "unsloth"),
        ("auto", True, False, "transformers"),
        ("auto", False, True, "transformers"),
        ("auto", False, False, "transformers"),
        ("unsloth", True, True, "unsloth"),
        ("unsloth", True, False, "unsloth"),
        ("unsloth", False, True, "unsloth"),
        ("unsloth", False, False, "unsloth"),
        ("transformers", True, True, "transformers"),
        ("transformers", True, False, "transformers"),
        ("transformers", False, True, "transformers"),
        ("transformers", False, False, "transformers"),
    ],
)
def test_resolve_loader_truth_table(choice, cuda, installed, expected):
    assert resolve_loader(choice, cuda_available=cuda, unsloth_installed=installed) == expected
    # the args Enum and its validated value resolve the same way
    assert resolve_loader(Loader(choice), cuda_available=cuda, unsloth_installed=installed) == expected
    settings = QwenVLConfig(loader=choice)
    assert resolve_loader(settings.loader, cuda_available=cuda, unsloth_installed=installed) == expected


def test_resolve_loader_rejects_unknown_choice():
    with pytest.raises(ValueError, match="qwenvl.loader must be one of auto, unsloth, transformers"):
        resolve_loader("vllm", cuda_available=True, unsloth_installed=True)


@pytest.mark.parametrize("installed", [True, False])
def test_unsloth_without_gpu_is_refused_with_a_clear_message(installed):
    with pytest.raises(ValueError) as error:
        check_loader_supported("unsloth", cuda_available=False, unsloth_installed=installed)
    message = str(error.value)
    assert "Unsloth needs a GPU for vision models" in message
    assert "`qwenvl.loader: transformers` runs on CPU" in message


def test_unsloth_without_the_extra_is_refused():
    with pytest.raises(ValueError, match=r"axolotl-qwenvl-plugin\[unsloth\]"):
        check_loader_supported("unsloth", cuda_available=True, unsloth_installed=False)


@pytest.mark.parametrize(
    ("choice", "cuda", "installed", "expected"),
    [
        ("auto", False, False, "transformers"),
        ("auto", False, True, "transformers"),
        ("auto", True, True, "unsloth"),
        ("transformers", False, False, "transformers"),
        ("unsloth", True, True, "unsloth"),
    ],
)
def test_supported_choices_pass_the_check(choice, cuda, installed, expected):
    assert check_loader_supported(choice, cuda_available=cuda, unsloth_installed=installed) == expected


# -- target modules: pure regex --------------------------------------------------------------------


@pytest.mark.parametrize("flags", INVALID_FLAGS, ids=flag_id)
def test_flags_selecting_nothing_are_refused(flags):
    with pytest.raises(ValueError, match="no (layer|module) to put LoRA on"):
        lora_target_regex(*flags)


NAMES = {
    "model.visual.blocks.3.attn.qkv": ("vision", "attn"),
    "model.visual.blocks.3.attn.proj": ("vision", "attn"),
    "model.visual.blocks.3.mlp.gate_proj": ("vision", "mlp"),
    "model.visual.blocks.3.mlp.down_proj": ("vision", "mlp"),
    "model.language_model.layers.11.self_attn.q_proj": ("language", "attn"),
    "model.language_model.layers.11.self_attn.o_proj": ("language", "attn"),
    "model.language_model.layers.11.mlp.up_proj": ("language", "mlp"),
    "model.visual.merger.mlp.0": None,
    "model.visual.merger.mlp.2": None,
    "model.visual.patch_embed.proj": None,
    "model.visual.blocks.3.attn": None,
    "model.language_model.layers.11.mlp.act_fn": None,
    "model.language_model.embed_tokens": None,
    "lm_head": None,
}


@pytest.mark.parametrize("flags", VALID_FLAGS, ids=flag_id)
def test_regex_on_qwen2_5_vl_names(flags):
    vision, language, attention, mlp = flags
    regex = lora_target_regex(*flags)
    for name, kind in NAMES.items():
        expected = kind is not None and (
            {"vision": vision, "language": language}[kind[0]]
            and {"attn": attention, "mlp": mlp}[kind[1]]
        )
        assert bool(re.fullmatch(regex, name)) == expected, (name, regex)


def test_string_targets_are_a_user_regex():
    assert lora_target_regex(False, True, True, True, r".*q_proj") == r".*q_proj"


def test_explicit_list_narrows_the_leaves_within_the_flags():
    regex = lora_target_regex(False, True, True, True, ["q_proj", "gate_proj"])
    assert re.fullmatch(regex, "model.language_model.layers.0.self_attn.q_proj")
    assert re.fullmatch(regex, "model.language_model.layers.0.mlp.gate_proj")
    assert not re.fullmatch(regex, "model.language_model.layers.0.self_attn.k_proj")
    assert not re.fullmatch(regex, "model.visual.blocks.0.mlp.gate_proj")  # vision off


def test_explicit_list_with_every_flag_on_is_a_suffix_match_like_peft():
    regex = lora_target_regex(True, True, True, True, ["proj"])
    # Unsloth hands the list to PEFT unchanged: the ViT's Conv3d patch_embed.proj matches too
    assert re.fullmatch(regex, "model.visual.patch_embed.proj")
    assert re.fullmatch(regex, "model.visual.blocks.0.attn.proj")
    assert not re.fullmatch(regex, "model.language_model.layers.0.self_attn.q_proj")


def test_embedding_targets_move_to_modules_to_save():
    targets, saved = split_embedding_targets(["q_proj", "lm_head", "model.embed_tokens"], ["norm"])
    assert targets == ["q_proj"]
    assert saved == ["norm", "lm_head", "model.embed_tokens"]
    # vision-only: Unsloth does not redirect (and the language embeddings never match)
    assert split_embedding_targets(["qkv", "lm_head"], None, finetune_language_layers=False) == (
        ["qkv", "lm_head"],
        None,
    )
    with pytest.raises(ValueError, match="only lm_head"):
        split_embedding_targets(["lm_head"], None)
    with pytest.raises(ValueError, match="split_embedding_targets"):
        lora_target_regex(False, True, True, True, ["q_proj", "lm_head"])


# -- target modules on the tiny model --------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(tiny_model_dir)


def expected_by_rule(model, flags) -> set[str]:
    """An independent oracle: LoRA goes on ViT block / LLM layer projections whose tower and
    kind (attention / MLP) are switched on; never on the merger, patch embedding or heads."""
    import torch

    vision, language, attention, mlp = flags
    chosen = set()
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if name.startswith("model.visual.blocks."):
            tower_on = vision
        elif name.startswith("model.language_model.layers."):
            tower_on = language
        else:
            continue
        kind_on = attention if (".attn." in name or ".self_attn." in name) else mlp
        if tower_on and kind_on:
            chosen.add(name)
    return chosen


@pytest.mark.parametrize("flags", VALID_FLAGS, ids=flag_id)
def test_target_modules_on_tiny_model(tiny_model, flags):
    import torch

    vision, language, attention, mlp = flags
    selected = lora_target_modules_for(tiny_model, *flags)
    assert selected == sorted(selected)
    modules = dict(tiny_model.named_modules())
    assert all(isinstance(modules[name], torch.nn.Linear) for name in selected)
    assert set(selected) == expected_by_rule(tiny_model, flags)

    leaves = {name.rsplit(".", 1)[-1] for name in selected}
    if not vision:
        assert not any(name.startswith("model.visual") for name in selected)
    else:
        assert any(name.startswith("model.visual.blocks.") for name in selected)
    if not language:
        assert not any(name.startswith("model.language_model") for name in selected)
    else:
        assert any(name.startswith("model.language_model.layers.") for name in selected)
    if not mlp:
        assert not leaves & MLP_LEAVES
    if not attention:
        assert not leaves & ATTENTION_LEAVES
    if vision and attention:
        assert {"model.visual.blocks.0.attn.qkv", "model.visual.blocks.0.attn.proj"} <= set(selected)
    assert not any(".merger." in name or "patch_embed" in name for name in selected)
    assert "lm_head" not in selected


def test_default_flags_pick_the_language_projections_only(tiny_model):
    selected = lora_target_modules_for(tiny_model)  # the args defaults: language, attn + mlp
    settings = QwenVLConfig()
    assert selected == lora_target_modules_for(
        tiny_model, *(getattr(settings, name) for name in FLAG_NAMES)
    )
    assert len(selected) == 2 * 7  # 2 layers x q/k/v/o/gate/up/down
    assert all(name.startswith("model.language_model.layers.") for name in selected)


def test_linear_leaves_of_tiny_model_are_qwen2_5_vl_leaves(tiny_model):
    assert set(loading.linear_leaves_of(tiny_model)) == set(loading.QWEN2_5_VL_LINEAR_LEAVES)


@pytest.mark.parametrize(
    "flags",
    [(False, True, True, True), (True, False, True, False), (True, True, False, True)],
    ids=flag_id,
)
def test_transformers_path_wraps_exactly_the_selected_modules(tiny_model_dir, flags):
    """Through Axolotl's own `load_lora` with the regex as `lora_target_modules` (the
    transformers loader): PEFT wraps exactly `lora_target_modules_for`, and only LoRA trains."""
    from axolotl.loaders.adapter import load_lora
    from axolotl.utils.dict import DictDefault
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    expected = lora_target_modules_for(model, *flags)
    cfg = {"adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0}
    settings = dict(zip(FLAG_NAMES, flags))
    assert axolotl_keys_for_loader(cfg, "transformers", settings) == []
    peft_model, lora_config = load_lora(model, DictDefault(cfg))
    assert lora_config.target_modules == lora_target_regex(*flags)
    assert loading.lora_wrapped_module_names(peft_model) == expected
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in name for name in trainable)
    if not flags[0]:
        assert not any(".visual." in name for name in trainable)


# -- the same mapping, computed by Unsloth's own code -----------------------------------------------


def _unsloth_get_peft_regex():
    """unsloth_zoo refuses to import unless `import unsloth` ran first (it checks
    UNSLOTH_IS_PRESENT); on CPU that import selects Unsloth's CPU backend and patches
    transformers/PEFT for the rest of the session, hence the separate `-m unsloth` run."""
    pytest.importorskip("unsloth")
    return pytest.importorskip("unsloth_zoo.peft_utils").get_peft_regex


def _unsloth_selected(model, flags, target_modules=None) -> set[str]:
    """The modules FastVisionModel.get_peft_model would wrap: its regex from get_peft_regex,
    matched like PEFT (fullmatch on every module name); an unscoped list is passed to PEFT as is."""
    get_peft_regex = _unsloth_get_peft_regex()

    names = [name for name, _ in model.named_modules() if name]
    if target_modules is not None and all(flags):
        return {n for n in names if any(n == t or n.endswith("." + t) for t in target_modules)}
    regex = get_peft_regex(
        model, **dict(zip(FLAG_NAMES, flags)),
        target_modules=None if target_modules is None else list(target_modules),
    )  # fmt: skip
    return {n for n in names if re.fullmatch(regex, n, flags=re.DOTALL)}


@pytest.mark.unsloth
@pytest.mark.parametrize("flags", VALID_FLAGS, ids=flag_id)
def test_target_modules_equal_unsloths(tiny_model, flags):
    assert set(lora_target_modules_for(tiny_model, *flags)) == _unsloth_selected(tiny_model, flags)


@pytest.mark.unsloth
@pytest.mark.parametrize("flags", VALID_FLAGS, ids=flag_id)
def test_regex_is_byte_identical_to_unsloths(tiny_model, flags):
    get_peft_regex = _unsloth_get_peft_regex()
    leaves = loading.linear_leaves_of(tiny_model)
    assert lora_target_regex(*flags, linear_leaves=leaves) == get_peft_regex(
        tiny_model, **dict(zip(FLAG_NAMES, flags))
    )


@pytest.mark.unsloth
@pytest.mark.parametrize("flags", INVALID_FLAGS, ids=flag_id)
def test_unsloth_refuses_the_same_empty_flag_sets(tiny_model, flags):
    get_peft_regex = _unsloth_get_peft_regex()
    with pytest.raises(RuntimeError, match="No (layers|modules) to finetune"):
        get_peft_regex(tiny_model, **dict(zip(FLAG_NAMES, flags)))


@pytest.mark.unsloth
@pytest.mark.parametrize(
    ("flags", "targets"),
    [
        ((False, True, True, True), ["q_proj", "v_proj"]),
        ((False, True, True, True), ["q_proj", "gate_proj", "proj"]),
        ((True, True, True, False), ["qkv", "q_proj", "gate_proj"]),
        ((True, False, True, True), ["proj", "down_proj"]),
        ((True, True, True, True), ["q_proj", "proj"]),
    ],
    ids=lambda value: flag_id(value) if isinstance(value, tuple) else "+".join(value),
)
def test_explicit_target_lists_equal_unsloths(tiny_model, flags, targets):
    ours = set(lora_target_modules_for(tiny_model, *flags, targets))
    assert ours == _unsloth_selected(tiny_model, flags, targets)


# -- keyword mapping and Axolotl keys ----------------------------------------------------------------


def test_from_pretrained_kwargs_for_a_local_offline_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = {"base_model": str(tmp_path), "sequence_len": 4096, "load_in_4bit": True,
           "gradient_checkpointing": True}  # fmt: skip
    kwargs = unsloth_from_pretrained_kwargs(cfg, QwenVLConfig())
    assert kwargs == {
        "model_name": str(tmp_path),
        "max_seq_length": 4096,
        "load_in_4bit": True,
        "dtype": None,
        "use_gradient_checkpointing": "unsloth",
        "full_finetuning": False,
        "trust_remote_code": False,
        "use_exact_model_name": True,
        "local_files_only": True,
    }


def test_from_pretrained_kwargs_for_a_hub_name(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    cfg = {"base_model": "Qwen/Qwen2.5-VL-7B-Instruct", "sequence_len": 2048}
    kwargs = unsloth_from_pretrained_kwargs(cfg, QwenVLConfig(use_gradient_checkpointing=True))
    assert kwargs["use_exact_model_name"] is False  # Unsloth may pick its pre-quantized repo
    assert "local_files_only" not in kwargs
    assert kwargs["use_gradient_checkpointing"] is True
    assert kwargs["load_in_4bit"] is False
    assert kwargs["device_map"] == {"": 1}


def test_peft_kwargs_map_axolotl_and_qwenvl_keys():
    cfg = {"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "peft_use_rslora": True,
           "lora_target_modules": ["q_proj", "v_proj"], "lora_modules_to_save": ["lm_head"],
           "seed": 7, "sequence_len": 1024, "gradient_checkpointing": False}  # fmt: skip
    settings = QwenVLConfig(finetune_vision_layers=True, finetune_mlp_modules=False)
    assert unsloth_peft_kwargs(cfg, settings) == {
        "r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "bias": "none",
        "target_modules": ["q_proj", "v_proj"],
        "use_rslora": True,
        "modules_to_save": ["lm_head"],
        "finetune_vision_layers": True,
        "finetune_language_layers": True,
        "finetune_attention_modules": True,
        "finetune_mlp_modules": False,
        "use_gradient_checkpointing": False,
        "random_state": 7,
        "max_seq_length": 1024,
    }


def test_transformers_keys_set_the_regex_and_move_embeddings():
    cfg = {"adapter": "qlora", "lora_target_modules": ["q_proj", "embed_tokens"]}
    assert axolotl_keys_for_loader(cfg, "transformers", QwenVLConfig()) == []
    assert cfg["lora_target_modules"] == lora_target_regex(False, True, True, True, ["q_proj"])
    assert cfg["lora_modules_to_save"] == ["embed_tokens"]
    # Axolotl's Triton LoRA kernels fail to load on Qwen2.5-VL: off unless asked, refused if asked
    assert all(cfg[key] is False for key in loading._KERNEL_KEYS)
    cfg = {"adapter": "qlora", "lora_qkv_kernel": True}
    problems = axolotl_keys_for_loader(cfg, "transformers", QwenVLConfig())
    assert len(problems) == 1 and "lora_qkv_kernel" in problems[0] and "Qwen2.5-VL" in problems[0]


def test_lora_target_linear_is_refused_for_both_loaders():
    for loader in ("transformers", "unsloth"):
        cfg = {"adapter": "lora", "lora_target_linear": True}
        problems = axolotl_keys_for_loader(cfg, loader, QwenVLConfig())
        assert any("lora_target_linear" in p for p in problems)


def test_unsloth_keys_force_kernels_off_and_refuse_conflicts():
    cfg = {"adapter": "qlora", "load_in_4bit": True}
    assert axolotl_keys_for_loader(cfg, "unsloth", QwenVLConfig()) == []
    assert all(cfg[key] is False for key in loading._KERNEL_KEYS)
    assert cfg["adapter"] == "qlora" and cfg["load_in_4bit"] is True  # left truthful

    cfg = {"adapter": None, "lora_qkv_kernel": True, "load_in_8bit": True, "deepspeed": "z3.json"}
    problems = " | ".join(axolotl_keys_for_loader(cfg, "unsloth", QwenVLConfig()))
    for fragment in ("adapter: qlora", "lora_qkv_kernel", "load_in_8bit", "deepspeed"):
        assert fragment in problems


# -- the ModelLoader swap, with a stand-in loader ---------------------------------------------------


class _FakeModel:
    pass


class _FakeLoader:
    def __init__(self, cfg, inference=False, reference_model=False):
        self.cfg, self.inference, self.reference_model = cfg, inference, reference_model
        self.calls = []

    def _build_model(self):
        self.calls.append("build")
        self.model = _FakeModel()
        return False

    def _configure_embedding_dtypes(self):
        self.calls.append("dtypes")
        self._prepare_model_for_quantization()  # as Axolotl's does (its only caller)

    def _prepare_model_for_quantization(self):
        self.calls.append("prepare")

    def _load_adapters(self):
        self.calls.append("adapters")
        return "axolotl-lora-config"


def _cfg(loader):
    from axolotl.utils.dict import DictDefault

    return DictDefault({"adapter": "qlora", "load_in_4bit": True, "qwenvl": {"loader": loader}})


def test_loader_patch_keeps_axolotl_code_for_other_loads(monkeypatch):
    monkeypatch.setattr(loading, "cuda_available", lambda: True)
    monkeypatch.setattr(loading, "unsloth_installed", lambda: True)

    class Loader(_FakeLoader):
        pass

    assert loading.install_unsloth_loader_patch(Loader) is True
    assert loading.install_unsloth_loader_patch(Loader) is False  # once per class
    for loader in (
        Loader(_cfg("transformers")),
        Loader(_cfg("unsloth"), inference=True),
        Loader(_cfg("unsloth"), reference_model=True),
    ):
        assert loader._build_model() is False
        loader._configure_embedding_dtypes()
        assert loader._load_adapters() == "axolotl-lora-config"
        assert loader.calls == ["build", "dtypes", "prepare", "adapters"]
        assert not loading.loaded_by_unsloth(loader.model)


def test_loader_patch_routes_the_unsloth_training_load(monkeypatch):
    monkeypatch.setattr(loading, "cuda_available", lambda: True)
    monkeypatch.setattr(loading, "unsloth_installed", lambda: True)
    peft_model = type("Peft", (), {"peft_config": {"default": "unsloth-lora-config"}})()
    monkeypatch.setattr(loading, "unsloth_load_base", lambda cfg, settings: (_FakeModel(), "proc"))
    monkeypatch.setattr(loading, "unsloth_apply_lora", lambda model, cfg, settings: peft_model)

    class Loader(_FakeLoader):
        pass

    loading.install_unsloth_loader_patch(Loader)
    loader = Loader(_cfg("auto"))
    assert loader._build_model() is True  # skip_move_to_device: Unsloth placed the model
    assert loading.loaded_by_unsloth(loader.model)
    # no norm/embedding casts, no gradient_checkpointing_enable(), no PEFT k-bit preparation
    loader._configure_embedding_dtypes()
    loader._prepare_model_for_quantization()
    assert loader._load_adapters() == "unsloth-lora-config"
    assert loader.model is peft_model
    assert loading.loaded_by_unsloth(loader.model)
    assert loader.calls == []


def test_axolotl_model_loader_still_has_the_swapped_seams():
    """The patch replaces four ModelLoader methods; if Axolotl renames or reorders them the Unsloth
    path would silently fall back to Axolotl's loading (or double-quantize). Fail here instead."""
    import inspect

    from axolotl.loaders import ModelLoader

    load = inspect.getsource(ModelLoader.load)
    order = [load.index(name) for name in (
        "PLUGIN_MANAGER.pre_model_load", "self._build_model()", "self._apply_post_model_load_setup()",
        "self._load_adapters()", "apply_post_model_load_patches",
    )]  # fmt: skip
    assert order == sorted(order)
    post_load = inspect.getsource(ModelLoader._apply_post_model_load_setup)
    assert "merge_and_unload" in post_load and "self._configure_embedding_dtypes()" in post_load
    dtypes = inspect.getsource(ModelLoader._configure_embedding_dtypes)
    assert "gradient_checkpointing_enable" in dtypes
    assert "self._prepare_model_for_quantization()" in dtypes
    assert "prepare_model_for_kbit_training" in inspect.getsource(
        ModelLoader._prepare_model_for_quantization
    )


def test_loader_patch_on_a_real_model_loader_subclass(monkeypatch):
    from axolotl.loaders import ModelLoader

    class Loader(ModelLoader):
        pass

    originals = {name: getattr(ModelLoader, name) for name in (
        "_build_model", "_configure_embedding_dtypes", "_prepare_model_for_quantization",
        "_load_adapters",
    )}  # fmt: skip
    assert loading.install_unsloth_loader_patch(Loader) is True
    for name, original in originals.items():
        assert getattr(Loader, name) is not original, name
        assert getattr(ModelLoader, name) is original, name  # the base class is untouched


# -- the loader through Axolotl's config loader (register), CPU -----------------------------------


def _no_cuda():
    return not loading.cuda_available()


@pytest.mark.skipif(not _no_cuda(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("adapter", [{"adapter": "lora"}, {"adapter": "qlora", "load_in_4bit": True}])
def test_unsloth_loader_is_refused_at_config_time_on_cpu(tmp_path, tiny_model_dir, adapter):
    from axolotl.cli.config import load_cfg

    from axolotl_qwenvl_plugin.plugin import QwenVLConfigError

    path = write_minimal_config(tmp_path, tiny_model_dir, qwenvl={"loader": "unsloth"}, **adapter)
    with pytest.raises(QwenVLConfigError) as error:
        load_cfg(str(path))
    message = str(error.value)
    assert "qwenvl.loader: unsloth" in message
    assert "Unsloth needs a GPU for vision models" in message
    assert "`qwenvl.loader: transformers` runs on CPU" in message


@pytest.mark.skipif(not _no_cuda(), reason="auto picks unsloth where CUDA is present")
def test_auto_loader_on_cpu_resolves_to_transformers(tmp_path, tiny_model_dir):
    from axolotl.cli.config import load_cfg
    from axolotl.integrations.base import PluginManager
    from axolotl.loaders import ModelLoader

    path = write_minimal_config(
        tmp_path, tiny_model_dir, qwenvl={"loader": "auto", "finetune_vision_layers": True},
        lora_target_modules=["q_proj", "qkv"],
    )  # fmt: skip
    cfg = load_cfg(str(path))
    # the transformers loader: Axolotl's own LoRA with the finetune_* flags as a PEFT regex
    assert cfg.lora_target_modules == lora_target_regex(True, True, True, True, ["q_proj", "qkv"])
    PluginManager.get_instance().pre_model_load(cfg)
    assert not getattr(ModelLoader, loading._PATCHED_FLAG, False), "patched ModelLoader on CPU"


def test_loader_keys_for_unsloth_through_register(monkeypatch):
    from axolotl_qwenvl_plugin.plugin import QwenVLConfigError, apply_loader_keys

    monkeypatch.setenv("UNSLOTH_RETURN_LOGITS", "0")  # recorded, so the test's change is undone
    monkeypatch.delenv("UNSLOTH_RETURN_LOGITS")
    cfg = {"adapter": "qlora", "load_in_4bit": True, "lora_qkv_kernel": None,
           "lora_target_modules": ["q_proj"], "qwenvl": {"loader": "auto"}}  # fmt: skip
    assert apply_loader_keys(cfg, cuda_available=True, unsloth_installed=True) == "unsloth"
    assert all(cfg[key] is False for key in loading._KERNEL_KEYS)
    assert cfg["lora_target_modules"] == ["q_proj"]  # Unsloth gets the list, with its flags
    assert "UNSLOTH_RETURN_LOGITS" not in os.environ

    cfg = {"adapter": "qlora", "load_in_4bit": True, "do_bench_eval": True, "qwenvl": {"loader": "unsloth"}}
    apply_loader_keys(cfg, cuda_available=True, unsloth_installed=True)
    assert os.environ["UNSLOTH_RETURN_LOGITS"] == "1"  # the bench eval reads logits

    for extra in ({"chunked_cross_entropy": True}, {"deepspeed": "zero3.json"}, {"lora_o_kernel": True}):
        cfg = {"adapter": "lora", "qwenvl": {"loader": "unsloth"}, **extra}
        with pytest.raises(QwenVLConfigError, match=next(iter(extra))):
            apply_loader_keys(cfg, cuda_available=True, unsloth_installed=True)
    with pytest.raises(QwenVLConfigError, match="needs the `unsloth` and `unsloth_zoo` packages"):
        apply_loader_keys({"adapter": "lora", "qwenvl": {"loader": "unsloth"}},
                          cuda_available=True, unsloth_installed=False)  # fmt: skip
    # an invalid block is left to Axolotl's schema validation, which names the key
    assert apply_loader_keys({"qwenvl": {"loader": "vllm"}}, cuda_available=False, unsloth_installed=False) is None


@pytest.mark.parametrize(
    ("cfg", "argv", "training"),
    [
        ({}, ["/x/axolotl/cli/train.py", "cfg.yml"], True),
        ({}, ["axolotl", "train", "cfg.yml"], True),
        ({"is_preprocess": True}, ["axolotl", "preprocess", "cfg.yml"], False),
        ({"inference": True}, ["/x/axolotl/cli/inference.py", "cfg.yml"], False),
        ({}, ["/venv/bin/axolotl", "merge-lora", "cfg.yml"], False),
        ({"merge_lora": True}, ["/venv/bin/axolotl", "merge-lora", "cfg.yml"], False),
        ({}, ["/x/axolotl/cli/merge_lora.py", "cfg.yml"], False),
    ],
)
def test_only_training_commands_need_the_unsloth_loader_to_run_here(cfg, argv, training):
    from axolotl_qwenvl_plugin.plugin import apply_loader_keys, is_training_command

    assert is_training_command(cfg, argv) is training


def test_preprocessing_or_merging_an_unsloth_config_on_cpu_is_allowed():
    from axolotl_qwenvl_plugin.plugin import apply_loader_keys

    cfg = {"adapter": "qlora", "load_in_4bit": True, "is_preprocess": True, "qwenvl": {"loader": "unsloth"}}
    assert apply_loader_keys(cfg, cuda_available=False, unsloth_installed=False) == "unsloth"
    # merge-lora points lora_model_dir at the adapter: refused for Unsloth training, fine here
    cfg = {"adapter": "qlora", "merge_lora": True, "lora_model_dir": "out", "qwenvl": {"loader": "unsloth"}}
    assert apply_loader_keys(cfg, cuda_available=False, unsloth_installed=False) == "unsloth"


@pytest.mark.slow
def test_merge_lora_of_an_unsloth_style_adapter_on_cpu(tmp_path, tiny_model_dir):
    """`axolotl merge-lora` of a `loader: unsloth` config on a machine without GPU: the adapter
    has the form FastVisionModel.get_peft_model saves (seen on the GPU run: a regex
    `target_modules`, rslora, an `unsloth_fixed` auto_mapping), and the merged weights carry it."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    out = tmp_path / "out"
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, use_rslora=True, init_lora_weights=False,
                        target_modules=lora_target_regex(False, True, True, True, targets))  # fmt: skip
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(out)
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    adapter_config["auto_mapping"] = {"base_model_class": "Qwen2_5_VLForConditionalGeneration",
                                      "parent_library": "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl",
                                      "unsloth_fixed": True}  # fmt: skip
    (out / "adapter_config.json").write_text(json.dumps(adapter_config))
    expected = peft_model.merge_and_unload().state_dict()

    path = write_minimal_config(
        tmp_path, tiny_model_dir, qwenvl={"loader": "unsloth"}, adapter="qlora", load_in_4bit=True,
        lora_r=8, lora_alpha=16, lora_target_modules=targets, peft_use_rslora=True,
    )  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", AXOLOTL_DO_NOT_TRACK="1",
               CUDA_VISIBLE_DEVICES="")  # fmt: skip
    axolotl = Path(sys.executable).parent / "axolotl"
    proc = subprocess.run([str(axolotl), "merge-lora", str(path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert "FastVisionModel" not in log
    merged = {}
    for shard in (out / "merged").glob("*.safetensors"):
        merged.update(load_file(shard))
    # the merged checkpoint keeps the original file's key names (model.layers.N...)
    name = "model.language_model.layers.0.self_attn.q_proj.weight"
    key = next(k for k in merged if k.endswith("layers.0.self_attn.q_proj.weight"))
    original = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).state_dict()[name]
    got, want, base = merged[key].float(), expected[name].float(), original.float()
    # a qlora merge rounds the base through NF4 first (Axolotl's simulate_nf4), so compare the
    # LoRA delta's direction rather than exact values: the merge moved the weight toward base+BA
    assert (got - want).norm() < 0.5 * (got - base).norm(), "the adapter was not merged"
    assert torch.nn.functional.cosine_similarity((got - base).flatten(), (want - base).flatten(), dim=0) > 0.9


def test_fp16_is_passed_to_unsloth_and_bf16_left_to_its_auto_choice(tmp_path):
    cfg = {"base_model": str(tmp_path), "sequence_len": 64, "fp16": True}
    assert unsloth_from_pretrained_kwargs(cfg, QwenVLConfig())["dtype"] == "float16"
    cfg = {"base_model": str(tmp_path), "sequence_len": 64, "bf16": "auto"}
    assert unsloth_from_pretrained_kwargs(cfg, QwenVLConfig())["dtype"] is None


# -- GPU: the real Unsloth path on the tiny model ---------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("flags", [(False, True, True, True), (True, True, True, False)], ids=flag_id)
def test_unsloth_wraps_exactly_the_selected_modules(tiny_model_dir, flags):
    pytest.importorskip("unsloth")
    from axolotl.utils.dict import DictDefault

    cfg = DictDefault({"base_model": str(tiny_model_dir), "sequence_len": 512, "load_in_4bit": True,
                       "gradient_checkpointing": True, "lora_r": 8, "lora_alpha": 16})  # fmt: skip
    settings = QwenVLConfig(**dict(zip(FLAG_NAMES, flags)))
    model, processor = loading.load_with_unsloth(cfg, settings)  # raises on any mismatch
    wrapped = loading.lora_wrapped_module_names(model)
    assert set(wrapped) == expected_by_rule(model.base_model.model, flags)
    assert processor is not None
