"""predict.py on users' files, the released-weights format (tools.export, from_pretrained) and hubconf."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tiny_trunk
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import eval as eval_script
import predict
from data import AGE_GROUPS, NYUv2, normalize
from data.phototriage import fix_scale_crop
from data.prepare_nyuv2 import prepare_nyuv2
from data.synthetic import write_nyuv2
from engine.checkpoint import save_checkpoint
from engine.inference import read_image
from families import ImageFamily, PixelFamily, load_model
from models import ModelConfig, build_model, from_pretrained
from models.pretrained import CONFIG_NAME, WEIGHTS_NAME, PretrainedError
from tools.export import export
from tools.export import main as export_main

REPO = Path(__file__).resolve().parents[1]
SIZE = 64  # network input size: small windows keep every forward pass cheap
TINY = tiny_trunk.MODEL


def save_tiny(kind: str, path: Path, **options) -> Path:
    torch.manual_seed(0)
    model = build_model(kind, "afa", input_size=SIZE, **TINY, **options)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that eval-mode outputs vary with the input
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    save_checkpoint(
        {
            "model": model.state_dict(),
            "model_config": model.config.to_dict(),
            "kind": kind,
            "args": {"crop_size": SIZE},
            "epoch": 1,
            "best_metrics": {"seg/miou": float("nan")},
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def pixel_ckpt(tmp_path_factory):
    return save_tiny("pixel", tmp_path_factory.mktemp("ck") / "pixel.pth")


@pytest.fixture(scope="module")
def image_ckpt(tmp_path_factory):
    return save_tiny("image", tmp_path_factory.mktemp("ck") / "image.pth")


def run(*argv: str) -> int:
    return predict.main(predict.get_args_parser().parse_args([*argv, "--device", "cpu"]))


def write_png(path: Path, rgb: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(rgb, mode=mode).save(path)
    return path


def test_test_frame_as_png_gives_exactly_eval_save_predictions(pixel_ckpt, tmp_path):
    write_nyuv2(tmp_path / "raw", n=4, frame_size=(70, 90), train_fraction=0.5)  # 2 test frames
    nyu = prepare_nyuv2(
        tmp_path / "raw" / "nyu_depth_v2_labeled.mat", tmp_path / "raw" / "splits.mat", tmp_path / "nyu", progress=False
    )
    saved = tmp_path / "eval"
    assert (
        eval_script.main(
            eval_script.get_args_parser().parse_args(
                [
                    "--checkpoint",
                    str(pixel_ckpt),
                    "--data-root",
                    str(nyu),
                    "--save-predictions",
                    str(saved),
                    "--workers",
                    "0",
                    "--device",
                    "cpu",
                    "--batch-size",
                    "2",
                ]
            )
        )
        == 0
    )
    frames = tmp_path / "frames"
    frames.mkdir()
    test = NYUv2(nyu, "test")
    for sample in test:
        write_png(frames / f"{sample['index']}.png", sample["image"].permute(1, 2, 0).numpy())
    assert run("--checkpoint", str(pixel_ckpt), "--out", str(tmp_path / "pred"), str(frames)) == 0
    for index in test.indices:
        ours, theirs = np.load(tmp_path / "pred" / f"{index}.npz"), np.load(saved / f"{index}.npz")
        for key in ("seg", "depth"):  # bitwise: the same windows, the same numbers
            assert ours[key].dtype == theirs[key].dtype and np.array_equal(ours[key], theirs[key]), (index, key)
    assert ours["seg"].shape == (70, 90) and len(np.unique(ours["seg"])) > 1


def test_odd_sizes_and_modes_give_outputs_at_their_own_size(pixel_ckpt, tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    src.mkdir()
    write_png(src / "odd.png", rng.integers(0, 256, (97, 131, 3), dtype=np.uint8))  # 2 x 3 windows
    write_png(src / "gray.png", rng.integers(0, 256, (29, 37), dtype=np.uint8), "L")
    rgba = rng.integers(0, 256, (23, 45, 4), dtype=np.uint8)
    write_png(src / "rgba.png", rgba, "RGBA")
    Image.fromarray(rng.integers(0, 65536, (41, 50), dtype=np.uint16)).save(src / "wide.png")  # 16-bit 'I;16'
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(src / "p.jpg", exif=rotated_exif())
    out = tmp_path / "out"
    assert run("--checkpoint", str(pixel_ckpt), "--out", str(out), "--overlay", str(src)) == 0
    shapes = {"odd": (97, 131), "gray": (29, 37), "rgba": (23, 45), "wide": (41, 50), "p": (30, 20)}
    for name, shape in shapes.items():
        pred = np.load(out / f"{name}.npz")
        assert pred["seg"].shape == pred["depth"].shape == shape, name
        assert pred["seg"].dtype == np.int64 and pred["depth"].dtype == np.float32
        seg_png = Image.open(out / f"{name}_seg.png")
        assert seg_png.mode == "P" and np.array_equal(np.asarray(seg_png), pred["seg"])  # pixel value = class id
        depth_png = Image.open(out / f"{name}_depth.png")
        assert depth_png.size == shape[::-1] and float(depth_png.text["depth_max_m"]) == pytest.approx(
            max(pred["depth"].max(), 1e-3), rel=1e-5
        )
        assert Image.open(out / f"{name}_overlay.png").size == shape[::-1]
    assert len(json.loads((out / "labels.json").read_text())["seg"]) == 40


def test_three_tasks_write_normals_as_unit_vectors_and_an_rgb_png(tmp_path):
    tasks = {"seg": 13, "depth": 1, "normal": 3}
    ckpt = save_tiny("pixel", tmp_path / "three.pth", tasks=tasks, unit_tasks=["normal"])
    src = tmp_path / "in"
    src.mkdir()
    write_png(src / "room.png", np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    assert run("--checkpoint", str(ckpt), "--out", str(tmp_path / "out"), str(src)) == 0
    pred = np.load(tmp_path / "out" / "room.npz")
    assert pred["normal"].shape == (3, 50, 70) and pred["seg"].shape == pred["depth"].shape == (50, 70)
    np.testing.assert_allclose(np.linalg.norm(pred["normal"], axis=0), 1.0, rtol=1e-5)
    png = Image.open(tmp_path / "out" / "room_normal.png")
    assert png.mode == "RGB" and png.size == (70, 50) and "(n + 1) / 2" in png.text["normals"]
    expected = np.rint(np.clip((pred["normal"].transpose(1, 2, 0) + 1) / 2, 0, 1) * 255)
    assert np.array_equal(np.asarray(png), expected.astype(np.uint8))  # RGB = (n + 1) / 2


def rotated_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored image is shown rotated 90 degrees clockwise
    return exif


def test_image_modes_are_read_as_documented(tmp_path):
    wide = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "w.png")
    assert read_image(tmp_path / "w.png")[:, 0].tolist() == [[0, 1, 255, 128]] * 3  # round(v * 255 / 65535)
    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0]]], dtype=np.uint8)
    write_png(tmp_path / "a.png", rgba, "RGBA")
    assert read_image(tmp_path / "a.png")[:, 0].T.tolist() == [[10, 20, 30], [255, 255, 255]]  # on white
    write_png(tmp_path / "g.png", np.array([[7, 9]], dtype=np.uint8), "L")
    assert read_image(tmp_path / "g.png")[:, 0].T.tolist() == [[7, 7, 7], [9, 9, 9]]
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "r.jpg", exif=rotated_exif())
    assert read_image(tmp_path / "r.jpg").shape == (3, 30, 20)


def test_unreadable_files_are_named_and_skipped_nothing_readable_is_exit_2(image_ckpt, tmp_path, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in ("a.jpg", "sub/b.png"):
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(src / name)
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (src / "notes.txt").write_text("not an image: not taken from a folder")
    out = tmp_path / "out"
    assert (
        run(
            "--checkpoint",
            str(image_ckpt),
            "--out",
            str(out),
            "--batch-size",
            "2",
            str(src),
            str(tmp_path / "missing.png"),
        )
        == 0
    )
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and "broken.jpg" in warnings[0] and "missing.png" in warnings[1]
    assert "2 unreadable file(s) skipped" in captured.out
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["path"]).name for r in rows] == ["a.jpg", "b.png"]
    assert list(rows[0]) == ["path", "gender_pred", "gender_prob", "age_pred", "age_prob"]
    for r in rows:
        assert r["gender_pred"] in ("m", "f") and r["age_pred"] in AGE_GROUPS
        assert 0.5 <= float(r["gender_prob"]) <= 1 and 1 / 8 <= float(r["age_prob"]) <= 1

    assert run("--checkpoint", str(image_ckpt), "--out", str(tmp_path / "none"), str(src / "broken.jpg")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: none of the 1 input file(s)")
    assert not (tmp_path / "none" / "predictions.csv").exists()


def test_export_then_from_pretrained_gives_the_checkpoints_outputs(pixel_ckpt, tmp_path):
    folder = tmp_path / "released"
    assert export_main([str(pixel_ckpt), str(folder)]) == 0
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["model_config"]["input_size"] == SIZE and config["preprocessing"]["input_size"] == SIZE
    assert config["preprocessing"]["mean"] == [0.485, 0.456, 0.406] and len(config["labels"]["seg"]) == 40
    assert config["source"]["metrics"] == {"seg/miou": None}
    assert (folder / WEIGHTS_NAME).read_bytes()[8:9] == b"{"  # a safetensors header, not a pickle

    released = from_pretrained(folder)
    assert not released.training
    model, _ = load_model(pixel_ckpt)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        a, b = model.eval()(x), released(x)
    assert all(torch.equal(a[k], b[k]) for k in a)

    # predict.py reads the folder and writes what it writes for the checkpoint
    write_png(tmp_path / "x.png", np.random.default_rng(2).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    assert run("--checkpoint", str(pixel_ckpt), "--out", str(tmp_path / "p1"), str(tmp_path / "x.png")) == 0
    assert run("--checkpoint", str(folder), "--out", str(tmp_path / "p2"), str(tmp_path / "x.png")) == 0
    p1, p2 = np.load(tmp_path / "p1" / "x.npz"), np.load(tmp_path / "p2" / "x.npz")
    assert np.array_equal(p1["seg"], p2["seg"]) and np.array_equal(p1["depth"], p2["depth"])

    # torch.hub from a local checkout, the weights from a URL (file://: no network; cached in the hub folder)
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        fetched = torch.hub.load(str(REPO), "afanet_pixel", source="local", weights=folder.as_uri())
    finally:
        torch.hub.set_dir(old)
    assert list((tmp_path / "hub" / "afanet").glob(f"*/{WEIGHTS_NAME}"))
    with torch.no_grad():
        assert all(torch.equal(fetched(x)[k], a[k]) for k in a)
    with pytest.raises(PretrainedError, match="use afanet_pixel"):
        torch.hub.load(str(REPO), "afanet_image", source="local", weights=str(folder))

    # strict: a missing tensor or a foreign one is an error naming the file and the keys
    tensors = load_file(str(folder / WEIGHTS_NAME))
    missing = next(k for k in tensors if k.endswith(".weight"))  # (BatchNorm fills in num_batches_tracked)
    save_file(
        {**{k: v for k, v in tensors.items() if k != missing}, "extra.weight": torch.zeros(1)},
        str(folder / WEIGHTS_NAME),
    )
    with pytest.raises(PretrainedError, match=f"does not fit.*{missing}.*extra.weight"):
        from_pretrained(folder)


def test_labels_and_preprocessing_of_the_config():
    image = ModelConfig(kind="image", input_size=SIZE).to_dict()  # no network needed
    assert ImageFamily.labels(image, {}) == {"gender": ["m", "f"], "age": list(AGE_GROUPS)}
    assert ImageFamily.preprocessing(image, {})["resize_shorter_side"] == round(SIZE * 256 / 224)
    assert PixelFamily.labels({"kind": "pixel", "tasks": {"seg": 13, "depth": 1}}, {})["seg"][0] == "bed"
    assert PixelFamily.labels({"kind": "pixel", "tasks": {"seg": 3, "depth": 1}}, {}) == {
        "seg": ["class_0", "class_1", "class_2"]
    }
    # the class names a checkpoint recorded win over the tables
    recorded = {"labels": {"seg": ["a", "b", "c"]}}
    assert PixelFamily.labels({"kind": "pixel", "tasks": {"seg": 3, "depth": 1}}, recorded) == {"seg": ["a", "b", "c"]}


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_files_with_pickled_code_are_never_loaded(pixel_ckpt, tmp_path, capsys):
    marker = tmp_path / "code_ran"
    write_png(tmp_path / "x.png", np.zeros((8, 8, 3), np.uint8))
    evil = tmp_path / "evil.pth"
    torch.save({"model": {}, "model_config": {}, "x": _Payload(str(marker))}, evil)
    assert run("--checkpoint", str(evil), "--out", str(tmp_path / "o"), str(tmp_path / "x.png")) == 2
    err = capsys.readouterr().err.strip()
    assert "refused" in err and len(err.splitlines()) == 1
    # a released folder whose weights file is a pickle
    folder = export(pixel_ckpt, tmp_path / "released")
    torch.save({"w": _Payload(str(marker))}, folder / WEIGHTS_NAME)
    with pytest.raises(PretrainedError, match="not a safetensors file"):
        from_pretrained(folder)
    assert run("--checkpoint", str(folder), "--out", str(tmp_path / "o"), str(tmp_path / "x.png")) == 2
    assert not marker.exists()
    assert export_main([str(evil), str(tmp_path / "never")]) == 2 and not (tmp_path / "never").exists()


def test_user_errors_are_one_line_exit_2(pixel_ckpt, tmp_path, capsys):
    png = write_png(tmp_path / "x.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "empty").mkdir()
    (tmp_path / "text.pth").write_text("hello")
    cases = {
        str(tmp_path / "nope.pth"): "no such file",
        str(tmp_path / "empty"): "without config.json",
        str(tmp_path / "text.pth"): "corrupt or not a torch checkpoint",
    }
    for checkpoint, message in cases.items():
        assert run("--checkpoint", checkpoint, "--out", str(tmp_path / "o"), str(png)) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and message in err and len(err.splitlines()) == 1, err
    assert run("--checkpoint", str(pixel_ckpt), "--out", str(tmp_path / "o"), str(tmp_path / "empty")) == 2
    assert "no image files" in capsys.readouterr().err
    assert export_main([str(tmp_path / "empty"), str(tmp_path / "x")]) == 2
    assert "expected a checkpoint file" in capsys.readouterr().err


def test_series_folders_are_ranked_by_pairwise_wins(tmp_path):
    torch.manual_seed(0)
    model = build_model("series", "siamese", input_size=32, **TINY).eval()
    with torch.no_grad():  # a head that reads the features, so that photos differ in preference
        model.fc.weight.normal_(0, 1.0)
    ck = tmp_path / "series.pth"
    save_checkpoint(
        {"model": model.state_dict(), "model_config": model.config.to_dict(), "kind": "series", "args": {}}, ck
    )
    rng = np.random.default_rng(0)
    folders = {}
    for name, n in (("scene1", 3), ("scene2", 2)):
        d = tmp_path / "in" / name
        d.mkdir(parents=True)
        folders[name] = [
            write_png(d / f"{k}.png", rng.integers(0, 256, (40 + 8 * k, 48, 3), dtype=np.uint8)) for k in range(n)
        ]
    assert run("--checkpoint", str(ck), "--out", str(tmp_path / "out"), str(tmp_path / "in")) == 0
    with open(tmp_path / "out" / "ranking.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["folder", "path", "rank", "wins"]
    for name, paths in folders.items():
        mine = [r for r in rows if Path(r["folder"]).name == name]
        assert sorted(r["path"] for r in mine) == sorted(map(str, paths))
        assert [int(r["rank"]) for r in mine] == list(range(1, len(paths) + 1))
        assert sum(int(r["wins"]) for r in mine) == len(paths) * (len(paths) - 1) // 2  # one win per pair
        # the wins are the network's own answers on each pair (i, j) as (a, b)
        x = {str(p): normalize(fix_scale_crop(read_image(p), 32))[None] for p in paths}
        wins = dict.fromkeys(x, 0)
        with torch.no_grad():
            for i, a in enumerate(paths):
                for b in paths[i + 1 :]:
                    prob_a = model(x[str(a)], x[str(b)])["pair"].double().softmax(1)[0, 0]
                    wins[str(a) if prob_a > 0.5 else str(b)] += 1
        assert {r["path"]: int(r["wins"]) for r in mine} == wins


def test_series_network_exports_and_loads_through_torch_hub(tmp_path):
    torch.manual_seed(0)
    model = build_model("series", "pau", input_size=32, **TINY).eval()
    ck = tmp_path / "series.pth"
    save_checkpoint(
        {"model": model.state_dict(), "model_config": model.config.to_dict(), "kind": "series", "args": {}}, ck
    )
    folder = export(ck, tmp_path / "released")
    a, b = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    hub = torch.hub.load(str(REPO), "afanet_series", source="local", weights=str(folder))
    with torch.no_grad():
        assert torch.equal(hub(a, b)["pair"], model(a, b)["pair"])
    with pytest.raises(PretrainedError, match="use afanet_series"):
        torch.hub.load(str(REPO), "afanet_image", source="local", weights=str(folder))
    assert json.loads((folder / CONFIG_NAME).read_text())["preprocessing"]["center_crop"] == 32


def test_scores_brought_back_strip_by_strip_equal_the_full_interpolation():
    from families.pixel_tasks import argmax_at_size, resize_scores

    torch.manual_seed(0)
    scores = torch.randn(5, 13, 17)
    for size in ((40, 50), (13, 17), (100, 31), (7, 9)):
        full = resize_scores(scores, size)
        assert full.shape == (5, *size)
        for rows in (1, 4, 64):  # the strips' height does not change the answer
            assert torch.equal(argmax_at_size(scores, size, rows=rows), full.argmax(0)), (size, rows)


def test_a_large_photo_is_predicted_at_the_training_frames_scale(tmp_path, capsys):
    """The checkpoint records 40 x 50 training frames: a 120 x 150 photo is resized to them, predicted
    through the same windows as eval.py, and its outputs come back at its own size."""
    from data import normalize, sliding_window_predict
    from families.pixel import resize_shorter_side
    from families.pixel_tasks import resize_scores

    torch.manual_seed(0)
    model = build_model("pixel", "afa", input_size=32, **TINY).eval()
    ck = tmp_path / "pixel.pth"
    save_checkpoint(
        {
            "model": model.state_dict(),
            "model_config": model.config.to_dict(),
            "kind": "pixel",
            "args": {},
            "data": {"frame_size": [40, 50]},
        },
        ck,
    )
    photo = np.random.default_rng(0).integers(0, 256, (120, 150, 3), dtype=np.uint8)
    write_png(tmp_path / "big.png", photo)
    assert run("--checkpoint", str(ck), "--out", str(tmp_path / "out"), str(tmp_path / "big.png")) == 0
    assert "window" in capsys.readouterr().err  # the progress bar runs over the windows of the one photo
    pred = np.load(tmp_path / "out" / "big.npz")
    assert pred["seg"].shape == pred["depth"].shape == (120, 150)

    small = resize_shorter_side(torch.from_numpy(photo).permute(2, 0, 1), 40)
    assert small.shape == (3, 40, 50)
    with torch.no_grad():
        outputs = sliding_window_predict(lambda x: model(x), normalize(small)[None], 32)
    depth = resize_scores(outputs["depth"][0], (120, 150))[0].numpy()
    np.testing.assert_allclose(pred["depth"], depth, rtol=1e-6)
    seg = resize_scores(outputs["seg"][0], (120, 150)).argmax(0).numpy()
    assert np.array_equal(pred["seg"], seg)

    # --native-scale: windows over the photo itself, as before; outputs at its size too
    assert (
        run("--checkpoint", str(ck), "--out", str(tmp_path / "native"), "--native-scale", str(tmp_path / "big.png"))
        == 0
    )
    native = np.load(tmp_path / "native" / "big.npz")
    assert native["seg"].shape == (120, 150) and not np.array_equal(native["depth"], pred["depth"])


def test_a_flag_of_another_family_is_refused_in_one_line(image_ckpt, tmp_path, capsys):
    png = write_png(tmp_path / "x.png", np.zeros((8, 8, 3), np.uint8))
    assert run("--checkpoint", str(image_ckpt), "--out", str(tmp_path / "o"), "--overlay", str(png)) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --overlay: not for image networks ({image_ckpt})"
