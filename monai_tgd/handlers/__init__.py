from .tgd_handler import TGDHandler

__all__ = ["TGDHandler"]
