"""Model zoo: build clean and backdoored models from a YAML spec, scan them all, measure detection."""

from lmshield.zoo.build import METADATA_CSV, build_model, build_zoo, read_metadata
from lmshield.zoo.executors import run_tasks
from lmshield.zoo.finetune import FinetuneConfig, finetune_encoder
from lmshield.zoo.scan import ZooScan, scan_model, scan_zoo
from lmshield.zoo.spec import ModelEntry, ZooSpec, load_spec, parse_spec

__all__ = [
    "METADATA_CSV",
    "FinetuneConfig",
    "ModelEntry",
    "ZooScan",
    "ZooSpec",
    "build_model",
    "build_zoo",
    "finetune_encoder",
    "load_spec",
    "parse_spec",
    "read_metadata",
    "run_tasks",
    "scan_model",
    "scan_zoo",
]
