"""The training and evaluation machinery shared by every family and script; it holds no family policy
(families/ does). The loop: engine/train.py; one step: engine/step.py; run safety: engine/runs.py."""
