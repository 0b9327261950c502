"""Background checking: the float64 comparison and the invariants of captured steps, in a side process.

``attach(trainer, background=True)`` keeps on the training process only what needs the live trainer: capture
and the hand-off. Everything else that checking a step costs (the reference's forward passes, the
stage-isolated and end-to-end float64 comparisons, the diagnoses, the invariants) runs in one helper process
per training process, on an otherwise idle core, while training goes on. Findings arrive a few steps later;
:meth:`~grpo_check.trl.capture.Attachment.result` and ``close()`` wait for them.

The forward passes go to the helper with the weights they need, when the models allow it
(:func:`helper_forward_refusal`: a small model on the CPU, of a class transformers exports, in a
single-process run): the policy's weights once per checked accumulation window, the reference model's once.
The helper keeps its own copy of each model, and checks the window's micro-batches with it exactly as
inline checking does with the live model (diagnoses included). The first window is also scored on the
training process, and the helper compares its own forward passes with those: a copy that scores differently
turns the hand-off of forward passes off for the run (a note in ``live_problems``), and that window is
checked with the training process's log-probs. Otherwise (a large or GPU model, several processes) the
forward passes stay on the training process: one per accumulation window for the policy, one per
generation batch for the reference model, plus a quick comparison of the log-probs, and only the steps go
to the helper. A step whose log-probs then already disagree with the reference's forward pass is checked
on the training process instead (inline), because its diagnoses need the model as it is now (temperature,
token shift, position ids). So is a step when the helper already has ``max_pending`` checks waiting, or
has stopped.

Messages are length-prefixed frames over the helper's stdin/stdout: a JSON header plus the raw bytes of the
tensors (no pickle). The helper is ``python -m grpo_check.trl.background``; it imports transformers only
when it is sent a model.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import itertools
import json
import os
import queue
import struct
import subprocess
import sys
import threading
from typing import Any, BinaryIO

_FRAME = struct.Struct(">Q")  # payload length
_HEADER = struct.Struct(">I")  # JSON header length inside a payload


# ------------------------------------------------------------------------------------------ wire format
def encode(header: dict[str, Any], tensors: dict[str, Any]) -> bytes:
    """JSON ``header`` (with a ``"tensors"`` table added) followed by the tensors' raw bytes."""
    import torch

    table: dict[str, list[Any]] = {}
    blobs: list[bytes] = []
    offset = 0
    for name, tensor in tensors.items():
        t = tensor.detach().to("cpu").contiguous()
        dtype = str(t.dtype).removeprefix("torch.")
        raw = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes()
        table[name] = [dtype, list(t.shape), offset, len(raw)]
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps({**header, "tensors": table}).encode()
    return _HEADER.pack(len(text)) + text + b"".join(blobs)


