"""Key names of the original AFANet code, and conversion to and from ours.

The reference keeps both branches in one module tree and tells them apart by a prefix on
each module name (``A_`` = task 1, ``B_`` = task 2), e.g. ``layer4.0.A_conv2.weight``,
``layer4.0.afa_cam.cam.trans1.weight``, ``A_fc.bias``; its pixel nets put the trunks and fusion
units under ``backbone.`` and have ``A_aspp`` / ``A_decoder`` heads. Its baselines (commit
4fabc70) name their units ``Cross_k`` / ``NDDR_k`` (k = 1..4, after layer k) and hard sharing uses
torchvision's plain names for its one trunk. Ours keeps one module tree per branch and fusions
keyed by point: ``trunks.<task>.layer4.0.conv2.weight``, ``fusions.layer4_0.cam.self_fc.weight``,
``fusions.layer2.same.<task>``, ``trunks.shared.conv1.weight``, ``heads.<task>.fc.bias``.

The mapping is one table of (reference, ours) name templates read in either direction, so
any dict of tensors named either way (weights, buffers, gradients) converts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from torch import Tensor

from .multitask import ARCHITECTURES, KINDS
from .series import convert_series_keys

# Template fields: {T} branch (A/B vs task name), {N} branch number (1/2 vs task name), {i} and
# {j} indices, {m} bottleneck module, {p} the rest of the name.
_TRUNK = [
    ("{T}_conv1.{p}", "trunks.{T}.conv1.{p}"),
    ("{T}_bn1.{p}", "trunks.{T}.bn1.{p}"),
    ("layer{i}.{j}.{T}_{m}.{p}", "trunks.{T}.layer{i}.{j}.{m}.{p}"),
]
# Hard sharing: one trunk under torchvision's own names.
_SHARED_TRUNK = [
    ("conv1.{p}", "trunks.shared.conv1.{p}"),
    ("bn1.{p}", "trunks.shared.bn1.{p}"),
    ("layer{i}.{j}.{m}.{p}", "trunks.shared.layer{i}.{j}.{m}.{p}"),
]
_FUSION = {
    "none": [],
    "shared": [],
    # AFA layers inside the stage-4 blocks of the original (trans1 = self logits, trans2 = other).
    "afa": [
        (f"layer4.{{i}}.afa_{mod}.{mod}.{ref}.{{p}}", f"fusions.layer4_{{i}}.{mod}.{ours}.{{p}}")
        for mod, first in (("cam", "fc"), ("sam", "conv"))
        for ref, ours in ((first, "reduce" if mod == "cam" else "conv"), ("trans1", "self_fc"), ("trans2", "other_fc"))
    ],
    # Units after layer1..layer4 of the original authors' baselines (AFANet commit 4fabc70).
    "cross_stitch": [
        ("Cross_{i}.{T}_weight_same", "fusions.layer{i}.same.{T}"),
        ("Cross_{i}.{T}_weight_diff", "fusions.layer{i}.other.{T}"),
    ],
    "nddr": [
        ("NDDR_{i}.nddr_{N}.weight", "fusions.layer{i}.conv.{N}.weight"),
        ("NDDR_{i}.bn_{N}.{p}", "fusions.layer{i}.bn.{N}.{p}"),
    ],
}
_IMAGE_HEAD = [("{T}_fc.{p}", "heads.{T}.fc.{p}")]
# torchvision's ASPP: convs.0-3 the 1x1 and dilated branches, convs.4 the pooling branch, project.
_PIXEL_HEAD = [
    (f"{{T}}_aspp.aspp{k + 1}.{ref}.{{p}}", f"heads.{{T}}.aspp.convs.{k}.{idx}.{{p}}")
    for k in range(4)
    for ref, idx in (("atrous_conv", 0), ("bn", 1))
] + [
    ("{T}_aspp.global_avg_pool.{i}.{p}", "heads.{T}.aspp.convs.4.{i}.{p}"),
    ("{T}_aspp.conv1.{p}", "heads.{T}.aspp.project.0.{p}"),
    ("{T}_aspp.bn1.{p}", "heads.{T}.aspp.project.1.{p}"),
    ("{T}_decoder.conv1.{p}", "heads.{T}.decoder.reduce.0.{p}"),
    ("{T}_decoder.bn1.{p}", "heads.{T}.decoder.reduce.1.{p}"),
    ("{T}_decoder.last_conv.{i}.{p}", "heads.{T}.decoder.fuse.{i}.{p}"),
    ("{T}_decoder.my_classify.{p}", "heads.{T}.decoder.classifier.{p}"),
]


# kind -> (prefix of the original's trunk and fusion keys, head templates): pixel nets keep the trunk
# and the fusion units under 'backbone.', image nets at the top level.
_LAYOUT = {"image": ("", _IMAGE_HEAD), "pixel": ("backbone.", _PIXEL_HEAD)}


def _rules(kind: str, fusion: str) -> list[tuple[str, str]]:
    """(reference, ours) templates of one network. Pixel nets keep trunk and fusions under 'backbone.'."""
    if fusion not in _FUSION:
        raise ValueError(f"fusion must be one of {tuple(_FUSION)}, got {fusion!r}")
    body = (_SHARED_TRUNK if fusion == "shared" else _TRUNK) + _FUSION[fusion]
    prefix, head = _LAYOUT[kind]
    return [(prefix + ref, ours) for ref, ours in body] + head


# kinds whose original code is another repository, with its own converter(state_dict, fusion, to_ours)
_OTHER_CODE = {"series": convert_series_keys}  # Series-Photo-Selection (models/series.py)
_FIELD = {"i": r"\d+", "j": r"\d+", "m": r"conv[123]|bn[123]|downsample", "p": r".+"}
_BRANCH_FIELDS = {"T": ("A", "B"), "N": ("1", "2")}  # how the original names task 1 and task 2


def _compile(template: str, branch: dict[str, str]) -> re.Pattern[str]:
    parts = re.split(r"(\{\w\})", template)
    rx = "".join(
        f"(?P<{x[1]}>{branch[x[1]] if x[1] in branch else _FIELD[x[1]]})"
        if re.fullmatch(r"\{\w\}", x)
        else re.escape(x)
        for x in parts
    )
    return re.compile(rx + "$")


def _convert(
    state_dict: Mapping[str, Tensor], kind: str, fusion: str | None, tasks: Sequence[str] | None, to_ours: bool
) -> dict:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    fusion = fusion or "afa"
    tasks = list(tasks or ARCHITECTURES[kind].tasks)
    # per branch field: the original's spelling -> task name (to_ours), or the reverse
    names = {f: dict(zip(spell, tasks)) if to_ours else dict(zip(tasks, spell)) for f, spell in _BRANCH_FIELDS.items()}
    rules = [(src, dst) if to_ours else (dst, src) for src, dst in _rules(kind, fusion)]
    branch = {f: "|".join(re.escape(k) for k in m) for f, m in names.items()}
    compiled = [(_compile(src, branch), dst) for src, dst in rules]
    out, unknown = {}, []
    for key, value in state_dict.items():
        for rx, dst in compiled:
            m = rx.match(key)
            if m:
                fields = {f: names[f][v] if f in names else v for f, v in m.groupdict().items()}
                out[dst.format(**fields)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        side = "the original AFANet" if to_ours else "this project's"
        raise ValueError(
            f"{len(unknown)} keys are not keys of {side} {kind} {fusion!r} network: {', '.join(unknown[:5])}"
        )
    return out


def convert_reference_state_dict(
    state_dict: Mapping[str, Tensor], kind: str, fusion: str | None = None, tasks: Sequence[str] | None = None
) -> dict[str, Tensor]:
    """Rename a state dict (or any dict of tensors) from the original AFANet layout to ours.

    ``fusion`` names the original network: 'none' / 'afa' (``net_*_resnet``/``net_*_deeplab`` and
    ``net_*_afalayer`` at the original's latest commit; None means either), 'shared',
    'cross_stitch', 'nddr' (``models/{image,pixel}_{hard,cross,nddr}.py`` at commit 4fabc70). The
    result loads with ``strict=True`` into ``build_model(kind, fusion)`` at the default fusion
    points. ``tasks`` names task 1 and task 2 (defaults: gender, age / seg, depth). Keys that fit
    no rule raise a ValueError listing them.
    """
    if kind in _OTHER_CODE:  # series: the third argument is the fusion, 'pau' or 'siamese'
        return _OTHER_CODE[kind](state_dict, fusion or "", to_ours=True)
    return _convert(state_dict, kind, fusion, tasks, to_ours=True)


def to_reference_state_dict(
    state_dict: Mapping[str, Tensor], kind: str, fusion: str | None = None, tasks: Sequence[str] | None = None
) -> dict[str, Tensor]:
    """The inverse of :func:`convert_reference_state_dict`: our names to the original's."""
    if kind in _OTHER_CODE:
        return _OTHER_CODE[kind](state_dict, fusion or "", to_ours=False)
    return _convert(state_dict, kind, fusion, tasks, to_ours=False)
