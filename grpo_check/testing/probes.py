"""Probe tasks: tiny fixed GRPO problems whose correct outputs are known in closed form.

In the spirit of Andy Jones' *probe environments* for RL debugging: each probe isolates one component
(advantages, ratio and clipping, KL estimator, loss aggregation), fixes the inputs, and states the exact
answer, derived in its docstring and computed here by plain arithmetic (``math``), never by calling the
reference implementation. A probe's :meth:`Probe.check` raises :class:`~grpo_check.findings.GRPOCheckError`
with an ``assert_close``-style message when your output differs.

Example::

    >>> from grpo_check.testing.probes import advantage_probe
    >>> probe = advantage_probe()
    >>> probe.expected()["advantages"][:4]
    tensor([-0.4999, -0.4999, -0.4999,  1.4997], dtype=torch.float64)
    >>> probe.check(my_advantages(probe.inputs()["rewards"], probe.spec.num_generations))  # doctest: +SKIP

Probes are also pytest fixtures (``grpo_probe_advantages``, ``grpo_probe_clip``, ...; see the plugin).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from grpo_check.config import GRPOSpec
from grpo_check.findings import Finding, GRPOCheckError, InputError
from grpo_check.testing._compare import call_by_names, compare_tensors

_STAGE_OF = {
    "advantages": "advantages",
    "ratio": "ratio",
    "clipped_ratio": "ratio",
    "is_low_clipped": "ratio",
    "is_high_clipped": "ratio",
    "clip_fraction": "ratio",
    "kl": "kl",
    "kl_grad": "grad",
    "per_token_loss": "loss",
    "loss": "loss",
    "logps_grad": "grad",
    "per_token_loss_grad": "grad",
}
_PER_TOKEN = {
    "ratio",
    "clipped_ratio",
    "is_low_clipped",
    "is_high_clipped",
    "kl",
    "kl_grad",
    "per_token_loss",
}
_PER_TOKEN |= {"logps_grad", "per_token_loss_grad"}


@dataclasses.dataclass(frozen=True)
class Probe:
    """A fixed problem with closed-form answers.

    Attributes:
        name: short id (``"advantages"``, ``"clip"``, ...).
        stage: the pipeline stage it isolates.
        spec: the configuration the closed forms assume (configure your function from it).
        input_values: the inputs as plain Python lists (see :meth:`inputs` for tensors).
        expected_values: the closed-form outputs as plain Python numbers/lists (see :meth:`expected`).
        primary: which expected quantity a bare tensor passed to :meth:`check` is compared with.
        grad_input: the input a loss-like output is differentiated by in :meth:`check_fn`.
        likely_causes: per quantity, what a mismatch usually means.
    """

    name: str
    stage: str
    spec: GRPOSpec
    input_values: Mapping[str, Any]
    expected_values: Mapping[str, Any]
    primary: str
    grad_input: str | None = None
    likely_causes: Mapping[str, str] = dataclasses.field(default_factory=dict)
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    description: str = ""

    def inputs(
        self, *, dtype: torch.dtype = torch.float64, requires_grad: bool = False
    ) -> dict[str, torch.Tensor]:
        """Fresh input tensors (float ones in ``dtype``); ``requires_grad`` makes :attr:`grad_input` a leaf."""
        out: dict[str, torch.Tensor] = {}
        for name, value in self.input_values.items():
            if name in ("group_index", "completion_mask"):
                out[name] = torch.tensor(value, dtype=torch.long)
            elif isinstance(value, (int, float)) and name == "num_generations":
                out[name] = value
            else:
                out[name] = torch.tensor(value, dtype=dtype)
        if requires_grad and self.grad_input is not None:
            out[self.grad_input] = out[self.grad_input].detach().requires_grad_(True)
        return out

    def expected(self) -> dict[str, torch.Tensor]:
        """The closed-form outputs as float64 tensors (booleans for clip masks)."""
        out = {}
        for name, value in self.expected_values.items():
            dtype = torch.bool if name.startswith("is_") else torch.float64
            out[name] = torch.tensor(value, dtype=dtype)
        return out

    def check(self, output: Any, *, rtol: float | None = None, atol: float | None = None) -> None:
        """Compare ``output`` with the closed forms; raise :class:`GRPOCheckError` on the first mismatch.

        ``output`` is either a tensor (compared with :attr:`primary`) or a mapping of quantity name to
        tensor; every name present is checked (``advantages``, ``ratio``, ``clipped_ratio``,
        ``is_low_clipped``, ``is_high_clipped``, ``clip_fraction``, ``kl``, ``kl_grad``, ``per_token_loss``,
        ``loss``, ``logps_grad``, ``per_token_loss_grad``: whichever this probe defines).
        """
        __tracebackhide__ = True
        for finding in self.findings(output, rtol=rtol, atol=atol):
            raise GRPOCheckError(finding)

    def findings(self, output: Any, *, rtol: float | None = None, atol: float | None = None) -> list[Finding]:
        """Like :meth:`check` but returns every mismatch as a Finding (empty when all agree)."""
        outputs = output if isinstance(output, Mapping) else {self.primary: output}
        unknown = sorted(set(outputs) - set(self.expected_values))
        if unknown:
            raise InputError(
                f"probe {self.name!r} has no expected value for {', '.join(unknown)}; "
                f"it defines {', '.join(sorted(self.expected_values))}"
            )
        expected = self.expected()
        mask = (
            torch.tensor(self.input_values["completion_mask"])
            if "completion_mask" in self.input_values
            else None
        )
        group_index = (
            torch.tensor(self.input_values["group_index"]) if "group_index" in self.input_values else None
        )
        found = []
        for name, value in outputs.items():
            finding = compare_tensors(
                value.float() if isinstance(value, torch.Tensor) and value.dtype == torch.bool else value,
                expected[name].double(),
                name=f"{name} (probe {self.name!r})",
                stage=_STAGE_OF.get(name, self.stage),
                check_id=f"probe.{self.name}.{name}",
                mask=mask if name in _PER_TOKEN and mask is not None else None,
                group_index=group_index,
                rtol=rtol,
                atol=atol,
                likely_cause=self.likely_causes.get(name),
                kind="probe",
            )
            if finding is not None:
                finding.details["probe"] = self.name
                finding.details["spec"] = self.spec.to_dict()
                found.append(finding)
        return found

    def check_fn(
        self, fn: Callable[..., Any], *, rtol: float | None = None, atol: float | None = None
    ) -> None:
        """Run ``fn`` on the probe inputs (arguments matched by name) and check what it returns.

        For probes with a :attr:`grad_input` (loss-like probes) a scalar output is also differentiated with
        respect to that input and the gradient checked (``logps_grad`` / ``per_token_loss_grad`` / ``kl_grad``).
        """
        __tracebackhide__ = True
        inputs = self.inputs(requires_grad=self.grad_input is not None)
        available: dict[str, Any] = {**inputs, "spec": self.spec, "config": self.spec, **self.meta}
        output = call_by_names(fn, available, order=tuple(self.input_values), stage=self.stage)
        outputs: dict[str, Any] = {}
        if isinstance(output, Mapping):
            outputs.update(output)
        else:
            outputs[self.primary] = output
        grad_name = f"{self.grad_input}_grad" if self.grad_input else None
        if grad_name == "logps_grad" and self.primary == "kl":
            grad_name = "kl_grad"
        value = outputs.get(self.primary)
        if grad_name in self.expected_values and isinstance(value, torch.Tensor) and grad_name not in outputs:
            leaf = inputs[self.grad_input]
            grad = None
            if value.requires_grad:
                (grad,) = torch.autograd.grad(value.sum() if value.dim() else value, leaf, allow_unused=True)
            # no graph back to the input (detached): the gradient the trainer applies is zero
            outputs[grad_name] = torch.zeros_like(leaf) if grad is None else grad
        self.check({k: v for k, v in outputs.items() if k in self.expected_values}, rtol=rtol, atol=atol)


def _aggregation_weight(spec: GRPOSpec, length: int, rows: int, tokens: int) -> float:
    """∂loss/∂per_token_loss for one unmasked token of a row of ``length`` tokens (closed form per mode)."""
    mode = spec.aggregation_effective
    if mode == "seq_mean_token_mean":
        return 1.0 / (rows * length)
    if mode == "token_mean":
        return 1.0 / tokens
    if mode == "seq_mean_token_sum_norm":
        if spec.max_completion_length is None:
            raise InputError("dr_grpo needs max_completion_length", field="max_completion_length")
        return 1.0 / (rows * spec.max_completion_length)
    return 1.0 / rows  # seq_mean_token_sum


def _sigma(std: str, sample: float, population: float) -> float:
    return sample if std == "sample" else population


def _check_advantage_spec(spec: GRPOSpec) -> None:
    if spec.baseline != "mean" or spec.multi_objective_aggregation != "sum_then_normalize":
        raise InputError("advantage probes support baseline='mean' with sum_then_normalize", field="baseline")
    if spec.scale_rewards == "batch":
        raise InputError("advantage probes support scale_rewards 'group' or 'none'", field="scale_rewards")


def _advantages(centered: list[float], sigmas: list[float], spec: GRPOSpec) -> list[float]:
    if spec.scale_rewards == "none":
        return centered
    return [c / (s + spec.adv_epsilon) for c, s in zip(centered, sigmas, strict=True)]


_ADV_CAUSES = {
    "advantages": (
        "compare the per-group ratio actual/expected: σ/(σ+ε) → wrong epsilon (bug-catalog S2); √(G/(G-1)) → "
        "population instead of sample std (10); a zero-variance group not 0 → degenerate std (9); the NaN row "
        "not 0 → NaN rewards leak into statistics (8); wrong rows → repeat vs repeat_interleave grouping (6)"
    )
}


def advantage_probe(spec: GRPOSpec | None = None) -> Probe:
    """Group-relative advantages, G = 4, three prompts (one binary, one zero-variance, one with a NaN).

    Inputs: ``rewards = [0,0,0,1 | 1,1,1,1 | 1,NaN,0,1]``, ``group_index = [0,0,0,0,1,1,1,1,2,2,2,2]``.

    Derivation (A = (r − μ)/(σ + ε), NaN rows left out of μ and σ and given A = 0):

    * prompt 0: μ = 1/4; Σ(r−μ)² = 3·(1/16) + 9/16 = 3/4, so sample σ = √((3/4)/3) = 1/2 and population
      σ = √((3/4)/4) = √3/4. Advantages (−1/4, −1/4, −1/4, 3/4)/(σ + ε): with ε → 0 and sample std that is
      (−½, −½, −½, 3/2).
    * prompt 1: every reward equal, σ = 0, so A = 0/(0 + ε) = 0 exactly (any ε > 0).
    * prompt 2: scorable rewards (1, 0, 1): μ = 2/3, Σ(r−μ)² = 1/9 + 4/9 + 1/9 = 2/3, sample σ = √(1/3),
      population σ = √2/3; A = (1/3, 0, −2/3, 1/3)/(σ + ε); the NaN row gets 0.

    ``spec`` chooses std convention, ε and ``scale_rewards`` (``"group"`` or ``"none"``: then A = r − μ).
    """
    spec = (spec or GRPOSpec(loss_type="grpo")).replace(num_generations=4)
    _check_advantage_spec(spec)
    sigma0 = _sigma(spec.std, 0.5, math.sqrt(3) / 4)
    sigma2 = _sigma(spec.std, math.sqrt(1 / 3), math.sqrt(2) / 3)
    expected = [
        *_advantages([-0.25, -0.25, -0.25, 0.75], [sigma0] * 4, spec),
        0.0,
        0.0,
        0.0,
        0.0,
        *_advantages([1 / 3, 0.0, -2 / 3, 1 / 3], [sigma2] * 4, spec),
    ]
    expected[9] = 0.0  # the NaN row
    nan = float("nan")
    return Probe(
        name="advantages",
        stage="advantages",
        spec=spec,
        input_values={
            "rewards": [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, nan, 0.0, 1.0],
            "group_index": [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2],
        },
        expected_values={"advantages": expected},
        primary="advantages",
        likely_causes=_ADV_CAUSES,
        meta={"num_generations": 4},
        description="G=4 advantages: binary group, zero-variance group, group with an unscorable (NaN) row",
    )


def advantage_pair_probe(spec: GRPOSpec | None = None) -> Probe:
    """The smallest advantage problem: G = 2, rewards ``[0, 1 | 5, 5]``.

    Prompt 0: μ = ½, deviations ∓½; sample σ = √((¼ + ¼)/1) = 1/√2, population σ = ½. So
    A = ∓½/(1/√2 + ε) ≈ ∓1/√2 (sample) or ∓½/(½ + ε) ≈ ∓1 (population). Prompt 1 has zero variance: A = 0.
    """
    spec = (spec or GRPOSpec(loss_type="grpo")).replace(num_generations=2)
    _check_advantage_spec(spec)
    sigma = _sigma(spec.std, 1 / math.sqrt(2), 0.5)
    expected = [*_advantages([-0.5, 0.5], [sigma, sigma], spec), 0.0, 0.0]
    return Probe(
        name="advantages_pair",
        stage="advantages",
        spec=spec,
        input_values={"rewards": [0.0, 1.0, 5.0, 5.0], "group_index": [0, 0, 1, 1]},
        expected_values={"advantages": expected},
        primary="advantages",
        likely_causes=_ADV_CAUSES,
        meta={"num_generations": 2},
        description="G=2 advantages: rewards 0/1 give ∓1/√2; an all-equal group gives exactly 0",
    )


def on_policy_probe(loss_type: str = "grpo") -> Probe:
    """First step on policy: ``logps == old_logps``, so every ratio is 1 and nothing is clipped.

    Two rows (one prompt, G = 2) of two tokens each, advantages (−1, +1), β = 0. Per-token loss
    ℓ = −min(ρA, clip(ρ)A) = −A, so row 0 has ℓ = +1 and row 1 ℓ = −1: the loss is exactly 0 for every
    aggregation (equal lengths, advantages summing to zero), yet the gradient is not: ∂L/∂logp = −ρA·w = −A·w
    with the per-token weight w of the loss type (grpo 1/(B·|o|) = 1/4; bnpo/dapo 1/Σ|o| = 1/4; dr_grpo
    1/(B·L_max) = 1/4 with L_max = 2; luspo 1/B = 1/2). "Loss ≈ 0" is not a bug (bug-catalog 31); a zero
    gradient, or sign(∂L/∂logp) ≠ −sign(A), is (21).
    """
    spec = GRPOSpec(num_generations=2, loss_type=loss_type, epsilon=0.2, beta=0.0, max_completion_length=2)
    w = _aggregation_weight(spec, 2, 2, 4)
    advantages = [-1.0, 1.0]
    return Probe(
        name="on_policy",
        stage="ratio",
        spec=spec,
        input_values={
            "logps": [[-1.0, -2.0], [-0.5, -1.5]],
            "old_logps": [[-1.0, -2.0], [-0.5, -1.5]],
            "advantages": advantages,
            "completion_mask": [[1, 1], [1, 1]],
            "group_index": [0, 0],
        },
        expected_values={
            "ratio": [[1.0, 1.0], [1.0, 1.0]],
            "clipped_ratio": [[1.0, 1.0], [1.0, 1.0]],
            "is_low_clipped": [[False, False], [False, False]],
            "is_high_clipped": [[False, False], [False, False]],
            "clip_fraction": 0.0,
            "per_token_loss": [[1.0, 1.0], [-1.0, -1.0]],
            "loss": 0.0,
            "logps_grad": [[-a * w for _ in range(2)] for a in advantages],
        },
        primary="loss",
        grad_input="logps",
        likely_causes={
            "ratio": "old log-probs taken at a different time or with dropout on (bug-catalog 15, 17)",
            "logps_grad": "a detached ratio, a sign error or a wrong normaliser (bug-catalog 21, 5)",
            "loss": "a non-zero on-policy loss with symmetric advantages: a sign, KL or normaliser error",
        },
        meta={"num_items_in_batch": 4, "max_completion_length": 2},
        description="on-policy step: ratio 1, clip fraction 0, loss exactly 0 but gradient ±w",
    )


def clip_probe(loss_type: str = "grpo") -> Probe:
    """PPO clipping with ε = 0.2: ratios (1, 1.5, 0.5) under advantage +1 (row 0) and −1 (row 1).

    ℓ = −min(ρA, clip(ρ, 0.8, 1.2)·A), and ∂ℓ/∂logp = −ρA where the unclipped branch is the minimum,
    0 where the clipped branch is (the gradient is cut):

    * row 0, A = +1: ρ = 1 → ℓ = −1, grad −1·w; ρ = 1.5 > 1.2 → min(1.5, 1.2) = 1.2, clipped: ℓ = −1.2,
      grad 0 (``is_high_clipped``); ρ = 0.5 → min(0.5, 0.8) = 0.5, unclipped: ℓ = −0.5, grad −0.5·w.
    * row 1, A = −1: ρ = 1 → ℓ = 1, grad +w; ρ = 1.5 → min(−1.5, −1.2) = −1.5, unclipped: ℓ = 1.5,
      grad +1.5·w; ρ = 0.5 < 0.8 → min(−0.5, −0.8) = −0.8, clipped: ℓ = 0.8, grad 0 (``is_low_clipped``).

    Loss = (−1 − 1.2 − 0.5 + 1 + 1.5 + 0.8)/6 = 0.1 for grpo/bnpo/dapo (w = 1/6) and dr_grpo with L_max = 3;
    luspo sums per sequence: (−2.7 + 3.3)/2 = 0.3 (w = ½). Clip fraction = 2/6 = 1/3.
    """
    spec = GRPOSpec(num_generations=2, loss_type=loss_type, epsilon=0.2, beta=0.0, max_completion_length=3)
    w = _aggregation_weight(spec, 3, 2, 6)
    ratios = [1.0, 1.5, 0.5]
    old = [[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]]
    per_token_loss = [[-1.0, -1.2, -0.5], [1.0, 1.5, 0.8]]
    return Probe(
        name="clip",
        stage="ratio",
        spec=spec,
        input_values={
            "logps": [[-1.0 + math.log(r) for r in ratios] for _ in range(2)],
            "old_logps": old,
            "advantages": [1.0, -1.0],
            "completion_mask": [[1, 1, 1], [1, 1, 1]],
            "group_index": [0, 0],
        },
        expected_values={
            "ratio": [ratios, ratios],
            "clipped_ratio": [[1.0, 1.2, 0.8], [1.0, 1.2, 0.8]],
            "is_low_clipped": [[False, False, False], [False, False, True]],
            "is_high_clipped": [[False, True, False], [False, False, False]],
            "clip_fraction": 2 / 6,
            "per_token_loss": per_token_loss,
            "loss": w * sum(sum(row) for row in per_token_loss),
            "logps_grad": [[-1.0 * w, 0.0, -0.5 * w], [1.0 * w, 1.5 * w, 0.0]],
        },
        primary="loss",
        grad_input="logps",
        likely_causes={
            "logps_grad": "clipping applied on the wrong side, clip-higher computed but not used, or max instead "
            "of min (bug-catalog 21)",
            "per_token_loss": "max instead of min in the surrogate, or clipping the wrong side (21)",
            "clip_fraction": "clip metric ignores the advantage sign or counts padding (bug-catalog 22)",
        },
        meta={"num_items_in_batch": 6, "max_completion_length": 3},
        description="clipping: ratio 1.5 with A>0 and 0.5 with A<0 are clipped (zero gradient), the others not",
    )


_LN2 = math.log(2.0)


def kl_probe(estimator: str = "k3") -> Probe:
    """Per-token KL estimators with δ = ref_logp − logp ∈ {0, ln 2, −ln 2} (π_ref/π ∈ {1, 2, ½}).

    * k1 = logp − ref = −δ → (0, −ln 2, ln 2); ∂/∂logp = 1.
    * k2 = ½(logp − ref)² → (0, ½ln²2, ½ln²2); ∂/∂logp = logp − ref = (0, −ln 2, ln 2).
    * k3 = e^δ − δ − 1 → (0, 1 − ln 2, ln 2 − ½); ∂/∂logp = 1 − e^δ = (0, −1, ½).

    ``kl_grad`` is ∂(Σ_t kl_t)/∂logp_t with ref_logps held fixed. An estimator whose gradient does not
    match the intended one is bug-catalog 18.
    """
    values = {
        "k1": ([0.0, -_LN2, _LN2], [1.0, 1.0, 1.0]),
        "k2": ([0.0, 0.5 * _LN2**2, 0.5 * _LN2**2], [0.0, -_LN2, _LN2]),
        "k3": ([0.0, 1.0 - _LN2, _LN2 - 0.5], [0.0, -1.0, 0.5]),
    }
    if estimator not in values:
        raise InputError(f"estimator must be k1, k2 or k3, got {estimator!r}", field="kl_estimator")
    kl, grad = values[estimator]
    return Probe(
        name="kl",
        stage="kl",
        spec=GRPOSpec(num_generations=1, beta=0.04, kl_estimator=estimator, loss_type="grpo"),
        input_values={
            "logps": [[-1.0, -1.0, -1.0]],
            "ref_logps": [[-1.0, -1.0 + _LN2, -1.0 - _LN2]],
            "completion_mask": [[1, 1, 1]],
        },
        expected_values={"kl": [kl], "kl_grad": [grad]},
        primary="kl",
        grad_input="logps",
        likely_causes={
            "kl": f"a different estimator than {estimator}, or logps and ref_logps swapped (bug-catalog 18)",
            "kl_grad": "the estimator's gradient is not the intended one (bug-catalog 18)",
        },
        description=f"{estimator} KL estimator on ratios π_ref/π = 1, 2, 1/2",
    )


def aggregation_probe(loss_type: str = "grpo") -> Probe:
    """Loss aggregation: two rows of lengths 1 and 3 (T = 3, L_max = 4), per-token loss (4 | 1, 2, 3).

    Masked positions hold 100 (a correct aggregation never sees them). Weight per token w = ∂L/∂ℓ_t:

    * grpo/sapo (mean over sequences of token means): row 0 → 1/(2·1) = ½, row 1 → 1/(2·3) = 1/6;
      L = ½·4 + ½·(6/3) = 3.
    * bnpo/dapo/cispo/vespo (token mean, Σ|o| = 4 = num_items_in_batch): ¼ each; L = 10/4 = 2.5.
    * dr_grpo (Σ ℓ / (B·L_max)): 1/8 each; L = 10/8 = 1.25.
    * luspo (mean over sequences of token sums): ½ each; L = (4 + 6)/2 = 5.

    Weights that depend on a row's length when they should not (or the reverse) are bug-catalog 5.
    """
    spec = GRPOSpec(num_generations=2, loss_type=loss_type, max_completion_length=4)
    lengths = [1, 3]
    weights = [[_aggregation_weight(spec, n, 2, 4) if t < n else 0.0 for t in range(3)] for n in lengths]
    values = [[4.0, 100.0, 100.0], [1.0, 2.0, 3.0]]
    loss = sum(
        w * v for wrow, vrow in zip(weights, values, strict=True) for w, v in zip(wrow, vrow, strict=True)
    )
    return Probe(
        name="aggregation",
        stage="loss",
        spec=spec,
        input_values={
            "per_token_loss": values,
            "completion_mask": [[1, 0, 0], [1, 1, 1]],
            "group_index": [0, 0],
        },
        expected_values={"loss": loss, "per_token_loss_grad": weights},
        primary="loss",
        grad_input="per_token_loss",
        likely_causes={
            "loss": f"an aggregation other than {spec.aggregation_effective} (loss_type={loss_type}), or padding "
            "counted (bug-catalog 5, 11)",
            "per_token_loss_grad": "per-token weights of the wrong aggregation mode (bug-catalog 5)",
        },
        meta={"num_items_in_batch": 4, "max_completion_length": 4},
        description=f"aggregation for loss_type={loss_type}: rows of lengths 1 and 3",
    )


def all_probes(spec: GRPOSpec | None = None) -> list[Probe]:
    """Every probe, configured from ``spec`` where a probe has a choice (std, ε, loss type, KL estimator)."""
    spec = spec or GRPOSpec(loss_type="grpo")
    return [
        advantage_probe(spec),
        advantage_pair_probe(spec),
        on_policy_probe(spec.loss_type if spec.loss_type in _CLIPPED else "grpo"),
        clip_probe(spec.loss_type if spec.loss_type in _CLIPPED else "grpo"),
        kl_probe(spec.kl_estimator),
        aggregation_probe(spec.loss_type),
    ]


_CLIPPED = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")

__all__ = [
    "Probe",
    "advantage_pair_probe",
    "advantage_probe",
    "aggregation_probe",
    "all_probes",
    "clip_probe",
    "kl_probe",
    "on_policy_probe",
]