def decode(payload: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """Inverse of :func:`encode`: (header, tensors)."""
    import numpy as np
    import torch

    header, length = _header(payload)
    body = memoryview(payload)[_HEADER.size + length :]
    tensors: dict[str, Any] = {}
    for name, (dtype, shape, offset, size) in header.pop("tensors").items():
        storage = "int16" if dtype == "bfloat16" else dtype
        array = np.frombuffer(body[offset : offset + size], dtype=_NUMPY_DTYPES[storage]).reshape(shape)
        tensor = torch.from_numpy(array.copy())
        tensors[name] = tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor
    return header, tensors


def _header(payload: bytes) -> tuple[dict[str, Any], int]:
    """The JSON header of an :func:`encode` payload, and its length in bytes."""
    (length,) = _HEADER.unpack_from(payload)
    return json.loads(payload[_HEADER.size : _HEADER.size + length]), length


_NUMPY_DTYPES = {
    "float64": "<f8",
    "float32": "<f4",
    "float16": "<f2",
    "int64": "<i8",
    "int32": "<i4",
    "int16": "<i2",
    "int8": "i1",
    "uint8": "u1",
    "bool": "?",
}


def _write_frame(stream: BinaryIO, payload: bytes) -> None:
    stream.write(_FRAME.pack(len(payload)) + payload)
    stream.flush()


def _read_frame(stream: BinaryIO) -> bytes | None:
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return None
    (length,) = _FRAME.unpack(head)
    payload = stream.read(length)
    return payload if len(payload) == length else None


# ------------------------------------------------------------------------------------------ the job
def check_job(payload: bytes) -> dict[str, Any]:
    """Run one submitted check (in the helper): compare_step + invariants on the step, with the reference's
    log-probs as computed by the training process. Returns the JSON-able reply."""
    from grpo_check.compare.stages import KnownLogps

    header, tensors = decode(payload)
    if header.get("prepare"):  # ahead of the first model: importing transformers takes seconds
        with contextlib.suppress(ImportError):
            import transformers  # noqa: F401
    if header.get("ping"):
        return {"id": header["id"], "pong": True}
    if "prepare" in header:
        return {"id": header["id"], "prepared": True}
    if "model" in header:
        _load_model(header["model"], tensors)
        return {"id": header["id"], "loaded": header["model"]["role"]}
    if "forget" in header:
        for key in header["forget"]:
            _HELPER_MODELS.pop(key, None)
        return {"id": header["id"], "forgotten": header["forget"]}
    if "window" in header:
        return _check_window(header, tensors)
    known = {name[len("known.") :]: t for name, t in tensors.items() if name.startswith("known.")}
    step = _step_from(
        header["step"], {name: t for name, t in tensors.items() if not name.startswith("known.")}
    )
    temperature = float(header["temperature"])
    model = KnownLogps(None, known["logps"], temperature) if "logps" in known else None
    ref_model = KnownLogps(None, known["ref_logps"], temperature) if "ref_logps" in known else None
    spec, settings = _settings(header)
    return {"id": header["id"], **_step_reply(step, spec, settings, model=model, ref_model=ref_model)}


def step_description(step: Any) -> dict[str, Any]:
    """What a job's header says of a step besides its tensors (training process side; :func:`_step_from`
    rebuilds the step from it)."""
    from grpo_check.trace.io import to_jsonable

    return {
        "meta": to_jsonable(step.meta),
        "completion_text": step.completion_text,
        "prompt_text": step.prompt_text,
    }


def _step_from(described: dict[str, Any], tensors: dict[str, Any]) -> Any:
    """The :class:`TraceStep` a job describes: its tensors, plus texts and meta (:func:`step_description`)."""
    from grpo_check.trace.model import TraceStep

    return TraceStep(
        tensors=tensors,
        completion_text=described["completion_text"],
        prompt_text=described["prompt_text"],
        meta=described["meta"],
    )


def _settings(header: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """(spec, the other keyword arguments of :func:`check_captured_step`) from a job's header."""
    from grpo_check.compare.tolerances import TolerancePolicy
    from grpo_check.config import GRPOSpec

    tolerances = header.get("tolerances")
    return GRPOSpec.from_dict(header["spec"]), {
        "tolerances": None if tolerances is None else TolerancePolicy(**tolerances),
        "invariants": bool(header["invariants"]),
    }


def _step_reply(
    step: Any, spec: Any, settings: dict[str, Any], *, model: Any, ref_model: Any
) -> dict[str, Any]:
    """:func:`check_captured_step` on one step, as the JSON-able part of a reply."""
    findings, not_captured = check_captured_step(step, spec, model=model, ref_model=ref_model, **settings)
    return {"findings": [finding.to_dict() for finding in findings], "not_captured": not_captured}


def check_captured_step(
    step: Any, spec: Any, *, model: Any, ref_model: Any, tolerances: Any, invariants: bool
) -> tuple[list[Any], list[str]]:
    """What checking one captured step means, inline or in the helper: ``compare_step`` (stage-isolated and
    end-to-end float64 reference, diagnoses) plus the invariants. Returns (findings, ids of the invariants
    whose inputs TRL does not expose: counted, not reported)."""
    engine = _ENGINE or _load_engine()
    step_cache, compare_step, run_invariants, run_step_into, trace_step, not_captured_verdict = engine
    not_captured: list[str] = []
    with step_cache(step):  # the comparison and the invariants share the step's float64 copies
        if tolerances is None:
            findings = list(compare_step(step, spec, model=model, ref_model=ref_model))
        else:
            findings = list(compare_step(step, spec, model=model, ref_model=ref_model, tolerances=tolerances))
        if not invariants:
            pass
        elif isinstance(step, trace_step):  # = run_invariants(step, spec), its NOT_CAPTURED findings as ids
            run_step_into(findings, not_captured, step, spec)
        else:
            for finding in run_invariants(step, spec):
                if finding.verdict is not_captured_verdict:
                    not_captured.append(finding.check_id)
                else:
                    findings.append(finding)
    if step.meta.get("scope") == "micro_batch" and step.has("extra.group_index"):
        # partial groups: the advantage stage is checked on the generation step (whole groups), and
        # trl.advantages_slice ties these rows to it; a "not captured" here would only be noise
        findings = [
            f
            for f in findings
            if not (f.check_id == "advantages.values" and f.verdict is not_captured_verdict)
        ]
    return findings, not_captured


# what check_captured_step calls, imported on its first call (this module imports no torch until then) and
# kept: an import statement in the function would cost import-machinery calls on every checked step
_ENGINE: tuple[Any, Any, Any, Any, Any, Any] | None = None


def _load_engine() -> tuple[Any, Any, Any, Any, Any, Any]:
    global _ENGINE
    from grpo_check._step_cache import step_cache
    from grpo_check.compare import compare_step
    from grpo_check.findings import Verdict
    from grpo_check.invariants import run_invariants
    from grpo_check.invariants.registry import run_step_into
    from grpo_check.trace.model import TraceStep

    _ENGINE = (step_cache, compare_step, run_invariants, run_step_into, TraceStep, Verdict.NOT_CAPTURED)
    return _ENGINE


# ------------------------------------------------------------------------------------------ forwards in the helper
HELPER_FORWARD_MAX_BYTES = 64 * 2**20
"""Largest policy + reference model (parameter and buffer bytes) whose weights go to the helper with each
checked window; above it the forward passes stay on the training process."""

_FORWARD_AGREEMENT = 1e-5
"""Largest |Δ log-prob| between the helper's copy of a model and the model itself on the first window (float32
forwards on different thread counts differ by a few ulps; a wrong copy by far more)."""

# the helper's copies of the models, by key ("<attachment>.policy", "<attachment>.ref"): (what they were built
# from, the model); the least recently used go beyond _HELPER_MODELS_KEPT (attachments forget theirs on close)
_HELPER_MODELS: collections.OrderedDict[str, tuple[str, Any]] = collections.OrderedDict()
_HELPER_MODELS_KEPT = 8


def helper_forward_refusal(*models: Any) -> str | None:
    """Why the helper cannot run the forward passes of ``models`` (``None`` entries skipped), or ``None``.

    It can for a model it can rebuild from its config and weights alone and that is cheap to send: an
    ``nn.Module`` of a class ``transformers`` exports, every parameter and buffer a plain tensor on the CPU,
    ``HELPER_FORWARD_MAX_BYTES`` in all.
    """
    import torch

    total = 0
    for model in models:
        if model is None:
            continue
        name = type(model).__name__
        try:
            import transformers

            exported = getattr(transformers, name, None) is type(model)
        except ImportError:
            exported = False
        if not isinstance(model, torch.nn.Module) or not exported or not hasattr(model, "config"):
            return f"{name} is not a model class that transformers exports"
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            if tensor.device.type != "cpu":
                return f"{name} is on {tensor.device.type}"
            if type(tensor.data) is not torch.Tensor or tensor.numel() == 0:
                return f"{name} has sharded or non-plain tensors"
            total += tensor.numel() * tensor.element_size()
    if total > HELPER_FORWARD_MAX_BYTES:
        return f"the models hold {total / 2**20:.0f} MiB (more than {HELPER_FORWARD_MAX_BYTES // 2**20} MiB to send)"
    return None


def model_message(model: Any, role: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, tensors) that give the helper its copy of ``model`` under the key ``role`` (training process
    side; a later message with the same key updates the weights)."""
    description = {
        "role": role,
        "architecture": type(model).__name__,
        "config": json.loads(model.config.to_json_string(use_diff=False)),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }
    return {"model": description}, {name: tensor.detach() for name, tensor in model.state_dict().items()}


def _load_model(description: dict[str, Any], state: dict[str, Any]) -> None:
    """Build (once per architecture and config) or update the helper's copy of a model (helper side)."""
    import torch
    import transformers

    key = json.dumps(
        [description[k] for k in ("architecture", "config", "attn_implementation", "dtype")], sort_keys=True
    )
    held = _HELPER_MODELS.get(description["role"])
    if held is None or held[0] != key:
        config_dict = description["config"]
        config_class = type(transformers.AutoConfig.for_model(config_dict["model_type"]))
        config = config_class.from_dict(config_dict)
        attention = description["attn_implementation"]
        kwargs = {} if attention is None else {"attn_implementation": attention}
        model = getattr(transformers, description["architecture"])._from_config(config, **kwargs)
        model.to(getattr(torch, description["dtype"]))
        model.eval()
        held = (key, model)
    with torch.no_grad():
        held[1].load_state_dict(state, strict=True)
    _HELPER_MODELS[description["role"]] = held
    _HELPER_MODELS.move_to_end(description["role"])
    while len(_HELPER_MODELS) > _HELPER_MODELS_KEPT:
        _HELPER_MODELS.popitem(last=False)


def _check_window(header: dict[str, Any], tensors: dict[str, Any]) -> dict[str, Any]:
    """Check the micro-batches of one accumulation window with the helper's copies of the models: one
    forward pass of each over the window's rows, then :func:`check_captured_step` per micro-batch."""
    import torch

    from grpo_check.compare.stages import KnownLogps, model_logps, window_known_logps

    steps = [
        _step_from(
            described,
            {name[len(f"{index}/") :]: t for name, t in tensors.items() if name.startswith(f"{index}/")},
        )
        for index, described in enumerate(header["window"])
    ]
    temperature = float(header["temperature"])
    models: dict[str, list[Any]] = {}
    for name, role in header["models"].items():  # "logps" / "ref_logps" -> the model's key, or None
        if role is None:
            models[name] = [None] * len(steps)
            continue
        held = _HELPER_MODELS.get(role)
        if held is None:
            raise RuntimeError(f"the helper has no copy of model {role}")
        _HELPER_MODELS.move_to_end(role)
        with torch.no_grad():
            models[name] = window_known_logps(held[1], steps, temperature)
    mismatch = None
    for index, step in enumerate(steps):  # the first window: the helper's copies must score as the models do
        for name, per_step in models.items():
            expected = tensors.get(f"expect/{index}/{name}")
            if expected is None:
                continue
            own = per_step[index]
            with torch.no_grad():
                logps = own.logps if isinstance(own, KnownLogps) else model_logps(own, step, temperature)
            differs = (
                float("inf")
                if logps is None or logps.shape != expected.shape
                else _largest_difference(logps, expected)
            )
            if not differs <= _FORWARD_AGREEMENT:  # checked with the training process's log-probs instead
                mismatch = differs if mismatch is None else max(mismatch, differs)
                per_step[index] = KnownLogps(None, expected, temperature)
    spec, settings = _settings(header)
    results = [
        _step_reply(step, spec, settings, model=models["logps"][index], ref_model=models["ref_logps"][index])
        for index, step in enumerate(steps)
    ]
    return {"id": header["id"], "steps": results, "forward_mismatch": mismatch}


def _largest_difference(got: Any, want: Any) -> float:
    """max |got − want|, where a NaN on both sides (a row a row-subset forward did not run) counts as equal and a
    NaN on one side only as NaN."""
    import torch

    got, want = got.double(), want.double()
    both = torch.isnan(got) & torch.isnan(want)
    if bool(both.all()):
        return 0.0
    return float(torch.where(both, 0.0, (got - want).abs()).max())


def serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """The helper's loop: one reply frame per request frame, until stdin closes."""
    import torch

    torch.set_num_threads(1)
    with contextlib.suppress(OSError, AttributeError):
        os.nice(10)  # idle cycles only: training keeps its priority
    while True:
        payload = _read_frame(stdin)
        if payload is None:
            return
        try:
            reply = check_job(payload)
        except Exception as error:  # reported to the training process, which checks that step inline
            header_id = None
            with contextlib.suppress(Exception):
                header_id = _header(payload)[0]["id"]
            reply = {"id": header_id, "error": f"{type(error).__name__}: {error}"}
        _write_frame(stdout, json.dumps(reply).encode())


# ------------------------------------------------------------------------------------------ the client
def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports one, else the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def no_free_core_warning(torch_threads: int, cores: int) -> str | None:
    """Why background checking will slow training down instead of hiding its cost, or ``None``.

    The helper is meant to run on an otherwise idle core. When torch's intra-op threads already take every
    core, the helper takes CPU time from them, and a parallel op waits for its slowest thread: on a 2-core
    machine that costs more than checking inline (``grpo-check bench --only overhead`` measures both).
    """
    if torch_threads < cores:
        return None
    if cores <= 1:
        return "background checking on a 1-core machine takes CPU time from training: check inline instead"
    return (
        f"background checking has no core of its own: torch uses {torch_threads} threads on {cores} cores, so "
        "the helper takes CPU time from training and can slow it more than inline checking; leave a core free "
        f"with torch.set_num_threads({cores - 1}), or check inline"
    )


def _warn_without_a_free_core() -> None:
    import logging

    import torch

    message = no_free_core_warning(torch.get_num_threads(), available_cores())
    if message is not None:
        logging.getLogger("grpo_check.trl").warning("grpo-check: %s", message)


class BackgroundChecker:
    """The training process's side of one helper process (started on first use, shared by attachments)."""

    def __init__(self, max_pending: int = 32) -> None:
        self.max_pending = max_pending
        self._process: subprocess.Popen[bytes] | None = None
        self._outgoing: queue.Queue[bytes | None] = queue.Queue()
        self._replies: dict[int, dict[str, Any]] = {}
        self._pending: set[int] = set()
        self._unawaited: set[int] = set()  # jobs whose replies are dropped
        self._next_id = 0
        self._condition = threading.Condition()
        self.problem: str | None = None

    def _start(self) -> None:
        _warn_without_a_free_core()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        env.setdefault("OMP_NUM_THREADS", "1")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "grpo_check.trl.background"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        threading.Thread(target=self._write_loop, name="grpo-check-background-writer", daemon=True).start()
        threading.Thread(target=self._read_loop, name="grpo-check-background-reader", daemon=True).start()

    @property
    def alive(self) -> bool:
        return self.problem is None

    def submit(self, header: dict[str, Any], tensors: dict[str, Any], *, awaited: bool = True) -> int | None:
        """Queue one job; its id, or ``None`` when the helper is too far behind or has stopped. The reply to a
        job not ``awaited`` is dropped when it comes (nobody asks :meth:`replies` for it)."""
        with self._condition:
            if self.problem is not None or len(self._pending) >= self.max_pending:
                return None
            job_id = self._next_id
            self._next_id += 1
            self._pending.add(job_id)
            if not awaited:
                self._unawaited.add(job_id)
        if self._process is None:
            try:
                self._start()
            except OSError as error:
                self._stop(f"background checker could not start ({error})")
                with self._condition:
                    self._pending.discard(job_id)
                    self._unawaited.discard(job_id)
                return None
        self._outgoing.put(encode({**header, "id": job_id}, tensors))
        return job_id

    def replies(self, job_ids: set[int], *, wait: bool, timeout: float = 600.0) -> dict[int, dict[str, Any]]:
        """Replies that have arrived for ``job_ids`` (all of them when ``wait``; jobs lost with a stopped
        helper come back as errors)."""
        with self._condition:
            if wait:
                self._condition.wait_for(
                    lambda: self.problem is not None or job_ids.isdisjoint(self._pending), timeout=timeout
                )
            out = {i: self._replies.pop(i) for i in list(job_ids) if i in self._replies}
            if self.problem is not None or wait:  # what is still pending now will not come
                for lost in job_ids & self._pending:
                    self._pending.discard(lost)
                    out[lost] = {"id": lost, "error": self.problem or f"no reply within {timeout:g} s"}
            return out

    def prepare(self, models: bool) -> None:
        """Start the helper now, without waiting for it; with ``models``, it also imports what its copies of
        the models need (transformers) while training starts."""
        self.submit({"prepare": models}, {}, awaited=False)

    def warm(self, timeout: float = 120.0, *, models: bool = False) -> bool:
        """Start the helper and wait until it answers (so its start-up costs no training step); with
        ``models``, until it has also imported what its copies of the models need."""
        job = self.submit({"ping": True, "prepare": models}, {})
        if job is None:
            return False
        reply = self.replies({job}, wait=True, timeout=timeout).get(job, {})
        return bool(reply.get("pong"))

    def close(self) -> None:
        if self._process is None:
            return
        self._outgoing.put(None)
        with contextlib.suppress(Exception):
            self._process.wait(timeout=10)
        if self._process.poll() is None:
            self._process.kill()
        self._process = None

    def _write_loop(self) -> None:
        process = self._process
        assert process is not None and process.stdin is not None
        while True:
            payload = self._outgoing.get()
            if payload is None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
                return
            try:
                _write_frame(process.stdin, payload)
            except OSError as error:
                self._stop(f"background checker unreachable ({error})")
                return

    def _read_loop(self) -> None:
        process = self._process
        assert process is not None and process.stdout is not None
        while True:
            payload = _read_frame(process.stdout)
            if payload is None:
                code = process.poll()
                self._stop(
                    f"background checker exited (code {code})" if code else "background checker closed"
                )
                return
            reply = json.loads(payload)
            with self._condition:
                job_id = reply.get("id")
                if job_id is None:  # an unreadable request: nothing to route it to
                    continue
                self._pending.discard(job_id)
                if job_id in self._unawaited:
                    self._unawaited.discard(job_id)
                else:
                    self._replies[job_id] = reply
                self._condition.notify_all()

    def _stop(self, problem: str) -> None:
        with self._condition:
            if self.problem is None:
                self.problem = problem
            self._condition.notify_all()


_SHARED: BackgroundChecker | None = None
_SHARED_LOCK = threading.Lock()


def shared_checker() -> BackgroundChecker:
    """The process's helper (one per training process, reused by every attachment; a stopped one is replaced)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None or not _SHARED.alive:
            _SHARED = BackgroundChecker()
            atexit.register(_SHARED.close)
        return _SHARED


if __name__ == "__main__":  # the helper process
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but frames on the pipe
    serve(sys.stdin.buffer, out)
