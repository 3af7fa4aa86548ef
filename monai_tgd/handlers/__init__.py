from .epoch_seed import EpochSeedHandler
from .loss_curve import LossCurveHandler
from .plateau_stop import PlateauStopHandler
from .restore_best import RestoreBestHandler
from .tgd_handler import TGDHandler

__all__ = ["TGDHandler", "EpochSeedHandler", "LossCurveHandler", "PlateauStopHandler", "RestoreBestHandler"]
