"""The intervention engine: scoped hooks on the raw HF model that add, ablate, project, scale or
patch at heads, q/k/v inputs, MLPs, neurons, residual sites and single edges.

Example:
    >>> import torch, circuitsteer as cs
    >>> model = cs.random_gpt2()
    >>> tokens = torch.randint(0, 256, (2, 6))
    >>> logits, cache = cs.engine.run(model, tokens, [cs.Scale(cs.Site("m1"), 0.5)], capture=["m1"])
    >>> tuple(cache["m1"].shape)
    (2, 6, 32)
"""

from circuitsteer.engine.api import VariantResults as VariantResults
from circuitsteer.engine.api import apply as apply
from circuitsteer.engine.api import run as run
from circuitsteer.engine.api import run_variants as run_variants
from circuitsteer.engine.masks import EdgeMask as EdgeMask
from circuitsteer.engine.masks import SenderOutputs as SenderOutputs
from circuitsteer.engine.masks import run_with_mask as run_with_mask
from circuitsteer.engine.masks import sender_outputs as sender_outputs
from circuitsteer.engine.sources import Cache as Cache
