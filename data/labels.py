"""Label conventions shared by every dataset, transform, loss, metric and picture of the project.

Segmentation maps are int64 class ids 0..C-1 with ``IGNORE_INDEX`` where a pixel has no label
(NYUv2's raw label 0, MTAN's -1, Cityscapes' void and ignored ids); pixels with that value are
padded in, left out of the losses and metrics, and drawn black.
"""

IGNORE_INDEX = 255
