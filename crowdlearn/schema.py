"""One configuration key: its type, default, documentation and limits.

Kept apart from :mod:`crowdlearn.config` so that protocol modules can declare their own config
sections (``CONFIG_SECTION``) without importing the config module that registers them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Key:
    type: type | tuple
    default: Any
    doc: str
    min: float | None = None
    max: float | None = None
    min_open: bool = False            # min is exclusive
    choices: tuple | None = None
    item_type: type | None = None     # for lists
