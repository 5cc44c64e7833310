"""The `qwenvl:` args model and the plugin, loaded through Axolotl's real config loader."""

from __future__ import annotations

import pytest
from helpers import write_minimal_config
from pydantic import ValidationError

from axolotl_qwenvl_plugin.args import TOKEN_PIXELS, QwenVLArgs, QwenVLConfig
from axolotl_qwenvl_plugin.plugin import QwenVLConfigError, apply_required_axolotl_keys

# -- args model ---------------------------------------------------------------------------------


def test_defaults_follow_qwen():
    settings = QwenVLConfig()
    assert settings.media_dir is None
    assert settings.image_template is None and settings.video_template is None
    assert settings.allow_outside_media_dir is False
    assert settings.image_min_pixels == 4 * TOKEN_PIXELS == 56 * 56
    assert settings.image_max_pixels == 1280 * 28 * 28
    assert settings.video_min_pixels == 128 * 28 * 28
    assert settings.video_max_pixels == 768 * 28 * 28
    assert settings.video_total_pixels == 2 * 4096 * 28 * 28
    assert settings.video_fps == 2.0
    assert (settings.video_min_frames, settings.video_max_frames) == (4, 768)
    assert settings.on_bad_record == "error"
    assert settings.loader == "auto"
    assert (
        settings.finetune_vision_layers,
        settings.finetune_language_layers,
        settings.finetune_attention_modules,
        settings.finetune_mlp_modules,
    ) == (False, True, True, True)
    assert settings.use_gradient_checkpointing is None


def test_every_key_is_documented():
    for name, field in QwenVLConfig.model_fields.items():
        assert field.description and len(field.description) > 20, name


@pytest.mark.parametrize(
    ("block", "key", "fragment"),
    [
        ({"video_fps": 0}, "video_fps", "greater than 0"),
        ({"video_fps": 500}, "video_fps", "less than or equal to 120"),
        ({"image_min_pixels": -1}, "image_min_pixels", "greater than 0"),
        ({"image_max_pixels": "big"}, "image_max_pixels", "valid integer"),
        ({"video_min_frames": 1}, "video_min_frames", "greater than or equal to 2"),
        ({"video_total_pixels": 0}, "video_total_pixels", "greater than 0"),
        ({"on_bad_record": "ignore"}, "on_bad_record", "'error' or 'skip'"),
        ({"loader": "vllm"}, "loader", "'auto', 'unsloth' or 'transformers'"),
        ({"use_gradient_checkpointing": "offload"}, "use_gradient_checkpointing", "unsloth"),
        ({"image_min_pixels": 2000, "image_max_pixels": 1000}, "image_min_pixels", "must not exceed qwenvl.image_max_pixels"),
        ({"video_min_pixels": 9000, "video_max_pixels": 1000}, "video_min_pixels", "must not exceed qwenvl.video_max_pixels"),
        ({"video_min_frames": 10, "video_max_frames": 4}, "video_min_frames", "must not exceed qwenvl.video_max_frames"),
        ({"image_template": "images/a.jpg"}, "image_template", "must contain `{n}`"),
        ({"video_template": "v.mp4"}, "video_template", "must contain `{n}`"),
        ({"finetune_language_layers": False}, "finetune_", "select no module"),
        ({"finetune_attention_modules": False, "finetune_mlp_modules": False}, "finetune_", "select no module"),
        ({"video_fsp": 2.0}, "video_fsp", "Extra inputs are not permitted"),
    ],
)
def test_bad_values_name_the_key(block, key, fragment):
    with pytest.raises(ValidationError) as info:
        QwenVLArgs(qwenvl=block)
    message = str(info.value)
    assert key in message
    assert fragment in message


def test_null_block_means_defaults():
    assert QwenVLArgs(qwenvl=None).qwenvl == QwenVLConfig()


def test_fingerprint_tracks_preparation_settings_only():
    base = QwenVLConfig()
    assert base.preparation_fingerprint() == QwenVLConfig().preparation_fingerprint()
    assert base.preparation_fingerprint() != QwenVLConfig(video_fps=1.0).preparation_fingerprint()
    assert base.preparation_fingerprint() != QwenVLConfig(image_max_pixels=12544).preparation_fingerprint()
    # The loader does not change prepared records, so it must not invalidate the cache.
    assert base.preparation_fingerprint() == QwenVLConfig(loader="transformers").preparation_fingerprint()


# -- register(): Axolotl keys -------------------------------------------------------------------


def _raw_cfg(**extra) -> dict:
    cfg = {
        "datasets": [{"path": "data/train.jsonl", "type": "axolotl_qwenvl_plugin.marker_jsonl"}],
        "qwenvl": {},
    }
    cfg.update(extra)
    return cfg


def test_register_sets_required_keys():
    cfg = _raw_cfg()
    apply_required_axolotl_keys(cfg)
    assert cfg["remove_unused_columns"] is False
    assert cfg["datasets"][0]["ds_type"] == "text"  # line i+1 == row i, for FILE:LINE messages
    fingerprint = QwenVLConfig().preparation_fingerprint()
    assert cfg["dataset_prepared_path"] == f"last_run_prepared/qwenvl-{fingerprint}"


