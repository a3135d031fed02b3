"""The promotion policy and the promotions of engines from one stage to the next."""

from __future__ import annotations
