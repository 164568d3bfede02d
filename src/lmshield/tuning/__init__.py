"""Downstream tuning: prompt tuning, P-tuning, prefix tuning, LoRA and full fine-tuning, one loop."""

from lmshield.tuning.classifier import BaseModelInfo, ClassifierOutput, TunedClassifier
from lmshield.tuning.config import TuningConfig
from lmshield.tuning.data import LabelledData, read_labelled
from lmshield.tuning.methods import METHODS, TuningMethod, get_method, register_method
from lmshield.tuning.trainer import TuningResult, accuracy, tune

__all__ = [
    "METHODS",
    "BaseModelInfo",
    "ClassifierOutput",
    "LabelledData",
    "TunedClassifier",
    "TuningConfig",
    "TuningMethod",
    "TuningResult",
    "accuracy",
    "get_method",
    "read_labelled",
    "register_method",
    "tune",
]
