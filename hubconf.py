"""torch.hub entry points, one per task family (families/): networks from a released-weights folder or URL
(python -m tools.export), or untrained.

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

from families import hub_entries  # noqa: E402

globals().update(hub_entries())  # afanet_pixel, afanet_image, afanet_series
