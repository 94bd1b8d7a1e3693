"""bench.py: a quick CPU smoke test of the benchmark's functions (tiny inputs, one step).

Asserts the structure and sanity of the report (positive times, FLOPs > 0), never timings. The
side-by-side run against the original code needs its files: set AFANET_REFERENCE to a checkout
of zhenshen-mla/AFANet (or its models/ folder) to run that test too.
"""

import json
import os

import pytest
import tiny_trunk
import torch

import bench


def _args(*argv):
    return bench.get_args_parser().parse_args(["--steps", "1", "--warmup", "0", *argv])


TINY = tiny_trunk.FLAGS


def _check_steps(report, n):
    assert len(report["steps"]) == n
    for r in report["steps"]:
        assert r["error"] is None, r
        assert len(r["times_s"]) == 1 and r["min_s"] > 0 and r["median_s"] >= r["min_s"]
        assert r["images_per_s"] > 0
        assert r["flops"] > 0 and r["achieved_flops_per_s"] > 0 and r["peak_fraction"] > 0
        assert r["peak_memory_bytes"] > 0
    assert all(v > 0 for v in report["matmul_peak_flops_per_s"].values())


def test_steps_report(tmp_path, capsys):
    out = tmp_path / "bench.json"
    report = bench.main(
        _args(
            "--kinds",
            "image",
            "pixel",
            "--fusions",
            "none",
            "afa",
            "--batch-size",
            "2",
            "--input-size",
            "32",
            "--amp",
            "none",
            "bf16",
            "--channels-last",
            "--json",
            str(out),
            *TINY,
        )
    )
    _check_steps(report, 2 * 2 * 2)  # kinds x fusions x precisions
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    labels = {r["label"] for r in report["steps"]}
    assert "pixel/afa ours bf16 CL" in labels and "image/none ours fp32 CL" in labels
    # FLOPs do not depend on the precision; the fused net costs a little more than the pair
    by = {r["label"]: r for r in report["steps"]}
    assert by["image/afa ours fp32 CL"]["flops"] == by["image/afa ours bf16 CL"]["flops"]
    assert by["image/afa ours fp32 CL"]["flops"] > by["image/none ours fp32 CL"]["flops"]
    afa = [q for q in report["ratios"] if "afa_over_none" in q]
    assert len(afa) == 4 and all(q["afa_over_none"] > 0 for q in afa)
    text = capsys.readouterr().out
    assert "pixel/afa ours bf16 CL" in text and "matmul peak" in text and f"wrote {out}" in text
    assert '"steps"' not in text  # the JSON goes to the file; the console gets the table


def test_random_batch_targets():
    pixel = {"kind": "pixel", "input_size": 40, "tasks": {"seg": 40, "depth": 1}}
    b = bench.random_batch(pixel, 2, torch.device("cpu"), channels_last=True)
    seg, depth = b["seg"], b["depth"]
    assert seg.dtype == torch.int64 and set(seg.unique().tolist()) <= set(range(40)) | {255} and (seg == 255).any()
    assert depth.shape == (2, 1, 40, 40) and (depth >= 0).all() and (depth == 0).any() and (depth > 0).any()
    assert b["image"].is_contiguous(memory_format=torch.channels_last)
    image = {"kind": "image", "input_size": 8, "tasks": {"gender": 2, "age": 8}}
    b = bench.random_batch(image, 16, torch.device("cpu"), channels_last=False)
    assert b["gender"].max() <= 1 and b["age"].max() <= 7 and b["age"].min() >= 0


def test_pipeline_on_synthetic_sets():
    report = bench.main(
        _args(
            "--no-steps",
            "--pipeline",
            "--workers",
            "0",
            "--pipeline-batches",
            "2",
            "--batch-size",
            "2",
            "--input-size",
            "64",
        )
    )
    assert [p["kind"] for p in report["pipeline"]] == ["image", "pixel"]
    for p in report["pipeline"]:
        assert p["samples"] == 4 and p["samples_per_s"] > 0


def test_bad_reference_dir_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="zhenshen-mla/AFANet"):
        bench.import_original(tmp_path)


@pytest.mark.skipif(not os.environ.get("AFANET_REFERENCE"), reason="set AFANET_REFERENCE to the original code")
def test_reference_side_by_side():
    report = bench.main(
        _args(
            "--kinds",
            "pixel",
            "--fusions",
            "none",
            "afa",
            "--batch-size",
            "2",
            "--input-size",
            "64",
            "--reference",
            os.environ["AFANET_REFERENCE"],
        )
    )
    _check_steps(report, 4)
    speedups = [q for q in report["ratios"] if "speedup" in q]
    assert len(speedups) == 2 and all(q["speedup"] > 0 for q in speedups)
    by = {r["label"]: r for r in report["steps"]}
    # same network, same FLOPs (up to AFA bookkeeping): the original is built at the right size
    assert by["pixel/afa original fp32 NCHW"]["flops"] == pytest.approx(
        by["pixel/afa ours fp32 NCHW"]["flops"], rel=0.01
    )


def test_gradient_methods_are_timed_beside_equal(capsys):
    argv = ["--kinds", "image", "--fusions", "none", "shared", "--batch-size", "2", "--input-size", "32"]
    argv += ["--depths", "1", "1", "1", "1", "--width", str(tiny_trunk.WIDTH), "--weightings", "pcgrad", "famo"]
    report = bench.main(_args(*argv))
    labels = [r["label"] for r in report["steps"]]
    # none shares nothing: equal only; shared: equal, then each method on the same network and mode
    assert labels == [
        "image/none ours fp32 NCHW",
        "image/shared ours fp32 NCHW",
        "image/shared+pcgrad ours fp32 NCHW",
        "image/shared+famo ours fp32 NCHW",
    ]
    _check_steps(report, 4)
    ratios = {q["what"]: q["over_equal"] for q in report["ratios"] if "over_equal" in q}
    assert set(ratios) == {
        "image/shared+pcgrad ours fp32 NCHW: pcgrad / equal step time",
        "image/shared+famo ours fp32 NCHW: famo / equal step time",
    }
    assert all(v > 0 for v in ratios.values())
    assert "pcgrad / equal step time" in capsys.readouterr().out
    assert any("timed with equal only" in n for n in report["notes"])