def test_register_keeps_user_prepared_path_as_parent():
    cfg = _raw_cfg(dataset_prepared_path="prep", qwenvl={"video_fps": 1.0})
    apply_required_axolotl_keys(cfg)
    assert cfg["dataset_prepared_path"] == f"prep/qwenvl-{QwenVLConfig(video_fps=1.0).preparation_fingerprint()}"
    apply_required_axolotl_keys(cfg)  # idempotent: preprocess and train see the same folder
    assert cfg["dataset_prepared_path"].count("qwenvl-") == 1


@pytest.mark.parametrize("modules", [["embed_tokens"], ["lm_head"], ["embed_tokens", "lm_head"]])
def test_register_lowers_embedding_learning_rate_when_embeddings_train(modules):
    cfg = _raw_cfg(lora_modules_to_save=modules)
    apply_required_axolotl_keys(cfg)
    assert cfg["embedding_lr_scale"] == 0.1


def test_register_keeps_a_chosen_embedding_learning_rate():
    cfg = _raw_cfg(lora_modules_to_save=["lm_head"], embedding_lr=1e-5)
    apply_required_axolotl_keys(cfg)
    assert "embedding_lr_scale" not in cfg
    cfg = _raw_cfg()
    apply_required_axolotl_keys(cfg)
    assert "embedding_lr_scale" not in cfg  # nothing to scale when embeddings are frozen


def test_register_reads_marker_test_datasets_as_lines_too():
    cfg = _raw_cfg(test_datasets=[{"path": "data/eval.jsonl", "type": "axolotl_qwenvl_plugin.marker_jsonl"}])
    apply_required_axolotl_keys(cfg)
    assert cfg["test_datasets"][0]["ds_type"] == "text"


def test_register_leaves_other_datasets_alone():
    cfg = _raw_cfg()
    cfg["datasets"].append({"path": "other.jsonl", "type": "chat_template"})
    apply_required_axolotl_keys(cfg)
    assert "ds_type" not in cfg["datasets"][1]


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"sample_packing": True}, "`sample_packing: true` is not supported"),
        ({"remove_unused_columns": True}, "`remove_unused_columns: true` would drop the media column"),
        ({"skip_prepare_dataset": True}, "`skip_prepare_dataset: true` skips the marker strategy"),
        ({"excess_length_strategy": "truncate"}, "would cut records inside vision spans"),
    ],
)
def test_register_refuses_contradicting_keys(extra, fragment):
    with pytest.raises(QwenVLConfigError, match="qwenvl plugin") as info:
        apply_required_axolotl_keys(_raw_cfg(**extra))
    assert fragment in str(info.value)


# -- through Axolotl's own config loader --------------------------------------------------------


def _write_config(tmp_path, tiny_model_dir, **overrides):
    settings = {"lora_target_modules": ["q_proj"], "qwenvl": {"video_fps": 1.0, "on_bad_record": "skip"}}
    return write_minimal_config(tmp_path, tiny_model_dir, **{**settings, **overrides})


def test_plugin_loads_through_axolotl_load_cfg(tmp_path, tiny_model_dir):
    from axolotl.cli.config import load_cfg
    from axolotl.integrations.base import PluginManager

    from axolotl_qwenvl_plugin import QwenVLPlugin
    from axolotl_qwenvl_plugin.collator import QwenVLDataCollator

    cfg = load_cfg(str(_write_config(tmp_path, tiny_model_dir)))

    # Axolotl swallows plugin ImportErrors, so prove the plugin instance exists and its hooks ran.
    plugin = PluginManager.get_instance().plugins["axolotl_qwenvl_plugin.QwenVLPlugin"]
    assert isinstance(plugin, QwenVLPlugin)
    assert cfg.remove_unused_columns is False  # set by register()
    assert cfg.datasets[0]["ds_type"] == "text"
    assert "qwenvl-" in cfg.dataset_prepared_path
    # The nested block was validated by our model (merged into Axolotl's schema), defaults filled.
    assert cfg.qwenvl["video_fps"] == 1.0
    assert cfg.qwenvl["on_bad_record"] == "skip"
    assert cfg.qwenvl["image_max_pixels"] == 1280 * 28 * 28
    collator_cls, kwargs = PluginManager.get_instance().get_collator_cls_and_kwargs(cfg)
    assert collator_cls is QwenVLDataCollator
    assert kwargs["processor_source"] == str(tiny_model_dir)
    assert kwargs["on_bad_record"] == "skip"


def test_bad_qwenvl_value_fails_axolotl_validation(tmp_path, tiny_model_dir):
    from axolotl.cli.config import load_cfg

    path = _write_config(tmp_path, tiny_model_dir, qwenvl={"video_fps": -2})
    with pytest.raises(Exception) as info:
        load_cfg(str(path))
    assert "qwenvl.video_fps" in str(info.value)


def test_packing_refused_through_axolotl(tmp_path, tiny_model_dir):
    from axolotl.cli.config import load_cfg

    path = _write_config(tmp_path, tiny_model_dir, sample_packing=True)
    with pytest.raises(QwenVLConfigError, match="sample_packing"):
        load_cfg(str(path))
