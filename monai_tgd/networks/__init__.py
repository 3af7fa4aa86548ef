from .dncnn import DnCNN

__all__ = ["DnCNN"]
