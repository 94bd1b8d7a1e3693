"""torch.hub entry points: AFA networks from a released-weights folder or URL (python -m tools.export).

    model = torch.hub.load("OWNER/AFANet", "afanet_pixel", weights="https://host/afanet/pixel_afa")
    model = torch.hub.load("path/to/checkout", "afanet_image", source="local", weights="released/image_afa")
    out = model(images)   # pixel: {'seg': (B, 40, H, W), 'depth': (B, 1, H, W)}; image: {'gender', 'age'} logits
    model = torch.hub.load("path/to/checkout", "afanet_series", source="local", weights="released/series_pau")
    out = model(a, b)     # series: {'pair': (B, 2)} logits, class 0: photo a is preferred

``weights`` is a folder or a URL of a folder holding model.safetensors and config.json (a URL's files are
cached in torch.hub's folder); no weights are published by this project yet. ``weights=None`` builds an
untrained network (``build_model`` options: fusion, input_size, ...). The network takes inputs of its
configured input size (pixel images larger than that: use predict.py or data.sliding_window_predict).
"""

dependencies = ["torch", "torchvision", "safetensors"]

from typing import Any  # noqa: E402

from models import MultiTaskNet, build_model, from_pretrained  # noqa: E402
from models.pretrained import PretrainedError, read_config  # noqa: E402


def _load(kind: str, weights: str | None, map_location: str, options: dict[str, Any]) -> MultiTaskNet:
    if weights is None:
        return build_model(kind, **options).eval()
    if options:
        raise TypeError(f"options {sorted(options)} apply to weights=None only; the released config fixes them")
    found = read_config(weights)["model_config"]["kind"]
    if found != kind:
        raise PretrainedError(f"{weights}: holds a {found} network; use afanet_{found}")
    return from_pretrained(weights, map_location)


def afanet_pixel(weights: str | None = None, map_location: str = "cpu", **options: Any) -> MultiTaskNet:
    """NYUv2 network (DeepLabv3+ branches): semantic segmentation + depth in metres, in eval mode."""
    return _load("pixel", weights, map_location, options)


def afanet_image(weights: str | None = None, map_location: str = "cpu", **options: Any) -> MultiTaskNet:
    """Adience network (ResNet-50 branches): gender + age group of an aligned face, in eval mode."""
    return _load("image", weights, map_location, options)


def afanet_series(weights: str | None = None, map_location: str = "cpu", **options: Any) -> MultiTaskNet:
    """Phototriage network (PAU, or the Siamese baseline, on a shared ResNet-50): which of two photos of
    a series people prefer, ``model(a, b) -> {'pair': (B, 2)}``, in eval mode. Untrained: fusion 'pau'
    unless ``fusion='siamese'``."""
    if weights is None:
        options.setdefault("fusion", "pau")
    return _load("series", weights, map_location, options)
