"""What TGD did to the run's networks, measured on their checkpoints with the library's own view of TGD.

* :func:`frozen_rows_moved`: the TGD guarantee (frozen rows bit-identical) checked on the run's checkpoints; which
  rows are frozen comes from :func:`monai_tgd.tgd.frozen_rows`, the function TGD itself freezes them with.
* :func:`retrained_weight_share`, :func:`output_share`: how much of the next conv's weight reads the retrained
  channels (the only way a retrained feature reaches the frozen channels downstream).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from .networks import network
from .results import Results


def _masks(masks_file: Mapping, chain) -> dict:
    """``{hidden conv name: bool [out_channels]}`` (True = retrain) from a run's ``tgd_masks.json`` content."""
    import torch

    retrained = masks_file["retrained_channels"]
    return {h.name: torch.zeros(h.conv.out_channels, dtype=torch.bool).index_fill_(
                0, torch.as_tensor(retrained[h.name], dtype=torch.long), True)
            for h in chain.hidden}  # fmt: skip


def frozen_rows_moved(res: Results, seed: int) -> list[str]:
    """Names of the v1-net's tensors whose rows TGD froze (per the run's ``tgd_masks.json``) but that differ in
    TGD-net: the TGD guarantee checked on the run's own checkpoints (empty = kept)."""
    import torch

    from monai_tgd.tgd import conv_chain, frozen_rows

    settings = res.masks[seed]
    v1 = network(res, res.checkpoint("v1-net", seed))
    tuned = torch.load(res.checkpoint("TGD-net", seed), map_location="cpu", weights_only=True)
    chain = conv_chain(v1)
    frozen = frozen_rows(v1, _masks(settings, chain), freeze_output=settings["freeze_output"],
                         bn_stats=settings["bn_stats"], chain=chain,
                         readers=settings.get("readers", "none"))  # fmt: skip
    return [key for key, value in v1.state_dict().items()
            if key in frozen and not torch.equal(value[frozen[key]], tuned[key][frozen[key]])]  # fmt: skip


def retrained_weight_share(res: Results, checkpoint: Path, masks_file: Mapping) -> list[list[str]]:
    """Per hidden conv of a network: the share of its channels TGD retrains (``tgd_masks.json`` content), and the
    share of the consumer conv's |weight| that reads them (the only way a retrained feature reaches the next layer's
    frozen channels)."""
    from monai_tgd.tgd import conv_chain

    chain = conv_chain(network(res, checkpoint))
    masks = _masks(masks_file, chain)
    outputs = {name for name, _ in chain.outputs}
    rows = []
    for h in chain.hidden:
        retrained = masks[h.name]
        weight = h.consumer.weight.detach().abs().double()
        share = float(weight[:, retrained].sum() / weight.sum()) if retrained.any() else 0.0
        reader = h.consumer_name + (" (output conv)" if h.consumer_name in outputs else "")
        rows.append([h.name, reader, f"{100 * int(retrained.sum()) / h.conv.out_channels:.1f}",
                     f"{100 * share:.2f}"])
    return rows


def output_share(res: Results, checkpoint: Path, masks_file: Mapping) -> float:
    """Percent of the output conv's |weight| that reads the last hidden layer's retrained channels."""
    return next((float(r[3]) for r in retrained_weight_share(res, checkpoint, masks_file) if "(output conv)" in r[1]),
                math.nan)
