"""Print how the training loss moved, from the trainer state Axolotl saved in OUTPUT_DIR.

    python scripts/loss_summary.py outputs/qwenvl-tiny
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(output_dir: str) -> int:
    states = sorted(Path(output_dir).glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not states:
        print(f"no checkpoint with trainer_state.json under {output_dir}", file=sys.stderr)
        return 1
    history = json.loads(states[-1].read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    window = max(1, min(5, len(losses) // 4))
    first = sum(losses[:window]) / window
    last = sum(losses[-window:]) / window
    print(f"loss over {len(losses)} steps: first {window} steps {first:.3f} -> last {window} steps {last:.3f} "
          f"({'falling' if last < first else 'NOT falling'})")
    return 0 if last < first else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "outputs/qwenvl-tiny"))
