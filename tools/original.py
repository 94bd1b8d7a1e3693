"""The original AFANet networks, built from a checkout of zhenshen-mla/AFANet for comparison.

Nothing of the original is committed here: these functions read its files from a folder the
user gives (a git clone, or a folder holding the files), import them by path and build its
networks at any size with random weights, its quirks neutralised at build time without editing
its files. Used by ``tools/parity.py`` (outputs and gradients, number by number) and ``bench.py``
(speed side by side).

Which version is the reference (see the README):
- 'none' and 'afa': the latest commit of the original's default branch (``models/layer_afa.py``,
  ``net_{image,pixel}_{resnet,deeplab,afalayer}.py``);
- 'shared', 'cross_stitch', 'nddr': the authors' baselines, ``models/{image,pixel}_{hard,cross,nddr}.py``
  at commit 4fabc70 (deleted later), read with ``git show`` when the folder is a git clone.
"""

from __future__ import annotations

import contextlib
import copy
import subprocess
import sys
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from models.backbone import RESNET50_DEPTHS, feature_size
from models.multitask import ARCHITECTURES

BASELINE_COMMIT = "4fabc70"
LATEST_FILES = ("layer_afa", "net_image_resnet", "net_image_afalayer", "net_pixel_deeplab", "net_pixel_afalayer")
# (kind, fusion) -> (file name under models/, commit to read it from; None = the checkout as it is)
NETWORK_FILES: dict[tuple[str, str], tuple[str, str | None]] = {
    ("image", "none"): ("net_image_resnet", None),
    ("image", "afa"): ("net_image_afalayer", None),
    ("pixel", "none"): ("net_pixel_deeplab", None),
    ("pixel", "afa"): ("net_pixel_afalayer", None),
    **{
        (kind, fusion): (f"{kind}_{name}", BASELINE_COMMIT)
        for kind in ("image", "pixel")
        for fusion, name in (("shared", "hard"), ("cross_stitch", "cross"), ("nddr", "nddr"))
    },
}
NUM_CLASSES = {"image": (2, 8), "pixel": (40, 1)}


class OriginalCodeError(Exception):
    """The folder does not hold the original code (one line, names what is missing)."""


def _source(root: Path, name: str, commit: str | None) -> tuple[str, str]:
    """(source text, a label for tracebacks) of models/<name>.py in the checkout, or at ``commit``."""
    for d in (root / "models", root):
        f = d / f"{name}.py"
        if commit is None and f.is_file():
            return f.read_text(), str(f)
    if (root / ".git").exists() or (root / "HEAD").is_file():
        rev = f"{commit or 'HEAD'}:models/{name}.py"
        res = subprocess.run(["git", "-C", str(root), "show", rev], capture_output=True, text=True)
        if res.returncode == 0:
            return res.stdout, f"{root}@{rev}"
    for d in (root / "models", root):  # a plain folder holding the older files too
        f = d / f"{name}.py"
        if f.is_file():
            return f.read_text(), str(f)
    where = f"commit {commit} of " if commit else ""
    raise OriginalCodeError(
        f"{root}: expected a checkout of zhenshen-mla/AFANet with models/{name}.py "
        f"({where}the original code; a git clone has every version)"
    )


def import_original(root: str | Path, name: str, commit: str | None = None) -> types.ModuleType:
    """Import one original file by path. The latest files import each other by bare module name
    (``from layer_afa import ...``), so they are registered under those names; the folder is not
    put on sys.path, so nothing there can shadow our packages. ``numpy`` is provided as ``np``
    (``pixel_nddr.py`` at 4fabc70 uses it without importing it)."""
    root = Path(root).expanduser()
    if commit is None and name != "layer_afa" and name.startswith("net_"):
        import_original(root, "layer_afa")
    key = name if commit is None else f"{name}@{commit}"
    cached = sys.modules.get(key)
    if cached is not None and getattr(cached, "__original_root__", None) == root:
        return cached
    text, label = _source(root, name, commit)
    mod = types.ModuleType(name)
    mod.__dict__.update(np=np, __original_root__=root, __file__=label)
    sys.modules[key] = mod
    exec(compile(text, label, "exec"), mod.__dict__)  # noqa: S102 - the user's own checkout of the original
    return mod


