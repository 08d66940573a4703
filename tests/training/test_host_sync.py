"""The host-sync counter (``training/host_sync.py``) and the bound it puts on the real training step: at most one
host sync per optimizer step outside the steps whose logs are written."""

from __future__ import annotations

import torch

from animatex_train.training.host_sync import HostSyncCounter


def test_counter_tells_device_reads_and_blocking_uploads_from_host_work():
    weight = torch.randn(4)  # existed before counting: a GPU run holds it on the device
    with HostSyncCounter() as counter:
        generator = torch.Generator().manual_seed(0)
        host = (torch.rand(4, generator=generator) < 0.5).float()  # a CPU-generator draw: host
        int(host.sum())  # free: a host value
        torch.tensor(0.0, device="cpu").item()  # free: spelled as the host
        on_device = host.to(weight.device)  # blocking copy to the device
        host.to(weight.device, non_blocking=True)  # free
        total = (weight * on_device).sum()
        float(total)  # read
        bool((weight > 0).any())  # read
        weight[weight > 0]  # boolean mask: the output size depends on device data
        torch.tensor(1.0, device=weight.device)  # built on the host, then copied (blocking)
        (torch.zeros(2, device=weight.device) + 1).tolist()  # read
        weight.cpu()  # copy to the host
        with counter.pause():
            weight.sum().item()  # not recorded
    kinds = [e.kind for e in counter.events]
    assert kinds == [
        "host-to-device copy",
        "__float__",
        "__bool__",
        "boolean-mask indexing",
        "tensor(data, device=...)",
        "tolist",
        "device-to-host copy",
    ], counter.by_site()
    assert [e.is_upload for e in counter.events] == [True, False, False, False, True, False, False]
    assert all("test_host_sync.py" in e.where for e in counter.events)  # the call site, outside torch


def test_at_most_one_host_sync_per_optimizer_step_outside_log_steps(tmp_path):
    """The tiny recipe through the real system (2 micro-batches per optimizer step, logs every 3 steps): an
    optimizer step whose logs are not written reads the device once (the guard's decision, ``numerics.py``).

    Counted: reads of device values and copies to the host; and blocking uploads made by our code (the host-drawn
    condition-dropout and reference-mode masks travel pinned and asynchronously, so there are none). The batch's own
    upload is Lightning's (from pinned memory on GPU nodes) and not bounded here.
    """
    from support.fit_in_process import fit_tiny

    from animatex_train.training.host_sync import StepSyncProbe

    probe = StepSyncProbe()
    fit_tiny(tmp_path, 6, ["--trainer.log_every_n_steps", "3", "--trainer.accumulate_grad_batches", "2"], first=[probe])
    plain = probe.per_optimizer_step(log_steps=False)
    assert sorted(plain) == [0, 1, 3, 4] and len(probe.steps) == 12  # steps 2 and 5 write logs
    reads = {step: [e for e in events if not e.is_upload] for step, events in plain.items()}
    assert all(len(events) <= 1 for events in reads.values()), {
        s: [f"{e.kind} at {e.where}" for e in events] for s, events in reads.items()
    }
    assert any(len(events) == 1 for events in reads.values())  # the counter sees the guard's one read
    ours = [e.where for events in plain.values() for e in events if e.is_upload and "animatex_train" in e.where]
    assert not ours, ours
