"""Safe loading of encoders and the handle every defense works with."""

from lmshield.models.architectures import supported_model_types
from lmshield.models.encoder import Encoder
from lmshield.models.loading import DEFAULT_MODEL, LoadedModel, embedded_model_path, load_encoder, load_pretrained
from lmshield.models.positions import WatchedPosition

__all__ = [
    "DEFAULT_MODEL",
    "Encoder",
    "LoadedModel",
    "WatchedPosition",
    "embedded_model_path",
    "load_encoder",
    "load_pretrained",
    "supported_model_types",
]
