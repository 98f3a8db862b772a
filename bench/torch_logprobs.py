#!/usr/bin/python3
"""bench/torch_logprobs.py -- the PyTorch peer of bench/loss_kernels.lua.

Per-sequence log-probs of B sequences of T tokens over V, forward and backward,
one variant per process; prints one JSON object.  Run with Debian's python3-torch:

    OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 bench/torch_logprobs.py VARIANT V C [B T reps warmup mask]

VARIANT: composed (logits -> log_softmax -> gather -> * mask -> sum), ce (logits ->
cross_entropy(reduction='none') -> * mask -> sum: PyTorch's own fused-ish path),
linear_composed and linear_ce (the same from hidden (B,T,C) and weight (V,C)).
Memory: rss_extra_mib is the peak RSS (VmHWM) minus the RSS once the inputs exist
(PyTorch's CPU allocator keeps no statistics of its own).
"""
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])


def main():
    a = sys.argv[1:]
    variant = a[0] if a else "composed"
    V = int(a[1]) if len(a) > 1 else 8192
    C = int(a[2]) if len(a) > 2 else 384
    B = int(a[3]) if len(a) > 3 else 8
    T = int(a[4]) if len(a) > 4 else 512
    reps = int(a[5]) if len(a) > 5 else 3
    warmup = int(a[6]) if len(a) > 6 else 1
    mask_kind = a[7] if len(a) > 7 else "full"
    torch.set_num_threads(2)
    torch.manual_seed(1)
    targets = torch.randint(0, V, (B, T))
    mask = torch.ones(B, T)
    if mask_kind == "half":
        mask[:, : T // 2] = 0
    from_logits = variant in ("composed", "ce")
    if from_logits:
        logits = torch.randn(B, T, V, requires_grad=True)
    else:
        hidden = torch.randn(B, T, C, requires_grad=True)
        weight = (torch.randn(V, C) * 0.02).requires_grad_()

    def composed(x):
        return (x.log_softmax(-1).gather(2, targets.unsqueeze(2)).squeeze(2) * mask).sum(1)

    def ce(x):
        nll = F.cross_entropy(x.reshape(-1, V), targets.reshape(-1), reduction="none")
        return (-nll.view(B, T) * mask).sum(1)

    steps = {
        "composed": lambda: composed(logits),
        "ce": lambda: ce(logits),
        "linear_composed": lambda: composed(F.linear(hidden, weight)),
        "linear_ce": lambda: ce(F.linear(hidden, weight)),
    }
    step = steps[variant]
    rss0 = status_kib("VmRSS")
    fwd, bwd, tot = [], [], []
    check = None
    for rep in range(warmup + reps):
        t0 = time.perf_counter()
        out = step()
        t1 = time.perf_counter()
        out.sum().backward()
        t2 = time.perf_counter()
        if rep >= warmup:
            fwd.append((t1 - t0) * 1e3)
            bwd.append((t2 - t1) * 1e3)
            tot.append((t2 - t0) * 1e3)
        check = out.sum().item()
        del out
        if from_logits:
            logits.grad = None
        else:
            hidden.grad = None
            weight.grad = None
    print(json.dumps({
        "peer": "torch " + torch.__version__, "variant": variant, "B": B, "T": T, "V": V,
        "C": 0 if from_logits else C, "mask": mask_kind, "threads": torch.get_num_threads(),
        "forward_ms": statistics.median(fwd), "backward_ms": statistics.median(bwd),
        "total_ms": statistics.median(tot), "rss_extra_mib": (status_kib("VmHWM") - rss0) / 1024,
        "check": check,
    }))


if __name__ == "__main__":
    main()
