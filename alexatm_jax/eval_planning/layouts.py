"""Layouts of a slice's chips for evaluation: parsing "data=2,tensor=2", the rule set each
needs, and every layout of N chips that a model and batch allow.

The rule set follows the axes (`partitioning.RULE_SETS`): with tensor > 1 'fsdp_tensor' (heads,
FFN width and vocabulary over tensor, the embed axis over fsdp), else with fsdp > 1 'fsdp'
(parameters split on their embed axis), else 'data_parallel' (every chip holds every parameter).
"""

from __future__ import annotations

import re

from alexatm_jax.eval_planning.programs import Layout
from alexatm_jax.model.config import ModelConfig

AXES = ("data", "fsdp", "tensor")


def rules_for(data: int, fsdp: int, tensor: int) -> str:
    """The partition rule set of a data x fsdp x tensor mesh (module doc)."""
    del data  # the data axis shards no parameter under any rule set
    if tensor > 1:
        return "fsdp_tensor"
    return "fsdp" if fsdp > 1 else "data_parallel"


def layout_name(data: int, fsdp: int, tensor: int) -> str:
    """'data=2,tensor=2': the axes larger than 1 (data=1 for a single chip)."""
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    return ",".join(f"{axis}={size}" for axis, size in sizes.items() if size > 1) or "data=1"


def make_layout(data: int, fsdp: int, tensor: int) -> Layout:
    """The Layout of these axis sizes, named and with its rule set."""
    return Layout(
        layout_name(data, fsdp, tensor), data, fsdp, tensor, rules_for(data, fsdp, tensor)
    )


def parse_layout(text: str) -> Layout:
    """A Layout from 'data=4', 'fsdp=4', 'tensor=4', 'data=2,tensor=2', ... (axes not named
    are 1). Raises ValueError naming the accepted form."""
    sizes = dict.fromkeys(AXES, 1)
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\w+)\s*=\s*(\d+)\s*", part)
        if not match or match.group(1) not in AXES or int(match.group(2)) < 1:
            raise ValueError(
                f"bad layout {text!r}: give axis=size pairs joined by commas, axes from "
                f"{', '.join(AXES)}, sizes >= 1, e.g. data=4 or data=2,tensor=2"
            )
        sizes[match.group(1)] = int(match.group(2))
    return make_layout(sizes["data"], sizes["fsdp"], sizes["tensor"])


def layout_problem(layout: Layout, chips: int, config: ModelConfig, batch: int) -> str | None:
    """Why `layout` cannot run `config` at `batch` rows on `chips` chips, or None."""
    if layout.chips != chips:
        return f"layout {layout.name} spans {layout.chips} chips, the slice has {chips}"
    heads = (config.num_encoder_heads, config.num_decoder_heads)
    if any(h % layout.tensor for h in heads):
        return f"layout {layout.name}: tensor={layout.tensor} does not divide the heads {heads}"
    if batch % layout.batch_shards:
        return (
            f"layout {layout.name}: batch {batch} does not split into its "
            f"{layout.batch_shards} batch shards; give a multiple of {layout.batch_shards}"
        )
    return None


def candidate_layouts(chips: int) -> list[Layout]:
    """Every data x fsdp x tensor layout of `chips` chips: pure data, fsdp and tensor first,
    then the mixes."""
    found = []
    for data in _divisors(chips):
        for fsdp in _divisors(chips // data):
            found.append(make_layout(data, fsdp, chips // data // fsdp))
    return sorted(found, key=lambda layout: (layout.name.count(","), -layout.data, -layout.fsdp))


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
