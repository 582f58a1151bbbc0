"""The colours boxes are drawn in: one per phrase, cycled.

Shared by the pictures (:mod:`lightning_wsg.callbacks.drawing`) and the legends of the test
report's page (:mod:`lightning_wsg.report_html`); a module of its own, importing nothing, so
that the page's writer names the drawing's colours without importing Lightning.
"""

from __future__ import annotations

__all__ = ["PALETTE"]

#: one colour per phrase (cycled), distinguishable on photos and on each other
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128),
)  # fmt: skip
