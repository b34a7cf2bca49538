"""The built-in synthetic sets, by `data.demo.kind`: `plain` (r2gen.data.synthetic, data=demo; the default) and
`longitudinal` (r2gen.data.longitudinal, data=demo_longitudinal). Generated on first use by the trainer and the
DataModule (`prepare_demo`)."""

from __future__ import annotations

from pathlib import Path

from r2gen.data.longitudinal import generate_longitudinal
from r2gen.data.synthetic import generate_demo
from r2gen.errors import ConfigError

KINDS = {"plain": generate_demo, "longitudinal": generate_longitudinal}


def prepare_demo(root: str | Path, demo) -> Path:
    """Generate the set `demo` (the `data.demo` block: `kind` and that generator's parameters) under `root`, a no-op
    when it is there already; returns root/annotation.json."""
    params = dict(demo)
    kind = params.pop("kind", "plain")
    if kind not in KINDS:
        raise ConfigError(f"data.demo.kind={kind!r}: choose {' or '.join(KINDS)}")
    return KINDS[kind](root, **params)
