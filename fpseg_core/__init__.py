"""fpseg_core: FPSeg promptable semantic segmentation (SAM / MobileSAM), ROS-free."""

from .checkpoint import LoadedCheckpoint, load_checkpoint, save_checkpoint
from .errors import CheckpointError, FPSegError, InputImageError, PromptBankError
from .fusion import fuse
from .modeling.build import FPSegConfig, build_fpseg, tiny_config
from .predictor import FPSeg, Segmentation
from .prompt_bank import PromptBank, decoder_fingerprint
from .visualize import blend, colorize, palette

__all__ = [
    "CheckpointError",
    "FPSeg",
    "FPSegConfig",
    "FPSegError",
    "InputImageError",
    "LoadedCheckpoint",
    "PromptBank",
    "PromptBankError",
    "Segmentation",
    "blend",
    "build_fpseg",
    "colorize",
    "decoder_fingerprint",
    "fuse",
    "load_checkpoint",
    "palette",
    "save_checkpoint",
    "tiny_config",
]
__version__ = "0.1.0"
