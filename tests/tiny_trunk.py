"""The tiny trunk of every test that trains, evaluates or predicts: ResNet-50's structure (one
bottleneck per stage, three in stage 4 where AFA's default points sit) at a quarter of its width, so
steps, checkpoints and model builds cost a few percent of the real network's. Only the tests about the
full ResNet-50 (parity, golden files, ImageNet weights, default sizes) build that one."""

DEPTHS = [1, 1, 1, 3]
WIDTH = 16
MODEL = {"depths": DEPTHS, "width": WIDTH}  # build_model(...) options
FLAGS = ["--depths", *map(str, DEPTHS), "--width", str(WIDTH)]  # the scripts' flags
