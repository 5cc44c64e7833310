"""The dataset strategy on rows Axolotl parsed itself (JSON arrays, parquet, hub): no line numbers."""

from __future__ import annotations

import json

from media_factory import write_image


def test_parsed_rows_with_mixed_shapes_are_prepared(tmp_path, tokenizer, processor, tiny_model_dir):
    from axolotl.utils.dict import DictDefault
    from datasets import load_dataset

    from axolotl_qwenvl_plugin import marker_jsonl

    write_image(tmp_path / "a.png", 56, 56)
    data = tmp_path / "data.json"
    records = [
        {"text": "hi <image_no_1>", "images": ["a.png"]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
    ]
    data.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    # Arrow unifies the schema: the `messages` row arrives with `text: None, images: None`.
    rows = load_dataset("json", data_files=str(data), split="train")
    assert rows[1]["text"] is None
    cfg = DictDefault({"qwenvl": {}, "sequence_len": 512, "base_model": str(tiny_model_dir)})
    strategy = marker_jsonl.load(tokenizer, cfg, DictDefault({"path": str(data)}), processor)
    prepared = strategy.wrap_dataset(rows)
    assert prepared["qwenvl_location"] == [f"{data}[row 0]", f"{data}[row 1]"]
    image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert prepared[0]["input_ids"].count(image_pad) == json.loads(prepared[0]["qwenvl_media"])[0]["num_pads"]
    assert json.loads(prepared[1]["qwenvl_media"]) == []
