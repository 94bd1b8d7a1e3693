"""Transforms: shapes and dtypes, label-safe resampling and padding, normal flips, sliding-window evaluation."""

import pytest
import torch
from torch.utils.data import default_collate
from torchvision.transforms.v2 import functional as F

from data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageEvalTransform,
    ImageTrainTransform,
    PixelEvalTransform,
    PixelTrainTransform,
    normalize,
    sliding_window_predict,
)
from data.transforms import count_windows, window_starts


def pixel_sample(h: int = 32, w: int = 32, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    seg = torch.randint(0, 40, (h, w), generator=g)
    seg[:3] = 255
    depth = torch.where(seg[None] % 3 == 0, 0.0, 1.0 + seg[None].float() / 10)  # values keyed to labels
    normal = torch.randn(3, h, w, generator=g)
    normal = normal / normal.norm(dim=0, keepdim=True)  # unit vectors, as stored
    normal[:, seg == 255] = 0  # no normal where there is no label
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
    return {"image": image, "seg": seg, "depth": depth, "normal": normal, "index": 7}


def test_pixel_train_shapes_and_dtypes():
    torch.manual_seed(0)
    out = PixelTrainTransform(crop_size=24)(pixel_sample(40, 56))
    assert out["image"].dtype == torch.float32 and out["image"].shape == (3, 24, 24)
    assert out["seg"].dtype == torch.int64 and out["seg"].shape == (24, 24)
    assert out["depth"].dtype == torch.float32 and out["depth"].shape == (1, 24, 24)
    assert out["normal"].dtype == torch.float32 and out["normal"].shape == (3, 24, 24)
    assert out["index"] == 7
    no_normal = {k: v for k, v in pixel_sample().items() if k != "normal"}
    assert set(PixelTrainTransform(crop_size=16)(no_normal)) == {"image", "seg", "depth", "index"}


def test_flip_negates_normal_x_and_mirrors_everything():
    sample = pixel_sample()
    out = PixelTrainTransform(crop_size=32, scale=(1.0, 1.0), flip_p=1.0, jitter=None)(sample)
    torch.testing.assert_close(out["normal"][0], -sample["normal"][0].flip(-1))
    torch.testing.assert_close(out["normal"][1:], sample["normal"][1:].flip(-1))
    assert torch.equal(out["seg"], sample["seg"].flip(-1))
    assert torch.equal(out["depth"], sample["depth"].flip(-1))
    assert torch.allclose(out["image"], normalize(sample["image"].flip(-1)))


@pytest.mark.parametrize("scale", [0.5, 0.75, 1.6, 2.0])
def test_scaling_keeps_depth_metres_and_label_values(scale):
    torch.manual_seed(1)
    sample = pixel_sample(48, 48)
    out = PixelTrainTransform(crop_size=40, scale=(scale, scale), jitter=None)(sample)
    pairs = set(zip(sample["seg"].flatten().tolist(), sample["depth"].flatten().tolist(), strict=True))
    kept = out["seg"] != 255
    out_pairs = set(zip(out["seg"][kept].tolist(), out["depth"][0][kept].tolist(), strict=True))
    assert out_pairs <= pairs  # nearest resampling: no blended labels, depth still in the same metres
    assert set(out["depth"].unique().tolist()) <= set(sample["depth"].unique().tolist())


def test_padding_values():
    torch.manual_seed(2)
    sample = pixel_sample(32, 32)
    out = PixelTrainTransform(crop_size=32, scale=(0.5, 0.5), flip_p=0.0, jitter=None)(sample)
    pad_image = -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)
    for region in (out["seg"][16:], out["seg"][:, 16:]):
        assert region.eq(255).all()
    assert out["depth"][:, 16:].eq(0).all() and out["depth"][:, :, 16:].eq(0).all()
    assert out["normal"][:, 16:].eq(0).all() and out["normal"][:, :, 16:].eq(0).all()
    assert torch.allclose(out["image"][:, 20, 20], pad_image)
    assert out["seg"][:16, :16].ne(255).any()  # the content sits at the top left


def test_pixel_eval_transform_keeps_full_resolution_labels():
    sample = pixel_sample(30, 50)
    out = PixelEvalTransform(crop_size=24)(sample)
    assert out["image"].dtype == torch.float32 and out["image"].shape == (3, 30, 50)
    assert torch.allclose(out["image"], normalize(sample["image"]))
    assert out["seg"] is sample["seg"] and out["depth"] is sample["depth"] and out["index"] == 7
    assert PixelEvalTransform(24).crop_size == 24


