"""`axolotl train`'s training entry point with Unsloth imported before anything else (before
transformers), to measure whether import order changes the plugin's Unsloth speed (issue 5).

    accelerate launch benchmarks/axolotl_train_unsloth_first.py CONFIG.yml

Identical to `accelerate launch -m axolotl.cli.train CONFIG.yml` (what `axolotl train` execs)
except for the first import.
"""

import os

os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")

import unsloth  # noqa: E402,F401  first, as Unsloth asks

import fire  # noqa: E402
from axolotl.cli.train import do_cli  # noqa: E402

if __name__ == "__main__":
    fire.Fire(do_cli)
