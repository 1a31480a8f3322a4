"""One prediction shared out: each part makes a contiguous band of every fragment's rows.

    Part.parse("2/3")               -> Part(index=1, count=3): the second of three (machines)
    Part.of(part, rank, world)      -> the part of one torchrun rank inside that machine's part
    part.rows(height)               -> (a, b): the output rows this part makes
    part_key(record, identity)      -> what a part file must match to be assembled with others

`kit predict --part K/N` (several machines, no process group) and `torchrun --nproc_per_node W
-m kit predict` (several GPUs, one process group) give every process one part: with both, the
machine's part is split again among its W ranks, so N machines × W GPUs make N·W parts. A part
predicts its rows with kit.infer.stitch's `own` rows, bit for bit what one process gives there;
the parts meet as files in PRED/.parts/ and whoever sees them all (rank 0, or the last machine
to finish) writes the map.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from kit.errors import KitError


@dataclass(frozen=True)
class Part:
    index: int = 0  # 0-based
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> Part:
        if text is None:
            return cls()
        try:
            k, n = (int(v) for v in text.split("/"))
        except ValueError:
            raise KitError(
                f"--part must be K/N (this machine's part K of N, from 1), got {text!r}"
            ) from None
        if not 1 <= k <= n:
            raise KitError(f"--part {text}: K must be 1..N")
        return cls(k - 1, n)

    @classmethod
    def of(cls, part: Part, rank: int, world: int) -> Part:
        return cls(part.index * world + rank, part.count * world)

    @property
    def whole(self) -> bool:
        return self.count == 1

    def rows(self, height: int) -> tuple[int, int]:
        return height * self.index // self.count, height * (self.index + 1) // self.count

    def __str__(self) -> str:
        return f"{self.index + 1}/{self.count}"


def part_key(record: dict, identity: dict) -> str:
    """12 hex digits of the prediction's inputs (members, checkpoints, overrides, format, kit)
    and the fragment's files: parts of other inputs are never assembled together."""
    inputs = {k: v for k, v in record.items() if k != "fragments"}
    text = json.dumps([inputs, identity], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
