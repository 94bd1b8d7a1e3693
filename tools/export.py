"""Export a training checkpoint as released weights: DIR/model.safetensors + DIR/config.json.

    python -m tools.export weight/pixel_afa_best.pth released/pixel_afa

The folder is what to publish: tensors only (safetensors, no pickle: loading it runs no code) and a
JSON config with the model config, the preprocessing (input size, mean, std, windows or resize/crop),
the task label names and what the network was trained on (dataset, frame size, units).
``models.from_pretrained(DIR)``, ``predict.py --checkpoint DIR`` and
``torch.hub.load(REPO, 'afanet_pixel', weights=DIR_OR_URL)`` read it. The export is checked by
reading the file back and comparing every tensor with the checkpoint's.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # also runnable as python tools/export.py
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from engine.checkpoint import CheckpointError  # noqa: E402
from families import load_model  # noqa: E402
from models.pretrained import WEIGHTS_NAME, PretrainedError, read_config, save_pretrained  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a checkpoint written by a training script (*_best.pth)")
    p.add_argument("out", metavar="DIR", help="output folder (model.safetensors, config.json)")
    return p


def export(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the released-weights folder of ``checkpoint`` and verify it; returns the folder."""
    if Path(checkpoint).is_dir():
        raise CheckpointError(f"{checkpoint}: a folder; expected a checkpoint file of a training script")
    model, info = load_model(checkpoint)  # strict: the weights must fit the stored model config
    metrics = {
        k: (None if isinstance(v, float) and math.isnan(v) else v)  # JSON has no NaN
        for k, v in (info.get("best_metrics") or {}).items()
    }
    source = {"checkpoint": Path(checkpoint).name, "epoch": info.get("epoch"), "metrics": metrics or None}
    folder = save_pretrained(
        model,
        out,
        {"preprocessing": info["preprocessing"], "labels": info["labels"], "data": info["data"], "source": source},
    )
    read_config(folder)
    loaded, own = load_file(str(folder / WEIGHTS_NAME)), model.state_dict()
    if loaded.keys() != own.keys() or not all(torch.equal(loaded[k], v) for k, v in own.items()):
        raise PretrainedError(f"{folder / WEIGHTS_NAME}: does not read back as the checkpoint's weights")
    return folder


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        folder = export(args.checkpoint, args.out)
    except (CheckpointError, PretrainedError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {folder}/model.safetensors and {folder}/config.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
