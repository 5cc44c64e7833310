"""Benchmark-only probe (issue 8): lift the plugin's config-time refusal of `qwenvl.loader: unsloth`
in a multi-process launch, to find out whether Unsloth's vision path trains under DDP at all.

The suite puts this folder first on PYTHONPATH for jobs with the `force` option, so every DDP
worker imports it at start-up. Nothing else changes: the plugin still gives each rank its own GPU
(`device_map={"": LOCAL_RANK}`) and Axolotl/accelerate still wrap the model in DDP.
"""

import os

if int(os.environ.get("WORLD_SIZE") or 1) > 1:
    from axolotl_qwenvl_plugin import loading

    _check = loading.check_loader_supported

    def check_loader_supported(settings_loader, **kwargs):
        kwargs["processes"] = 1  # as if one process: the refusal is what this probe tests
        return _check(settings_loader, **kwargs)

    loading.check_loader_supported = check_loader_supported
    print(f"[unsloth-ddp probe] rank {os.environ.get('RANK')}: lifted the unsloth + DDP refusal", flush=True)
