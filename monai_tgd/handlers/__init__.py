from .epoch_seed import EpochSeedHandler
from .loss_curve import LossCurveHandler
from .tgd_handler import TGDHandler

__all__ = ["TGDHandler", "EpochSeedHandler", "LossCurveHandler"]
