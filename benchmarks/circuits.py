"""Time a full GPT-2-small circuit (32,491 edges) through the file format and the dense mask.

    python benchmarks/circuits.py [--repeats 7]

``cs.full_edge_graph`` for GPT-2 small's shape is saved to JSON once; then, each repeat: load the
file (JSON, pydantic validation, the graph), convert it to an ``EdgeMask`` of a 12 x 12 model,
convert the mask back to a circuit, and save. Prints the median and the fastest repeat of each
step, in seconds (a full garbage collection of a large process heap can stall a single repeat).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import circuitsteer as cs
from circuitsteer.models import GPT2_SMALL


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(1)
    model = cs.random_gpt2(n_layers=12, n_heads=12, d_model=24)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "full.json"
        cs.full_edge_graph(GPT2_SMALL, model="gpt2-small").save(path)
        steps: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            c = cs.load_circuit(path)
            t1 = time.perf_counter()
            mask = c.to_mask(model)
            t2 = time.perf_counter()
            back = cs.Circuit.from_mask(mask)
            t3 = time.perf_counter()
            back.save(Path(tmp) / "back.json")
            t4 = time.perf_counter()
            for k, v in [
                ("load_circuit (32,491 edges)", t1 - t0),
                ("circuit.to_mask(model)", t2 - t1),
                ("load + to_mask", t2 - t0),
                ("Circuit.from_mask(mask)", t3 - t2),
                ("circuit.save", t4 - t3),
            ]:
                steps.setdefault(k, []).append(v)
    print("| step | median (s) | fastest (s) |\n|---|---|---|")
    for k, v in steps.items():
        print(f"| {k} | {statistics.median(v):.3f} | {min(v):.3f} |")


if __name__ == "__main__":
    main()
