"""axolotl-qwenvl-plugin: fine-tune Qwen2.5-VL on marker-embedded image and video JSONL in Axolotl.

`QwenVLPlugin` is imported lazily: it pulls in Axolotl (and torch), which the pure modules
(markers, media, args) and their tests do not need.
"""

from .args import QwenVLArgs, QwenVLConfig

__all__ = ["QwenVLArgs", "QwenVLConfig", "QwenVLPlugin"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "QwenVLPlugin":
        from .plugin import QwenVLPlugin

        return QwenVLPlugin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
