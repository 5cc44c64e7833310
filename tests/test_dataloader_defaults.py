"""The plugin keeps the GPU fed: background collation workers by default, and length-grouped
batching that sees vision tokens."""

from __future__ import annotations

import json

import pytest

from axolotl_qwenvl_plugin.plugin import apply_dataloader_defaults, default_dataloader_workers
from helpers import write_minimal_config


@pytest.mark.parametrize(
    ("cpus", "local_processes", "workers"),
    [(1, 1, 1), (2, 1, 1), (8, 1, 4), (16, 1, 4), (16, 2, 4), (16, 4, 2), (16, 8, 1), (64, 8, 4)],
)
def test_default_workers_share_the_cpus_between_local_processes(cpus, local_processes, workers):
    assert default_dataloader_workers(cpus, local_processes) == workers


def test_defaults_apply_only_to_unset_keys(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    cfg = {}
    apply_dataloader_defaults(cfg)
    assert cfg["dataloader_num_workers"] >= 1
    assert cfg["dataloader_prefetch_factor"] == 2

    chosen = {"dataloader_num_workers": 0}
    apply_dataloader_defaults(chosen)
    assert chosen == {"dataloader_num_workers": 0}  # the user's choice, prefetch left to torch

    prefetch = {"dataloader_prefetch_factor": 6}
    apply_dataloader_defaults(prefetch)
    assert prefetch["dataloader_prefetch_factor"] == 6


def test_workers_reach_the_validated_config(tmp_path, tiny_model_dir):
    from axolotl.cli.config import load_cfg

    cfg = load_cfg(str(write_minimal_config(tmp_path, tiny_model_dir)))
    assert cfg.dataloader_num_workers >= 1
    assert cfg.dataloader_prefetch_factor == 2

    cfg = load_cfg(str(write_minimal_config(tmp_path, tiny_model_dir, dataloader_num_workers=0)))
    assert cfg.dataloader_num_workers == 0


def test_group_by_length_lengths_count_vision_tokens(tmp_path, processor):
    """Axolotl's `group_by_length` sorts by `len(input_ids)`; prepared records hold every
    `<|image_pad|>` there, so an image record groups with records of its true length."""
    from axolotl.utils.trainer import add_length
    from media_factory import write_image
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from axolotl_qwenvl_plugin.args import QwenVLConfig
    from axolotl_qwenvl_plugin.records import RecordBuilder

    write_image(tmp_path / "big.png", 448, 448)
    builder = RecordBuilder(processor.tokenizer, processor, QwenVLConfig(), media_dir=tmp_path, sequence_len=4096)
    text_only = builder.build_line(json.dumps({"text": "a short caption"}), "t:1")
    with_image = builder.build_line(json.dumps({"text": "a short caption <image_no_1>", "images": ["big.png"]}), "t:2")
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")

    assert with_image["input_ids"].count(pad) == (448 // 28) ** 2
    lengths = [add_length(dict(row))["length"] for row in (text_only, with_image)]
    assert lengths[1] - lengths[0] >= (448 // 28) ** 2 + 2  # pads plus vision start/end

    # The sampler sorts within megabatches (4 here): at most one mixed batch per megabatch,
    # where random batching would mix about half of the 100 batches.
    rows = [text_only] * 100 + [with_image] * 100
    sampler = LengthGroupedSampler(2, lengths=[len(r["input_ids"]) for r in rows])
    order = list(sampler)
    batches = [order[i : i + 2] for i in range(0, len(order), 2)]
    assert rows[batches[0][0]] is with_image  # the longest batch first, so an OOM shows at once
    mixed = [b for b in batches if len({len(rows[i]["input_ids"]) for i in b}) > 1]
    assert len(mixed) <= 4
