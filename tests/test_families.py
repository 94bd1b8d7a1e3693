"""The family layer: one table of families, each script offering exactly its family's flags, frozen
settings resolved without touching the parsed command line, and the answers the scripts ask for."""

import argparse

import pytest
import torch

from engine.settings import Settings, resolve
from families import FAMILIES, ImageFamily, PixelFamily, SeriesFamily, family, hub_entries, protocols


def dests(fam) -> set[str]:
    return {a.dest for a in fam.get_args_parser()._actions} - {"help"}


def test_each_script_offers_its_familys_flags_only():
    pixel, image, series = dests(PixelFamily), dests(ImageFamily), dests(SeriesFamily)
    common = {"data_root", "crop_size", "fusion", "epochs", "lr", "resume", "amp", "seed", "out", "logdir"}
    assert common <= pixel & image & series
    # stage 2, fusion options and loss weighting mean nothing for one task trained in one stage
    for flag in ("init", "init_heads", "fusion_at", "grad_mode", "protect_tasks", "weighting", "val_fraction"):
        assert flag in pixel and flag in image and flag not in series, flag
    assert {"depth_loss"} <= pixel - image - series
    assert {"test_fold", "image_dir"} <= image - pixel - series
    assert {"shared_units", "symmetric", "flip_p", "swap_p"} <= series - pixel - image
    with pytest.raises(SystemExit):
        SeriesFamily.get_args_parser().parse_args(["--init", "x.pth"])
    assert SeriesFamily.get_args_parser().parse_args([]).fusion == "pau"  # the family's own default and choices
    with pytest.raises(SystemExit):
        SeriesFamily.get_args_parser().parse_args(["--fusion", "afa"])


def test_settings_are_resolved_once_and_frozen(tmp_path):
    args = ImageFamily.get_args_parser().parse_args(["--data-root", str(tmp_path), "--test-fold", "3"])
    before = dict(vars(args))
    settings, resume = resolve(args, ImageFamily, explicit=set())
    assert resume is None and vars(args) == before  # the parsed namespace is never edited
    assert settings.out == "weight/image_single_fold3_last.pth" and settings.logdir == "runs/image_single_fold3"
    with pytest.raises(AttributeError, match="read-only"):
        settings.batch_size = 4
    assert (
        settings.get("init") is None
        and SeriesFamily.run_name(Settings(fusion="pau", shared_units=True)) == "series_pau_shared"
    )


def test_the_family_table_and_what_the_scripts_ask_of_it():
    assert set(FAMILIES) == {"pixel", "image", "series"} and family("image") is ImageFamily
    with pytest.raises(ValueError, match="unknown network kind 'video'; known: pixel, image, series"):
        family("video")
    assert {name: p.script for name, p in protocols().items()} == {
        "nyuv2": "train_pixel.py",
        "cityscapes": "train_pixel.py",
        "adience": "train_image.py",
        "series": "train_series.py",
    }
    assert set(hub_entries()) == {"afanet_pixel", "afanet_image", "afanet_series"}
    g = torch.Generator().manual_seed(0)
    for fam, config in (
        (PixelFamily, {"kind": "pixel", "input_size": 16, "tasks": {"seg": 5, "depth": 1}}),
        (ImageFamily, {"kind": "image", "input_size": 16, "tasks": {"gender": 2, "age": 8}}),
        (SeriesFamily, {"kind": "series", "input_size": 16}),
    ):
        batch = fam.random_batch(config, 3, g)
        assert all(v.shape[0] == 3 for v in batch.values())
        assert all(x.shape == (3, 3, 16, 16) for x in fam(Settings()).inputs(batch)), fam.kind
        scores = {
            "pixel": {"seg/miou": 0.2, "depth/delta1": 0.6},
            "image": {"gender/acc": 0.8, "age/acc": 0.4},
            "series": {"pair/acc": 0.7},
        }[fam.kind]
        assert fam.score(scores) == pytest.approx({"pixel": 0.4, "image": 0.6, "series": 0.7}[fam.kind])


def test_a_checkpoints_settings_fill_in_what_it_predates():
    ck = {"args": {"test_fold": 2, "crop_size": 64}}
    fam = ImageFamily.from_checkpoint(ck, data_root="d", test_fold=None, image_dir=None)
    assert fam.settings.test_fold == 2 and fam.settings.data_root == "d" and fam.settings.image_dir == "aligned"
    assert ImageFamily.from_checkpoint(ck, test_fold=4).settings.test_fold == 4
    assert isinstance(fam.settings, argparse.Namespace)
