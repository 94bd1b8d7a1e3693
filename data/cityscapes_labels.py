"""The official Cityscapes label table and the 19- and 7-class training maps derived from it (torch-free).

Source of the facts (names, label ids, trainIds, categories, categoryIds, hasInstances, ignoreInEval, colours): the
``labels`` list of the cityscapesscripts package, ``cityscapesscripts/helpers/labels.py`` in mcordts/cityscapesScripts
(master, commit 0bcc4a7, unchanged since the package was created; MIT licence). A pull-request merge of that repository
(4b83263, 2018) adds lane-line labels 34..45 with trainId 19; those are not part of the released table and are not
copied here.

Label ids are the values of the ``*_gtFine_labelIds.png`` files (0..33; 'license plate' has id -1 and never occurs in
them). Training maps (``IGNORE_INDEX`` = ignore):

- 19 classes: trainIds 0..18 = label ids 7 8 11 12 13 17 19 20 21 22 23 24 25 26 27 28 31 32 33 in that order;
  every other id (trainId 255) is ignored.
- 7 classes: the non-void categories flat, construction, object, nature, sky, human, vehicle (categoryId 1..7) ->
  0..6; void (categoryId 0, label ids 0..6) is ignored. Unlike the 19-class map this keeps ids such as parking (9),
  guard rail (14) or caravan (29) in their category.
"""

from typing import NamedTuple

import numpy as np

from data.labels import IGNORE_INDEX


class CityscapesLabel(NamedTuple):
    name: str
    id: int  # value in the labelIds PNGs
    train_id: int  # 0..18, or 255 / -1 = not trained on
    category: str
    category_id: int  # 0 = void, 1..7
    has_instances: bool
    ignore_in_eval: bool
    color: tuple[int, int, int]


_L = CityscapesLabel
# fmt: off
LABELS: tuple[CityscapesLabel, ...] = (
    #  name                   id trainId category        catId instances ignore  color
    _L("unlabeled",            0, 255, "void",          0, False, True,  (0, 0, 0)),
    _L("ego vehicle",          1, 255, "void",          0, False, True,  (0, 0, 0)),
    _L("rectification border", 2, 255, "void",          0, False, True,  (0, 0, 0)),
    _L("out of roi",           3, 255, "void",          0, False, True,  (0, 0, 0)),
    _L("static",               4, 255, "void",          0, False, True,  (0, 0, 0)),
    _L("dynamic",              5, 255, "void",          0, False, True,  (111, 74, 0)),
    _L("ground",               6, 255, "void",          0, False, True,  (81, 0, 81)),
    _L("road",                 7,   0, "flat",          1, False, False, (128, 64, 128)),
    _L("sidewalk",             8,   1, "flat",          1, False, False, (244, 35, 232)),
    _L("parking",              9, 255, "flat",          1, False, True,  (250, 170, 160)),
    _L("rail track",          10, 255, "flat",          1, False, True,  (230, 150, 140)),
    _L("building",            11,   2, "construction",  2, False, False, (70, 70, 70)),
    _L("wall",                12,   3, "construction",  2, False, False, (102, 102, 156)),
    _L("fence",               13,   4, "construction",  2, False, False, (190, 153, 153)),
    _L("guard rail",          14, 255, "construction",  2, False, True,  (180, 165, 180)),
    _L("bridge",              15, 255, "construction",  2, False, True,  (150, 100, 100)),
    _L("tunnel",              16, 255, "construction",  2, False, True,  (150, 120, 90)),
    _L("pole",                17,   5, "object",        3, False, False, (153, 153, 153)),
    _L("polegroup",           18, 255, "object",        3, False, True,  (153, 153, 153)),
    _L("traffic light",       19,   6, "object",        3, False, False, (250, 170, 30)),
    _L("traffic sign",        20,   7, "object",        3, False, False, (220, 220, 0)),
    _L("vegetation",          21,   8, "nature",        4, False, False, (107, 142, 35)),
    _L("terrain",             22,   9, "nature",        4, False, False, (152, 251, 152)),
    _L("sky",                 23,  10, "sky",           5, False, False, (70, 130, 180)),
    _L("person",              24,  11, "human",         6, True,  False, (220, 20, 60)),
    _L("rider",               25,  12, "human",         6, True,  False, (255, 0, 0)),
    _L("car",                 26,  13, "vehicle",       7, True,  False, (0, 0, 142)),
    _L("truck",               27,  14, "vehicle",       7, True,  False, (0, 0, 70)),
    _L("bus",                 28,  15, "vehicle",       7, True,  False, (0, 60, 100)),
    _L("caravan",             29, 255, "vehicle",       7, True,  True,  (0, 0, 90)),
    _L("trailer",             30, 255, "vehicle",       7, True,  True,  (0, 0, 110)),
    _L("train",               31,  16, "vehicle",       7, True,  False, (0, 80, 100)),
    _L("motorcycle",          32,  17, "vehicle",       7, True,  False, (0, 0, 230)),
    _L("bicycle",             33,  18, "vehicle",       7, True,  False, (119, 11, 32)),
    _L("license plate",       -1,  -1, "vehicle",       7, False, True,  (0, 0, 142)),
)
# fmt: on
del _L

LABEL_BY_NAME: dict[str, CityscapesLabel] = {label.name: label for label in LABELS}
LABEL_BY_ID: dict[int, CityscapesLabel] = {label.id: label for label in LABELS if label.id >= 0}

CLASS_NAMES_19: tuple[str, ...] = tuple(
    label.name for label in sorted((lb for lb in LABELS if 0 <= lb.train_id < 255), key=lambda lb: lb.train_id)
)
CATEGORY_NAMES_7: tuple[str, ...] = tuple(
    dict(sorted({lb.category_id: lb.category for lb in LABELS if lb.category_id > 0}.items())).values()
)


def label_lut(seg_classes: int) -> np.ndarray:
    """(256,) uint8 lookup table from labelId 0..255 to the training class 0..C-1 (``IGNORE_INDEX`` elsewhere) for
    ``seg_classes`` 19 (trainIds) or 7 (non-void categories)."""
    if seg_classes not in (19, 7):
        raise ValueError(f"seg_classes must be 19 or 7, got {seg_classes!r}")
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    for label in LABELS:
        if label.id < 0:
            continue
        if seg_classes == 19 and 0 <= label.train_id < 255:
            lut[label.id] = label.train_id
        elif seg_classes == 7 and label.category_id > 0:
            lut[label.id] = label.category_id - 1
    return lut


assert len(CLASS_NAMES_19) == 19 and len(CATEGORY_NAMES_7) == 7