@contextlib.contextmanager
def _patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def _unshare_downsample(net: nn.Module) -> None:
    """4fabc70's branched nets pass one downsample module to both branches; ours (and the later
    original files) give each branch its own: give B a copy."""
    for m in net.modules():
        a, b = getattr(m, "A_downsample", None), getattr(m, "B_downsample", None)
        if a is not None and a is b:
            m.B_downsample = copy.deepcopy(a)


def _image_net(mod: types.ModuleType, depths: Sequence[int], stack: contextlib.ExitStack) -> nn.Module:
    """``ResNet(Bottleneck, depths)`` directly: ``make_network`` would download ImageNet weights."""
    n1, n2 = NUM_CLASSES["image"]
    return mod.ResNet(mod.Bottleneck, list(depths), num_classes1=n1, num_classes2=n2)


def _pixel_net(mod: types.ModuleType, depths: Sequence[int], stack: contextlib.ExitStack) -> nn.Module:
    """``DeepLab`` with its backbone built without the ImageNet download (patched for the build)."""
    if depths[3] != 3:
        raise ValueError(f"the original pixel nets' stage 4 has 3 blocks, got depths {list(depths)}")
    resnet = mod.ResNet
    stack.enter_context(_patched(resnet, "_load_pretrained_model", lambda self: None))
    stack.enter_context(
        _patched(
            mod,
            "ResNet_backbone",
            lambda os_, bn, pretrained=True: resnet(mod.Bottleneck, list(depths), bn, os_, pretrained=False),
        )
    )
    n1, n2 = NUM_CLASSES["pixel"]
    return mod.DeepLab(output_stride=16, num_classes1=n1, num_classes2=n2)


_BUILDERS = {"image": _image_net, "pixel": _pixel_net}


def build_original(
    root: str | Path,
    kind: str,
    fusion: str,
    size: int,
    depths: Sequence[int] = RESNET50_DEPTHS,
    grad_mode: str = "protect",
) -> nn.Module:
    """The original network for ``build_model(kind, fusion, grad_mode, input_size=size, depths=depths)``.

    - image nets: ``ResNet(Bottleneck, depths)`` directly (``make_network`` would download ImageNet
      weights through torchvision's deprecated ``pretrained=True``); its ``AvgPool2d(7)``, a global
      average at 224 px, becomes a global average at any size;
    - pixel nets: ``ResNet_backbone`` builds ``ResNet(Bottleneck, depths, ..., pretrained=False)``
      (its multi-grid stage 4 always has 3 blocks: depths[3] must be 3);
    - AFA: SAM is built for the map at ``size`` (the original fixes 7x7 / 19x19); grad_mode 'joint'
      uses the original's plain ``AFA_layer_cam`` / ``AFA_layer_sam``, 'protect' its ``_data`` layers;
    - 4fabc70 baselines: the downsample shared by both branches is given to each branch.
    """
    if (kind, fusion) not in NETWORK_FILES:
        raise ValueError(f"no original network for kind {kind!r}, fusion {fusion!r}")
    if grad_mode not in ("joint", "protect"):
        raise ValueError(f"the original code has grad modes joint and protect, not {grad_mode!r}")
    name, commit = NETWORK_FILES[(kind, fusion)]
    mod = import_original(root, name, commit)
    with contextlib.ExitStack() as stack:
        if fusion == "afa":
            side = feature_size(size, ARCHITECTURES[kind].output_strides[0])
            lib = sys.modules["layer_afa"]
            cam, sam = (
                (lib.AFA_layer_cam, lib.AFA_layer_sam)
                if grad_mode == "joint"
                else (lib.AFA_layer_cam_data, lib.AFA_layer_sam_data)
            )
            stack.enter_context(_patched(mod, "AFA_layer_cam_data", cam))
            stack.enter_context(_patched(mod, "AFA_layer_sam_data", lambda *a, **k: sam(h=side, w=side)))
        net = _BUILDERS[kind](mod, depths, stack)
    if commit is not None:
        _unshare_downsample(net)
    for attr in ("avgpool", "A_avgpool", "B_avgpool"):  # AvgPool2d(7): global at 224 px only
        if isinstance(getattr(net, attr, None), nn.AvgPool2d):
            setattr(net, attr, nn.AdaptiveAvgPool2d(1))
    return net
