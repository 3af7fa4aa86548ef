"""Ignite handler that fine-tunes a MONAI engine's network with Targeted Gradient Descent."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from torch import nn

from ..io import atomic_path
from ..tgd import TGD, kse_masks, mask_summary

__all__ = ["TGDHandler"]

MASKS_FILE = "tgd_masks.pt"
SUMMARY_FILE = "tgd_masks.json"


class TGDHandler:
    """Install :class:`monai_tgd.tgd.TGD` on a trainer's network for the duration of a run.

    At the first iteration (so after ``CheckpointLoader`` and every other ``STARTED`` handler), the handler computes
    the KSE masks from the network's weights as loaded, installs TGD, logs the retrained fraction per layer and
    overall, and (on rank 0) writes ``tgd_masks.pt`` (``{conv name: bool [out_channels]}``, True = retrain; load it
    with ``torch.load(..., weights_only=True)``) and ``tgd_masks.json`` (settings and fractions) to ``output_dir``.
    TGD is removed when the run completes or fails.

    Resuming: the masks are part of :meth:`state_dict`, so put the handler in ``CheckpointSaver``'s and
    ``CheckpointLoader``'s ``save_dict``/``load_dict`` (e.g. ``{"network": ..., "optimizer": ..., "trainer": ...,
    "tgd": handler}``); a resumed run then reuses them. A run resumed without them falls back to
    ``output_dir/tgd_masks.pt``, and fails rather than recompute masks from half-fine-tuned weights.

    Args:
        threshold: KSE threshold ``phi`` (0.3 in the paper).
        masks: precomputed masks, a dict or the path of a ``tgd_masks.pt``; None computes them at the start.
        mode, freeze_output, bn_stats: see :class:`monai_tgd.tgd.TGD`.
        alpha, k: KSE parameters, see :func:`monai_tgd.kse.kse_scores`.
        output_dir: where the mask files go (None: not written).
        network: the network to fine-tune; default ``engine.network`` (MONAI engines).
        name: logger name.
    """

    def __init__(
        self,
        threshold: float = 0.3,
        masks: dict[str, torch.Tensor] | str | os.PathLike | None = None,
        mode: str = "activation",
        freeze_output: bool = True,
        bn_stats: str = "freeze",
        alpha: float = 1.0,
        k: int = 5,
        output_dir: str | os.PathLike | None = None,
        network: nn.Module | None = None,
        name: str | None = None,
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"TGDHandler: threshold must be in [0, 1], got {threshold}.")
        self.threshold, self.alpha, self.k = threshold, alpha, k
        self.mode, self.freeze_output, self.bn_stats = mode, freeze_output, bn_stats
        self.masks = _load_masks(masks) if isinstance(masks, (str, os.PathLike)) else masks
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.network = network
        self.logger = logging.getLogger(name or "TGDHandler")
        self.tgd: TGD | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self.install)
        engine.add_event_handler(Events.COMPLETED, self.remove)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.exception_raised)

    def install(self, engine: Engine) -> None:
        """Compute or reuse the masks and install TGD (once per run)."""
        if self.tgd is not None:
            return
        network = self.network if self.network is not None else engine.network
        if self.masks is None:
            self.masks = self._masks_for(engine, network)
        self.tgd = TGD(network, self.masks, self.mode, self.freeze_output, self.bn_stats)
        summary = mask_summary(network, self.masks)
        for layer, fraction in summary.items():
            self.logger.info(f"TGD retrains {100 * fraction:.1f}% of {layer}")
        if self.output_dir is not None and idist.get_rank() == 0:
            self._write(summary)

    def _masks_for(self, engine: Engine, network: nn.Module) -> dict[str, torch.Tensor]:
        done = engine.state.iteration - 1  # ITERATION_STARTED fires after the counter moved on
        if done == 0:
            return kse_masks(network, self.threshold, alpha=self.alpha, k=self.k)
        saved = self.output_dir / MASKS_FILE if self.output_dir is not None else None
        if saved is not None and saved.is_file():
            self.logger.info(f"resumed run: reusing TGD masks from {saved}")
            return _load_masks(saved)
        raise RuntimeError(
            f"TGDHandler: the run resumes at iteration {done} but no TGD masks were restored; "
            "masks computed now would come from half-fine-tuned weights. Add the handler to the checkpoint's "
            f"save_dict/load_dict, or pass masks= (e.g. the run's {MASKS_FILE})."
        )

    def _write(self, summary: dict[str, float]) -> None:
        with atomic_path(self.output_dir / MASKS_FILE) as tmp:
            torch.save(self.masks, tmp)
        info = {
            "threshold": self.threshold, "alpha": self.alpha, "k": self.k, "mode": self.mode,
            "freeze_output": self.freeze_output, "bn_stats": self.bn_stats, "retrained_fraction": summary,
            "retrained_channels": {n: m.nonzero().flatten().tolist() for n, m in self.masks.items()},
        }  # fmt: skip
        with atomic_path(self.output_dir / SUMMARY_FILE) as tmp:
            tmp.write_text(json.dumps(info, indent=2), encoding="utf-8")

    def remove(self, engine: Engine | None = None) -> None:
        """Take TGD off the network (the masks are kept for a later run of the same engine)."""
        if self.tgd is not None:
            self.tgd.remove()
            self.tgd = None

    def exception_raised(self, engine: Engine, e: Exception) -> None:
        self.remove()
        raise e  # ignite swallows the exception once a handler is registered for EXCEPTION_RAISED

    def state_dict(self) -> dict:
        return {"masks": self.masks} if self.masks is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if "masks" in state:
            self.masks = state["masks"]


def _load_masks(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TGDHandler: masks file {path} not found (expected a tgd_masks.pt written by a run).")
    masks = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(masks, dict) or not all(isinstance(m, torch.Tensor) for m in masks.values()):
        raise ValueError(f"TGDHandler: {path} must hold a dict of conv name -> bool tensor, got {type(masks).__name__}.")
    return masks
