"""Key names of the original AFANet code, and conversion to and from ours.

The reference keeps both branches in one module tree and tells them apart by a prefix on
each module name (``A_`` = task 1, ``B_`` = task 2), e.g. ``layer4.0.A_conv2.weight``,
``layer4.0.afa_cam.cam.trans1.weight``, ``A_fc.bias``; its pixel nets put the trunks and AFA
layers under ``backbone.`` and have ``A_aspp`` / ``A_decoder`` heads. Ours keeps one module
tree per task: ``trunks.<task>.layer4.0.conv2.weight``, ``fusions.0.cam.self_fc.weight``,
``heads.<task>.fc.bias``.

The mapping is one table of (reference, ours) name templates read in either direction, so
any dict of tensors named either way (weights, buffers, gradients) converts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from torch import Tensor

from .multitask import DEFAULTS, KINDS
from .series import convert_series_keys

# Template fields: {T} branch (A/B vs task name), {i} index, {m} bottleneck module, {p} the rest.
_TRUNK = [
    ("{T}_conv1.{p}", "trunks.{T}.conv1.{p}"),
    ("{T}_bn1.{p}", "trunks.{T}.bn1.{p}"),
    ("layer{i}.{j}.{T}_{m}.{p}", "trunks.{T}.layer{i}.{j}.{m}.{p}"),
]
_AFA = [
    (f"layer4.{{i}}.afa_{mod}.{mod}.{ref}.{{p}}", f"fusions.{{i}}.{mod}.{ours}.{{p}}")
    for mod, first in (("cam", "fc"), ("sam", "conv"))
    for ref, ours in ((first, "reduce" if mod == "cam" else "conv"), ("trans1", "self_fc"), ("trans2", "other_fc"))
]
_IMAGE_HEAD = [("{T}_fc.{p}", "heads.{T}.fc.{p}")]
_PIXEL_HEAD = (
    [(f"{{T}}_aspp.aspp{k + 1}.{ref}.{{p}}", f"heads.{{T}}.aspp.convs.{k}.{idx}.{{p}}")
     for k in range(4) for ref, idx in (("atrous_conv", 0), ("bn", 1))]
    + [("{T}_aspp.global_avg_pool.{i}.{p}", "heads.{T}.aspp.pool.{i}.{p}"),
       ("{T}_aspp.conv1.{p}", "heads.{T}.aspp.project.0.{p}"),
       ("{T}_aspp.bn1.{p}", "heads.{T}.aspp.project.1.{p}"),
       ("{T}_decoder.conv1.{p}", "heads.{T}.decoder.reduce.0.{p}"),
       ("{T}_decoder.bn1.{p}", "heads.{T}.decoder.reduce.1.{p}"),
       ("{T}_decoder.last_conv.{i}.{p}", "heads.{T}.decoder.fuse.{i}.{p}"),
       ("{T}_decoder.my_classify.{p}", "heads.{T}.decoder.classifier.{p}")]
)


def _rules(kind: str) -> list[tuple[str, str]]:
    if kind == "image":
        return _TRUNK + _AFA + _IMAGE_HEAD
    return [("backbone." + ref, ours) for ref, ours in _TRUNK + _AFA] + _PIXEL_HEAD


_FIELD = {"i": r"\d+", "j": r"\d+", "m": r"conv[123]|bn[123]|downsample", "p": r".+"}


def _compile(template: str, branch: str) -> re.Pattern[str]:
    parts = re.split(r"(\{\w\})", template)
    rx = "".join(
        f"(?P<{x[1]}>{branch if x[1] == 'T' else _FIELD[x[1]]})" if re.fullmatch(r"\{\w\}", x) else re.escape(x)
        for x in parts
    )
    return re.compile(rx + "$")


def _convert(state_dict: Mapping[str, Tensor], kind: str, tasks: Sequence[str] | None, to_ours: bool) -> dict:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    tasks = list(tasks or DEFAULTS[kind]["tasks"])
    letters = {"A": tasks[0], "B": tasks[1]}
    names = {v: k for k, v in letters.items()}
    rules = [(src, dst) if to_ours else (dst, src) for src, dst in _rules(kind)]
    branch = "A|B" if to_ours else "|".join(re.escape(t) for t in tasks)
    compiled = [(_compile(src, branch), dst) for src, dst in rules]
    out, unknown = {}, []
    for key, value in state_dict.items():
        for rx, dst in compiled:
            m = rx.match(key)
            if m:
                fields = m.groupdict()
                if "T" in fields:
                    fields["T"] = letters[fields["T"]] if to_ours else names[fields["T"]]
                out[dst.format(**fields)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        side = "the original AFANet" if to_ours else "this project's"
        raise ValueError(f"{len(unknown)} keys are not {kind}-network keys of {side} layout: {', '.join(unknown[:5])}")
    return out


def convert_reference_state_dict(state_dict: Mapping[str, Tensor], kind: str,
                                 tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
    """Rename a state dict (or any dict of tensors) from the original AFANet layout to ours.

    The result loads with ``strict=True`` into ``build_model(kind, fusion=...)`` built with
    the fusion the original was saved with. ``tasks`` names task 1 and task 2 (defaults:
    gender, age / seg, depth). Keys that fit no rule raise a ValueError listing them.
    """
    if kind == "series":  # the third argument is the fusion: 'pau' or 'siamese' (models/series.py)
        return convert_series_keys(state_dict, tasks, to_ours=True)  # type: ignore[arg-type]
    return _convert(state_dict, kind, tasks, to_ours=True)


def to_reference_state_dict(state_dict: Mapping[str, Tensor], kind: str,
                            tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
    """The inverse of :func:`convert_reference_state_dict`: our names to the original's."""
    if kind == "series":  # the third argument is the fusion: 'pau' or 'siamese' (models/series.py)
        return convert_series_keys(state_dict, tasks, to_ours=False)  # type: ignore[arg-type]
    return _convert(state_dict, kind, tasks, to_ours=False)
