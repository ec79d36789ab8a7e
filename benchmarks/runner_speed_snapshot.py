"""Realised speed-up of the runner against the plain model, for comparing two adaptix trees.

Usage (one tree at a time, alternated so that both see the same machine load)::

    for tree in /path/base /path/after /path/base /path/after; do
        PYTHONPATH=$tree python benchmarks/runner_speed_snapshot.py
    done

Prints one JSON line: per case, plain-model time / runner time (min over 7 repeats) for an
untrained resnet with exits, a confidence policy where about half the inputs leave at exit 0
and one where none leaves early, at batch 1 and 64. Compare the ratios of two trees, never the
absolute times (shared machines are noisy). `make bench` is the full suite.
"""

import json
import time

import torch

import adaptix


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = adaptix.build_model(
        "resnet", 10, backbone_params={"widths": (16, 32, 64), "depths": (1, 2, 1)}
    )
    model.eval()
    inputs = torch.randn(512, 1, 28, 28)
    trace = model.trace(inputs, torch.randint(0, 10, (512,)), batch_size=128)
    first_exit = trace.logits.softmax(-1).amax(-1)[:, 0]
    ratios = {}
    for name, threshold in (("half-early", float(first_exit.median())), ("nothing", 1.0)):
        runner = adaptix.EarlyExitRunner(model, adaptix.policy("confidence", threshold))
        for batch in (1, 64):
            rows = 64 if batch == 1 else 512
            chunks = [inputs[i : i + batch] for i in range(0, rows, batch)]
            plain = runner_time = float("inf")
            with torch.no_grad():
                for _ in range(7):
                    start = time.perf_counter()
                    for chunk in chunks:
                        model.forward_plain(chunk)
                    plain = min(plain, time.perf_counter() - start)
                    start = time.perf_counter()
                    for chunk in chunks:
                        runner(chunk)
                    runner_time = min(runner_time, time.perf_counter() - start)
            ratios[f"{name}/batch{batch}"] = plain / runner_time
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
