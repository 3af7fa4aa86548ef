"""The sections of ``results.md``, one module each; every section is ``section(res: Results) -> list[str]``."""

from __future__ import annotations

from .ablation import section_ablation
from .cost import section_cost
from .differences import section_differences
from .finetune import section_finetune
from .forgetting import section_forgetting
from .online import section_online
from .runtime import section_runtime
from .threshold import section_threshold

#: the report's sections, in order
SECTIONS = (section_threshold, section_finetune, section_forgetting, section_cost, section_online, section_ablation,
            section_differences, section_runtime)  # fmt: skip

__all__ = ["SECTIONS", *(s.__name__ for s in SECTIONS)]
