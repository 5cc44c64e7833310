"""Configs with relative paths work from any working directory (issue #9, part 4).

Relative input paths (datasets, data_files, a local base_model / tokenizer / processor) are looked
up next to the config file first, then from the current directory as Axolotl does; Hub ids and
output paths are left alone. Unit tests on raw dicts, one through Axolotl's `load_cfg`, and one
real `axolotl preprocess` of the shipped demo config from an unrelated directory.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT

from axolotl_qwenvl_plugin.plugin import QwenVLConfigError, resolve_config_relative_paths
from axolotl_qwenvl_plugin.settings import config_dir, config_file, media_dir_for, processor_source, qwenvl_settings

STRATEGY = "axolotl_qwenvl_plugin.marker_jsonl"
TRAIN = ["axolotl", "train"]  # argv of a command that reads the datasets
RECORDS = 6  # of the demo data, copied for the subprocess test


@pytest.fixture
def layout(tmp_path, monkeypatch):
    """tmp/a/b/cfg.yml with tmp/a/b/data/x.jsonl and a model folder tmp/a/b/model; the cwd is tmp/elsewhere."""
    folder = tmp_path / "a" / "b"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "x.jsonl").write_text('{"text": "hi"}\n')
    (folder / "data" / "y.jsonl").write_text('{"text": "hey"}\n')
    (folder / "model").mkdir()
    config = folder / "cfg.yml"
    config.write_text("{}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return folder, config, elsewhere


def raw(config: Path, **keys) -> dict:
    return {"axolotl_config_path": str(config), "base_model": "Qwen/Qwen2.5-VL-7B-Instruct", **keys}


def marker(path: str, **keys) -> dict:
    return {"path": path, "type": STRATEGY, **keys}


# -- next to the config file ---------------------------------------------------------------------


def test_dataset_paths_resolve_against_the_config_folder(layout):
    folder, config, _ = layout
    cfg = raw(config, datasets=[marker("data/x.jsonl")], test_datasets=[marker("./data/y.jsonl")])
    resolve_config_relative_paths(cfg, argv=TRAIN)
    assert cfg["datasets"][0]["path"] == str(folder / "data" / "x.jsonl")
    assert cfg["test_datasets"][0]["path"] == str(folder / "data" / "y.jsonl")
    assert Path(cfg["datasets"][0]["path"]).is_absolute()


def test_a_relative_config_path_is_read_from_the_cwd(layout, monkeypatch):
    folder, config, _ = layout
    monkeypatch.chdir(folder.parent)  # `axolotl train b/cfg.yml` from tmp/a
    cfg = raw("b/cfg.yml", datasets=[marker("data/x.jsonl")])
    resolve_config_relative_paths(cfg, argv=TRAIN)
    assert cfg["datasets"][0]["path"] == str(folder / "data" / "x.jsonl")


def test_local_model_folders_resolve_against_the_config_folder(layout):
    folder, config, _ = layout
    cfg = raw(config, base_model="model", tokenizer_config="../b/model", processor_config="./model", base_model_config="model")
    resolve_config_relative_paths(cfg, argv=TRAIN)
    for key in ("base_model", "tokenizer_config", "processor_config", "base_model_config"):
        assert cfg[key] == str(folder / "model"), key


def test_hub_ids_are_never_touched(layout):
    _, config, _ = layout
    cfg = raw(config, tokenizer_config="Qwen/Qwen2.5-VL-3B-Instruct", datasets=[{"path": "HuggingFaceM4/ChartQA", "type": "chat_template"}])
    before = {**cfg, "datasets": [dict(cfg["datasets"][0])]}
    resolve_config_relative_paths(cfg, argv=TRAIN)
    assert cfg == before


def test_absolute_home_and_remote_paths_are_never_touched(layout):
    folder, config, _ = layout
    paths = [str(folder / "data" / "x.jsonl"), "~/data/x.jsonl", "s3://bucket/x.jsonl", "https://example.com/x.jsonl"]
    cfg = raw(config, datasets=[marker(p) for p in paths])
    resolve_config_relative_paths(cfg, argv=TRAIN)
    assert [ds["path"] for ds in cfg["datasets"]] == paths


def test_output_paths_keep_axolotls_meaning(layout):
    folder, config, _ = layout
    (folder / "outputs").mkdir()  # even when such a folder exists next to the config
    outputs = {
        "output_dir": "./outputs/run", "dataset_prepared_path": "last_run_prepared",
        "lora_model_dir": "./outputs/run", "resume_from_checkpoint": "outputs/run/checkpoint-10",
    }  # fmt: skip
    cfg = raw(config, **outputs)
    resolve_config_relative_paths(cfg, argv=TRAIN)
    assert {key: cfg[key] for key in outputs} == outputs


def test_data_files_follow_a_local_folder_and_stay_inside_a_hub_dataset(layout):
    folder, config, _ = layout
    cfg = raw(
        config,
        datasets=[
            {"path": "data", "data_files": ["data/x.jsonl", "data/y.jsonl"], "type": "completion"},
            {"path": "data", "data_files": "data/x.jsonl", "type": "completion"},
            {"path": "org/dataset", "data_files": "data/x.jsonl", "type": "completion"},
        ],
    )
    resolve_config_relative_paths(cfg, argv=TRAIN)
    local, single, hub = cfg["datasets"]
    assert local["path"] == str(folder / "data")
    assert local["data_files"] == [str(folder / "data" / "x.jsonl"), str(folder / "data" / "y.jsonl")]
    assert single["data_files"] == str(folder / "data" / "x.jsonl")
    assert hub == {"path": "org/dataset", "data_files": "data/x.jsonl", "type": "completion"}  # paths in the Hub repo


# -- from the current directory (Axolotl's rule) ---------------------------------------------------


def test_a_path_found_only_from_the_cwd_is_kept_with_one_info_line(layout, caplog):
    _, config, elsewhere = layout
    (elsewhere / "rootdata").mkdir()
    (elsewhere / "rootdata" / "z.jsonl").write_text('{"text": "x"}\n')
    cfg = raw(config, datasets=[marker("rootdata/z.jsonl")])
    with caplog.at_level(logging.INFO, logger="axolotl_qwenvl_plugin"):
        resolve_config_relative_paths(cfg, argv=TRAIN)
    assert cfg["datasets"][0]["path"] == "rootdata/z.jsonl"
    lines = [r.getMessage() for r in caplog.records if "rootdata/z.jsonl" in r.getMessage()]
    assert len(lines) == 1
    assert "datasets[0].path" in lines[0] and "current directory" in lines[0] and str(elsewhere) in lines[0]


def test_the_config_folder_wins_over_the_cwd_and_says_so(layout, caplog):
    folder, config, elsewhere = layout
    (elsewhere / "data").mkdir()
    (elsewhere / "data" / "x.jsonl").write_text('{"text": "the other file"}\n')
    cfg = raw(config, datasets=[marker("data/x.jsonl")])
    with caplog.at_level(logging.INFO, logger="axolotl_qwenvl_plugin"):
        resolve_config_relative_paths(cfg, argv=TRAIN)
    assert cfg["datasets"][0]["path"] == str(folder / "data" / "x.jsonl")
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert str(folder / "data" / "x.jsonl") in warning.getMessage()


def test_run_from_the_config_folder_leaves_paths_as_written(layout, monkeypatch):
    folder, config, _ = layout
    monkeypatch.chdir(folder)
    cfg = raw(config, base_model="model", datasets=[marker("data/x.jsonl")])
    resolve_config_relative_paths(cfg, argv=TRAIN)
    assert cfg["datasets"][0]["path"] == "data/x.jsonl"  # same file either way: cache keys and model card unchanged
    assert cfg["base_model"] == "model"


# -- not found --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["data/missing.jsonl", "missing.json", "./data/missing", "../elsewhere/a/b/c"])
def test_a_missing_local_dataset_names_the_key_the_config_and_both_places(layout, path):
    folder, config, elsewhere = layout
    cfg = raw(config, datasets=[marker("data/x.jsonl"), marker(path)])
    with pytest.raises(QwenVLConfigError) as info:
        resolve_config_relative_paths(cfg, argv=TRAIN)
    message = str(info.value)
    assert "datasets[1].path" in message and repr(path) in message
    assert str(config) in message
    assert str(folder / path) in message and str(elsewhere / path) in message


def test_a_missing_local_model_folder_is_an_error_a_missing_hub_id_is_not(layout):
    _, config, _ = layout
    with pytest.raises(QwenVLConfigError, match=r"base_model: '\.cache/tiny' not found"):
        resolve_config_relative_paths(raw(config, base_model=".cache/tiny"), argv=TRAIN)
    cfg = raw(config, base_model="Qwen/Qwen2.5-VL-72B-Instruct", datasets=[marker("org/marker-dataset")])
    resolve_config_relative_paths(cfg, argv=TRAIN)
    assert cfg["base_model"] == "Qwen/Qwen2.5-VL-72B-Instruct"
    assert cfg["datasets"][0]["path"] == "org/marker-dataset"


@pytest.mark.parametrize(
    "flags, argv",
    [
        ({"inference": True}, ["axolotl", "inference"]),
        ({}, ["axolotl", "merge-lora", "cfg.yml"]),
        ({"merge_lora": True}, ["/x/axolotl/cli/merge_lora.py"]),
        ({}, ["/x/axolotl/cli/inference.py", "cfg.yml"]),
    ],
)
def test_inference_and_merge_only_warn_about_a_missing_dataset(layout, flags, argv, caplog):
    _, config, _ = layout
    cfg = raw(config, datasets=[marker("data/gone.jsonl")], **flags)
    resolve_config_relative_paths(cfg, argv=argv)
    assert cfg["datasets"][0]["path"] == "data/gone.jsonl"
    assert any("datasets[0].path" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


# -- configs without a file of their own -----------------------------------------------------------


def test_a_config_without_a_file_is_left_to_axolotl(layout):
    cfg = {"base_model": "model", "datasets": [marker("data/missing.jsonl")]}
    resolve_config_relative_paths(cfg, argv=TRAIN)
    assert cfg == {"base_model": "model", "datasets": [marker("data/missing.jsonl")]}


def test_load_cfgs_temp_copy_of_a_dict_config_is_no_config_folder(layout):
    _, _, elsewhere = layout
    with tempfile.NamedTemporaryFile("w", suffix=".yml", prefix="axolotl_config_") as copy:
        cfg = raw(Path(copy.name), datasets=[marker("data/missing.jsonl")])
        assert config_file(cfg) is None
        assert config_dir(cfg) == Path.cwd()
        resolve_config_relative_paths(cfg, argv=TRAIN)
    assert cfg["datasets"][0]["path"] == "data/missing.jsonl"


def test_processor_source_and_media_dir_use_the_config_folder(layout):
    folder, config, _ = layout
    cfg = raw(config, base_model="model", qwenvl={"media_dir": "data"})
    assert processor_source(cfg) == str(folder / "model")  # as `axolotl-qwenvl check` reads it
    assert media_dir_for(cfg, qwenvl_settings(cfg), "/anywhere/x.jsonl") == folder / "data"


# -- through Axolotl ---------------------------------------------------------------------------------


def _portable_project(root: Path, tiny_model_dir: Path) -> Path:
    """The shipped tiny demo config and its data (first RECORDS records) copied into
    root/project/example_configs, with the tiny model at root/project/.cache, where the config's
    `../.cache/tiny-qwen2.5-vl` points."""
    project = root / "project"
    configs = project / "example_configs"
    configs.mkdir(parents=True)
    shutil.copy(REPO_ROOT / "example_configs" / "qwenvl-tiny.yml", configs)
    shutil.copytree(REPO_ROOT / "example_configs" / "demo", configs / "demo", ignore=shutil.ignore_patterns("*.py"))
    data = configs / "demo" / "data.jsonl"  # its first records (images and a video) keep preprocess short
    data.write_text("".join(data.read_text().splitlines(keepends=True)[:RECORDS]))
    (project / ".cache").mkdir()
    (project / ".cache" / "tiny-qwen2.5-vl").symlink_to(tiny_model_dir, target_is_directory=True)
    return configs / "qwenvl-tiny.yml"


def test_load_cfg_of_a_config_path_from_another_directory(tmp_path, tiny_model_dir, monkeypatch):
    from axolotl.cli.config import load_cfg

    config = _portable_project(tmp_path, tiny_model_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_cfg(str(config))
    folder = config.parent
    assert cfg.base_model == str((folder / "../.cache/tiny-qwen2.5-vl").resolve())
    assert cfg.datasets[0]["path"] == str(folder / "demo" / "data.jsonl")
    assert cfg.datasets[0]["ds_type"] == "text"  # the plugin's .jsonl handling still sees the file
    assert cfg.output_dir == "outputs/qwenvl-tiny"  # outputs: relative to where it is run
    assert cfg.dataset_prepared_path.startswith("last_run_prepared/qwenvl-")


@pytest.mark.slow
def test_axolotl_preprocess_of_the_demo_config_from_an_unrelated_directory(tmp_path, tiny_model_dir):
    from test_end_to_end import run_axolotl

    config = _portable_project(tmp_path, tiny_model_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    output = run_axolotl("preprocess", str(config), cwd=elsewhere)
    assert "Traceback" not in output
    prepared = list((elsewhere / "last_run_prepared").glob("qwenvl-*/*/dataset_info.json"))
    assert prepared, f"no prepared dataset under {elsewhere / 'last_run_prepared'}:\n{output[-3000:]}"
    assert _prepared_rows(prepared[0].parent) == RECORDS  # every record, media resolved from the data's folder


def _prepared_rows(folder: Path) -> int:
    from datasets import load_from_disk

    return len(load_from_disk(str(folder)))
