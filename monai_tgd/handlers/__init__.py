from .epoch_seed import EpochSeedHandler
from .tgd_handler import TGDHandler

__all__ = ["TGDHandler", "EpochSeedHandler"]
