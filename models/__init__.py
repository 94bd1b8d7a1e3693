"""The networks: AFA multi-task networks (two task branches joined by fusion layers) and the series
photo selection networks; ``build_model(kind, fusion, ...)`` builds any of them."""

from .afa import CAM, SAM, AFALayer
from .multitask import ARCHITECTURES, ModelConfig, MultiTaskNet, build_model, init_from_stage1, model_from_config
from .pretrained import from_pretrained
from .reference import convert_reference_state_dict, to_reference_state_dict
from .series import SeriesConfig, SeriesNet

__all__ = [
    "AFALayer",
    "CAM",
    "SAM",
    "ARCHITECTURES",
    "ModelConfig",
    "MultiTaskNet",
    "build_model",
    "init_from_stage1",
    "model_from_config",
    "convert_reference_state_dict",
    "to_reference_state_dict",
    "from_pretrained",
    "SeriesConfig",
    "SeriesNet",
]
