"""The vocabulary of view positions the model's view marker is learned over (`context.view_positions`).

A study's `view_positions` (one per image, in image order: r2gen.data.splits) become ids into `VIEW_POSITIONS`:
the four positions chest X-ray sets mostly hold (PA, AP, LATERAL, LL) get their own, every other value (MIMIC-CXR's
AP AXIAL, PA LLD, XTABLE LATERAL, LAO, SWIMMERS, ...) shares `other`, and an image whose position is not given (a
data set without them, such as IU-Xray, or a study whose table cell is empty) is `unknown`. The ids of absent views
(a study with fewer than `data.num_views` images) are `unknown` too; the view mask keeps those views out, so their id
is never read.
"""

from __future__ import annotations

from collections.abc import Sequence

VIEW_POSITIONS = ("unknown", "PA", "AP", "LATERAL", "LL", "other")  # the marker's rows, in this order
UNKNOWN, OTHER = 0, len(VIEW_POSITIONS) - 1
_ID = {name: k for k, name in enumerate(VIEW_POSITIONS[1:-1], start=1)}


def view_ids(positions: Sequence[str | None] | None, num_views: int) -> list[int]:
    """A study's first `num_views` view positions (None: none given) as ids into VIEW_POSITIONS, `num_views` of
    them: padded with `unknown` for absent views and images without a position."""
    given = ["" if p is None else str(p).strip().upper() for p in list(positions or [])[:num_views]]
    ids = [_ID.get(p, OTHER) if p else UNKNOWN for p in given]
    return ids + [UNKNOWN] * (num_views - len(ids))
