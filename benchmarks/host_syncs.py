"""Host syncs per training step: the tiny recipe through the real system, counted by ``HostSyncCounter``.

Run: ``python benchmarks/host_syncs.py`` (options: ``--help``). A host sync is a point where, on a GPU, the host
waits for the queued GPU work (``training/host_sync.py`` lists what counts); each one stalls the launch queue, so
the GPU idles while Python catches up. On CPU they cost nothing, but the calls are the same, so this counts them
without a GPU. The step counted is ``on_train_batch_start`` .. ``on_train_batch_end`` (forward, loss, backward,
gradient norm and clipping, optimizer and scheduler step); Lightning writes logs after it, every
``--log-every`` steps, and steps whose logs are written may also read metrics (``log_step`` below).

The last lines are ``host_syncs_per_step: <mean>`` (steps without a log write, first step excluded: it holds
one-off work such as the optimizer's lazy state), split above into blocking host-to-device copies and reads of
device values (``item``, ``bool``, ...), and ``host_syncs_per_log_step: <mean>``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch starts its thread pool

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tiny dataset of the tests

from support.tiny_dataset import build_tiny_dataset, fit_args  # noqa: E402

from animatex_train.cli.lightning import AnimateXCLI  # noqa: E402
from animatex_train.training.host_sync import StepSyncProbe  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps")
    parser.add_argument("--log-every", type=int, default=4, help="trainer.log_every_n_steps")
    parser.add_argument("--accumulate", type=int, default=1, help="trainer.accumulate_grad_batches")
    parser.add_argument("--sites", type=int, default=12, help="call sites listed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_dataset(Path(tmp) / "data")
        fit = fit_args(Path(tmp) / "data", Path(tmp) / "run", max_steps=args.steps)[1:]  # no "fit" with run=False
        cli = AnimateXCLI(
            args=[
                *fit,
                "--trainer.log_every_n_steps",
                str(args.log_every),
                "--trainer.accumulate_grad_batches",
                str(args.accumulate),
            ],
            run=False,
        )
        probe = StepSyncProbe()
        cli.trainer.callbacks.insert(0, probe)  # first: its window holds the system's step, not other callbacks
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)

    plain = {s: e for s, e in probe.per_optimizer_step(log_steps=False).items() if s > 0}
    logged = probe.per_optimizer_step(log_steps=True)
    print(f"{args.steps} optimizer steps of {args.accumulate} micro-batch(es), logs written every {args.log_every}")
    print(f"per step without a log write (steps {sorted(plain)}): {[len(e) for e in plain.values()]}")
    print(f"per step with a log write (steps {sorted(logged)}): {[len(e) for e in logged.values()]}")
    sites = Counter(f"{e.kind} at {e.where}" for events in plain.values() for e in events)
    print(f"call sites of the steps without a log write (count over {len(plain)} steps):")
    for site, count in sites.most_common(args.sites):
        print(f"  {count:4d}  {site}")
    uploads = statistics.mean(sum(e.is_upload for e in events) for events in plain.values())
    total = statistics.mean(len(e) for e in plain.values())
    print(
        f"of which blocking host-to-device copies: {uploads:.2f} per step; reads of device values: "
        f"{total - uploads:.2f} per step"
    )
    print(f"host_syncs_per_step: {total:.2f}")
    print(f"host_syncs_per_log_step: {statistics.mean(len(e) for e in logged.values()):.2f}")


if __name__ == "__main__":
    main()
