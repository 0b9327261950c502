"""Traces on disk: a directory of safetensors + JSON files, written atomically, validated on load.

Layout (specified in ``reference/trace-format.md``)::

    run1/
      manifest.json                        format, version, trainer, GRPOSpec, trainer config, versions, seeds
      steps/000003-mb01-r0.safetensors     the named tensors of step 3, micro-batch 1, rank 0
      steps/000003-mb01-r0.json            meta, completion/prompt text, tensor list (dtype, shape, bytes),
                                           sha256 of the .safetensors file

Every file is written to a temporary file in the same directory, fsync'ed and ``os.replace``'d into place,
so a crash mid-run leaves every step that was already written readable. A step's ``.json`` is written after
its ``.safetensors`` and is the step's commit marker: a ``.safetensors`` without its ``.json`` is an
unfinished write and is reported, never half-read. Nothing is ever pickled.

This module gathers the public names of the trace's files: :mod:`~grpo_check.trace.format` (names,
shape families, manifest), :mod:`~grpo_check.trace.files` (atomic writes), :mod:`~grpo_check.trace.writer`
(:class:`TraceWriter`, :func:`save_trace`), :mod:`~grpo_check.trace.reader` (:func:`load_trace`) and
:mod:`~grpo_check.trace.validate` (the checks the reader and the writers share).

Example::

    >>> import tempfile, torch
    >>> from grpo_check.trace.model import Trace, TraceStep
    >>> from grpo_check.trace.io import save_trace, load_trace
    >>> step = TraceStep(tensors={"completion_ids": torch.tensor([[5, 6]]),
    ...                           "completion_mask": torch.tensor([[1, 0]])}, meta={"step": 0})
    >>> out = tempfile.mkdtemp()
    >>> _ = save_trace(Trace(manifest={"trainer": "demo"}, steps=[step]), out, overwrite=True)
    >>> load_trace(out).steps[0]["completion_mask"].tolist()
    [[1, 0]]
"""

from __future__ import annotations

import os  # noqa: F401 (tests patch trace.io.os)

from grpo_check.trace.files import (
    _UMASK,  # noqa: F401 (read by tests)
    OutputPathError,
    atomic_write_bytes,
    atomic_write_text,
)
from grpo_check.trace.format import (
    B_TENSORS,
    BP_TENSORS,
    BT_OR_B1_TENSORS,
    BT_TENSORS,
    FLOAT_TENSORS,
    FORMAT_NAME,
    FORMAT_VERSION,
    ID_TENSORS,
    MANIFEST_FILE,
    MASK_TENSORS,
    SCALAR_TENSORS,
    STEP_FORMAT_NAME,
    STEPS_DIR,
    build_manifest,
    library_versions,
    step_entry_name,
    to_jsonable,
    utc_now,
)
from grpo_check.trace.reader import MANIFEST_FIELD_KINDS, load_trace
from grpo_check.trace.validate import (
    INT_LIST_META_KEYS,
    INT_META_KEYS,
    NUMBER_META_KEYS,
    batch_rows,
    meta_type_problems,
    step_value_problems,
    tensor_names,
    text_row_problems,
    validate_step_tensors,
)
from grpo_check.trace.writer import TraceWriter, save_trace

__all__ = [
    "BP_TENSORS",
    "BT_OR_B1_TENSORS",
    "BT_TENSORS",
    "B_TENSORS",
    "FLOAT_TENSORS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ID_TENSORS",
    "INT_LIST_META_KEYS",
    "INT_META_KEYS",
    "MANIFEST_FIELD_KINDS",
    "MANIFEST_FILE",
    "MASK_TENSORS",
    "NUMBER_META_KEYS",
    "SCALAR_TENSORS",
    "STEPS_DIR",
    "STEP_FORMAT_NAME",
    "OutputPathError",
    "TraceWriter",
    "atomic_write_bytes",
    "atomic_write_text",
    "batch_rows",
    "build_manifest",
    "library_versions",
    "load_trace",
    "meta_type_problems",
    "save_trace",
    "step_entry_name",
    "step_value_problems",
    "tensor_names",
    "text_row_problems",
    "to_jsonable",
    "utc_now",
    "validate_step_tensors",
]
