"""Reference log-prob memory: peak memory above the input logits for float64 log-probs + entropy.

Runs in a fresh subprocess so the process-wide peak (``ru_maxrss``) belongs to this measurement alone. The
baseline is the *current* resident size once the bf16 logits exist (filled chunk by chunk, so creating them
never needs a float32 copy); the kernel's peak mark (``VmHWM``) is then reset through ``/proc/self/clear_refs``
and the figure is the peak after the computation minus that baseline. Where the reset is not possible the
process-wide ``ru_maxrss`` is used: an earlier transient peak can then only make the figure larger, never
smaller. At small sizes the figure is dominated by allocator and thread-pool overheads of tens of MiB; it is
meant for the default size (logits of 1.2 GiB).
"""

from __future__ import annotations

import json
import subprocess
import sys

from grpo_check.bench.core import BenchFigure

TARGET_FRACTION = 0.25

_CHILD = r"""
import json, os, resource, sys
import torch
B, T, V, naive = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "naive"
torch.manual_seed(0)

def rss_bytes():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

logits = torch.empty(B, T, V, dtype=torch.bfloat16)
for b in range(B):
    for start in range(0, T, 64):
        logits[b, start:start + 64].normal_(0.0, 3.0)
completion_ids = torch.randint(0, V, (B, T))
# Warm up on a tiny input first: imports, kernel selection and thread pools are not the function's memory.
from grpo_check.reference import logps_and_entropy_from_logits
tiny = torch.randn(1, 64, V).to(torch.bfloat16)  # a full chunk: thread pools and kernel paths start here
if naive:
    torch.log_softmax(tiny.double(), dim=-1).exp()
else:  # only the arm's own path: a float64 log-softmax warm-up leaves the allocator holding memory that
    # inflated the chunked figure at small sizes (0.6x -> 8.2x the logits at B=1, T=1024, V=32768)
    logps_and_entropy_from_logits(tiny, torch.zeros(1, 64, dtype=torch.long))
del tiny
baseline = rss_bytes()
# Reset the kernel's peak-RSS mark (VmHWM) so peaks from importing torch or filling the logits do not count;
# where that is not possible, fall back on the process-wide ru_maxrss (an over-estimate, never an under-).
try:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    peak_source = "VmHWM"
except OSError:
    peak_source = "ru_maxrss"

def peak_bytes():
    if peak_source == "VmHWM":
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
if naive:
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    logps = logprobs.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    entropy = -(logprobs.exp() * logprobs).sum(-1)
else:
    logps, entropy = logps_and_entropy_from_logits(logits, completion_ids)
peak = peak_bytes()
print(json.dumps({"logits_bytes": logits.numel() * logits.element_size(), "extra_bytes": max(0, peak - baseline),
                  "logps_dtype": str(logps.dtype), "finite": bool(torch.isfinite(logps).all()),
                  "peak_source": peak_source}))
"""


def measure_memory(
    batch: int = 2, tokens: int = 2048, vocab: int = 151_936, naive: bool = False
) -> BenchFigure:
    """Peak memory above the logits while computing float64 per-token log-probs and entropy."""
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(batch), str(tokens), str(vocab), "naive" if naive else "chunked"],
        check=True,
        capture_output=True,
        text=True,
    )
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    fraction = data["extra_bytes"] / data["logits_bytes"]
    return BenchFigure(
        name="memory_naive" if naive else "memory",
        value=fraction,
        unit="x logits size",
        target=f"<= {TARGET_FRACTION}" if not naive else "(naive float64 log-softmax, for comparison)",
        ok=(fraction <= TARGET_FRACTION) if not naive else None,
        details={"B": batch, "T": tokens, "V": vocab, **data},
    )