def test_window_positions_of_the_documented_protocol():
    assert window_starts(480, 300, 200) == [0, 180]
    assert window_starts(640, 300, 200) == [0, 170, 340]
    assert window_starts(300, 300, 200) == [0] and window_starts(288, 300, 200) == [0]
    assert window_starts(301, 300, 1) == [0, 1]


def identity_model(calls: list):
    def model_fn(windows: torch.Tensor) -> dict[str, torch.Tensor]:
        calls.append(tuple(windows.shape))
        return {"seg": windows.clone(), "depth": windows[:, :1] * 2, "extra": torch.ones_like(windows[:, :2])}

    return model_fn


@pytest.mark.parametrize("size", [(480, 640), (288, 384), (200, 250), (301, 333)])
def test_sliding_window_reconstructs_identity(size):
    calls = []
    image = torch.randint(-50, 50, (2, 3, *size)).float()  # integers: averaging is exact
    out = sliding_window_predict(identity_model(calls), image, crop_size=300, window_batch=1)
    assert torch.equal(out["seg"], image) and torch.equal(out["depth"], 2 * image[:, :1])
    assert out["extra"].shape == (2, 2, *size) and out["extra"].eq(1).all()  # every pixel covered, borders too
    expected = len(window_starts(max(size[0], 300), 300, 200)) * len(window_starts(max(size[1], 300), 300, 200))
    assert len(calls) == expected == count_windows(*size, 300) and set(calls) == {(2, 3, 300, 300)}
    if size == (480, 640):
        assert len(calls) == 6
    # several windows per forward pass: the same numbers, every window of both images passed once
    batched_calls = []
    batched = sliding_window_predict(identity_model(batched_calls), image, crop_size=300, window_batch=4)
    assert all(torch.equal(batched[k], out[k]) for k in out)
    assert [c[0] for c in batched_calls] == [2 * min(4, expected - k) for k in range(0, expected, 4)]


def test_sliding_window_averages_overlaps_and_accepts_single_image():
    counter = iter(range(100))

    def model_fn(windows):  # window k predicts the constant k
        return {"depth": torch.full((windows.shape[0], 1, 300, 300), float(next(counter)))}

    out = sliding_window_predict(model_fn, torch.zeros(3, 480, 640), crop_size=300, window_batch=1)["depth"]
    assert out.shape == (1, 1, 480, 640)
    # windows in order: (y0,x0)=0 (y0,x170)=1 (y0,x340)=2 (y180,x0)=3 (y180,x170)=4 (y180,x340)=5
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 479, 639] == 5
    assert out[0, 0, 200, 200] == pytest.approx((0 + 1 + 3 + 4) / 4)


def test_sliding_window_rejects_low_resolution_outputs():
    with pytest.raises(ValueError, match="upsample outputs to the window size"):
        sliding_window_predict(lambda w: {"seg": w[:, :, ::8, ::8]}, torch.zeros(1, 3, 320, 320), crop_size=300)


def test_image_transforms():
    torch.manual_seed(0)
    sample = {
        "image": torch.randint(0, 256, (3, 256, 300), dtype=torch.uint8),
        "gender": 1,
        "age": 6,
        "path": "a/b.jpg",
    }
    train = ImageTrainTransform()(sample)
    assert train["image"].dtype == torch.float32 and train["image"].shape == (3, 224, 224)
    assert (train["gender"], train["age"], train["path"]) == (1, 6, "a/b.jpg")
    evaluated = ImageEvalTransform()(sample)
    assert evaluated["image"].shape == (3, 224, 224)
    assert torch.allclose(evaluated["image"], normalize(F.center_crop(sample["image"], [224, 224])))
    assert ImageTrainTransform(resize=64, crop_size=48)(sample)["image"].shape == (3, 48, 48)


def test_batches_collate():
    torch.manual_seed(0)
    pixel = default_collate([PixelTrainTransform(crop_size=16)(pixel_sample()) for _ in range(2)])
    assert pixel["image"].shape == (2, 3, 16, 16) and pixel["index"].tolist() == [7, 7]
    image = {"image": torch.zeros(3, 64, 64, dtype=torch.uint8), "gender": 0, "age": 3, "path": "p.jpg"}
    batch = default_collate([ImageEvalTransform(64, 32)(image)] * 3)
    assert batch["age"].dtype == torch.int64 and batch["path"] == ["p.jpg"] * 3
