"""Safe loading of encoders and the handle every defense works with."""

from lmshield.models.architectures import supported_model_types
from lmshield.models.encoder import Encoder
from lmshield.models.loading import DEFAULT_MODEL, embedded_model_path, load_encoder
from lmshield.models.positions import WatchedPosition

__all__ = [
    "DEFAULT_MODEL",
    "Encoder",
    "WatchedPosition",
    "embedded_model_path",
    "load_encoder",
    "supported_model_types",
]
