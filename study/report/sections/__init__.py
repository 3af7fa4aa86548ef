"""The sections of ``results.md``, one module each; every section is ``section(res: Results) -> list[str]``."""

from __future__ import annotations

from .convergence import section_convergence
from .cost import section_cost
from .differences import section_differences
from .finetune import section_finetune
from .forgetting import section_forgetting
from .online import section_online
from .premises import section_premises
from .runtime import section_runtime
from .targets import section_targets
from .threshold import section_threshold
from .variants import section_variants

#: the report's sections, in order: the premises first, before any TGD number
SECTIONS = (section_premises, section_targets, section_threshold, section_finetune, section_convergence,
            section_forgetting, section_cost, section_online, section_variants, section_differences,
            section_runtime)  # fmt: skip

__all__ = ["SECTIONS", *(s.__name__ for s in SECTIONS)]
