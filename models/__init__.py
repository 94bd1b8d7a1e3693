"""AFA networks: two task branches joined by adaptive feature aggregation layers."""

from .afa import CAM, SAM, AFALayer
from .multitask import DEFAULTS, ModelConfig, MultiTaskNet, build_model, init_from_stage1, model_from_config
from .pretrained import from_pretrained
from .reference import convert_reference_state_dict, to_reference_state_dict
from .series import SeriesConfig, SeriesNet

__all__ = [
    "AFALayer", "CAM", "SAM", "DEFAULTS", "ModelConfig", "MultiTaskNet", "build_model", "init_from_stage1",
    "model_from_config", "convert_reference_state_dict", "to_reference_state_dict",
    "from_pretrained", "SeriesConfig", "SeriesNet",
]
