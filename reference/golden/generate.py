"""Generate the golden vectors in this folder (and the packaged copy) from an INDEPENDENT implementation.

Every expected value here is computed with plain Python floats and the ``math`` module, from the formulas of
``reference/grpo-algorithm.md`` — never by calling ``grpo_check.reference``. Gradients are central finite
differences with Richardson extrapolation (error ~1e-11) of the plain-Python loss, holding fixed exactly
the quantities the objective detaches (old log-probs on-policy, masks, CISPO/VESPO weights).

Run from the repository root:  ``.venv/bin/python reference/golden/generate.py``
"""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from grpo_check.config import GRPOSpec  # noqa: E402  (only the dataclass defaults)
from grpo_check.reference.golden import FORMAT, encode_tensor  # noqa: E402  (JSON encoding only)

NAN = float("nan")
DEFAULT_SPEC = GRPOSpec()


def isnan(x: float) -> bool:
    return isinstance(x, float) and math.isnan(x)


# ================================================================ plain-Python advantages (R1, A1–A8)


def py_mean(values: list[float]) -> float:
    """Mean of the non-NaN values, shifted by their minimum (A1): exact for all-equal values."""
    vals = [v for v in values if not isnan(v)]
    if not vals:
        return NAN
    c = min(vals)
    return c + sum(v - c for v in vals) / len(vals)


def py_std(values: list[float], kind: str) -> float:
    vals = [v for v in values if not isnan(v)]
    n = len(vals)
    dof = n - 1 if kind == "sample" else n
    if dof <= 0:
        return NAN
    mean = py_mean(vals)
    return math.sqrt(sum((v - mean) ** 2 for v in vals) / dof)


def py_advantages(rewards, group_index, spec: GRPOSpec, weights=None):
    rows, funcs = len(rewards), len(rewards[0])
    w = (
        list(weights)
        if weights is not None
        else (list(spec.reward_weights) if spec.reward_weights else [1.0] * funcs)
    )
    scorable = [not all(isnan(v) for v in row) for row in rewards]
    total = [
        sum(w[k] * row[k] for k in range(funcs) if not isnan(row[k])) if scorable[i] else NAN
        for i, row in enumerate(rewards)
    ]
    members = {g: [i for i in range(rows) if group_index[i] == g] for g in set(group_index)}
    adv, base, scale = [0.0] * rows, [NAN] * rows, [NAN] * rows
    if spec.multi_objective_aggregation == "sum_then_normalize":
        for i in range(rows):
            group = members[group_index[i]]
            vals = [total[j] for j in group if not isnan(total[j])]
            n = len(vals)
            if spec.baseline == "mean":
                b = py_mean(vals)
            else:
                others = [total[j] for j in group if j != i and not isnan(total[j])]
                b = sum(others) / len(others) if others else NAN
            s = py_std(vals, spec.std) if spec.scale_rewards != "batch" else py_std(total, spec.std)
            a = total[i] - b
            if spec.scale_rewards != "none":
                a = a / (s + spec.adv_epsilon)
            if n <= 1 or not scorable[i] or isnan(a):
                a = 0.0
            adv[i], base[i], scale[i] = a, b, s
    else:
        z = [[NAN] * funcs for _ in range(rows)]
        for k in range(funcs):
            for i in range(rows):
                col = [rewards[j][k] for j in members[group_index[i]]]
                m, s = py_mean(col), py_std(col, spec.std)
                z[i][k] = (rewards[i][k] - m) / (s + spec.adv_epsilon) if not isnan(s) else NAN
        centred = [
            sum(w[k] * z[i][k] for k in range(funcs) if not isnan(z[i][k])) if scorable[i] else NAN
            for i in range(rows)
        ]
        m, s = py_mean(centred), py_std(centred, spec.std)
        for i in range(rows):
            a = (centred[i] - m) / (s + spec.adv_epsilon)
            adv[i] = 0.0 if (isnan(a) or not scorable[i]) else a
            base[i], scale[i] = m, s
    return {"rewards": total, "advantages": adv, "group_mean": base, "group_std": scale, "scorable": scorable}


# ======================================================================= plain-Python log-probs (L1–L6)


def py_log_softmax(z: list[float], temperature: float) -> list[float]:
    scaled = [v / temperature for v in z]
    top = max(scaled)
    lse = top + math.log(sum(math.exp(v - top) for v in scaled))
    return [v - lse for v in scaled]


def py_logps_entropy(logits, ids, temperature):
    logps, entropy = [], []
    for row_logits, row_ids in zip(logits, ids, strict=False):
        lp_row, h_row = [], []
        for z, y in zip(row_logits, row_ids, strict=False):
            lp = py_log_softmax(z, temperature)
            lp_row.append(lp[y])
            h_row.append(-sum(math.exp(v) * v for v in lp))
        logps.append(lp_row)
        entropy.append(h_row)
    return logps, entropy


def py_kept(z: list[float], temperature, top_p, top_k, min_p, order):
    scores = [v / temperature for v in z]
    keep = [True] * len(z)

    def renorm():
        kept = [scores[v] for v in range(len(z)) if keep[v]]
        top = max(kept)
        norm = sum(math.exp(s - top) for s in kept)
        return [math.exp(scores[v] - top) / norm if keep[v] else 0.0 for v in range(len(z))]

    def top_k_step():
        if top_k and 0 < top_k < len(z):
            kept = sorted((scores[v] for v in range(len(z)) if keep[v]), reverse=True)
            kth = kept[min(top_k, len(kept)) - 1]
            for v in range(len(z)):
                keep[v] = keep[v] and scores[v] >= kth

    def top_p_step():
        if top_p < 1.0:
            probs = renorm()
            order_idx = sorted(range(len(z)), key=lambda v: (probs[v], scores[v]))
            cumulative = 0.0
            for rank, v in enumerate(order_idx):
                cumulative += probs[v]
                if cumulative <= 1.0 - top_p and rank != len(z) - 1:
                    keep[v] = False

    def min_p_step():
        if min_p:
            probs = renorm()
            best = max(probs)
            for v in range(len(z)):
                keep[v] = keep[v] and probs[v] >= min_p * best

    steps = [top_k_step, top_p_step, min_p_step] if order == "hf" else [min_p_step, top_k_step, top_p_step]
    for step in steps:
        step()
    full = py_log_softmax(z, temperature)
    return sum(math.exp(full[v]) for v in range(len(z)) if keep[v]), keep


# ===================================================================== plain-Python KL and the loss step


def py_kl(logp, ref, estimator):
    x = ref - logp
    if estimator == "k1":
        return -x
    if estimator == "k2":
        return 0.5 * x * x
    return math.expm1(x) - x


def py_quantile(values, q):
    vals = sorted(values)
    pos = q * (len(vals) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(vals) - 1)
    return vals[lo] + (vals[hi] - vals[lo]) * (pos - lo)


def _frozen(inputs, spec):
    """Quantities computed at the base point and treated as constants by the objective's gradient."""
    logps, mask = inputs["logps"], inputs["loss_mask"]
    rows, length = len(logps), len(logps[0])
    old = inputs.get("old_logps") or [list(r) for r in logps]
    adv = inputs["advantages"]
    frozen = {"old": old}
    if spec.off_policy_mask_threshold is not None:
        sampler = inputs.get("sampler_logps") or old
        keep = []
        for i in range(rows):
            n = max(sum(mask[i]), 1.0)
            d = sum(
                (0.0 if isnan(sampler[i][t] - logps[i][t]) else sampler[i][t] - logps[i][t]) * mask[i][t]
                for t in range(length)
            )
            keep.append(1.0 if (adv[i] >= 0 or d / n <= spec.off_policy_mask_threshold) else 0.0)
        frozen["off"] = keep
    if spec.top_entropy_quantile < 1.0:
        ent = inputs["entropies"]
        pool = [ent[i][t] for i in range(rows) for t in range(length) if mask[i][t]]
        thr = py_quantile(pool, 1.0 - spec.top_entropy_quantile)
        frozen["ent"] = [
            [1.0 if (mask[i][t] and ent[i][t] * mask[i][t] >= thr) else 0.0 for t in range(length)]
            for i in range(rows)
        ]
    is_ratio = inputs.get("sampler_is_ratio")
    if is_ratio is None and spec.sampler_is_correction:
        sampler = inputs["sampler_logps"]
        diffs = [[(old[i][t] - sampler[i][t]) * mask[i][t] for t in range(length)] for i in range(rows)]
        sequence = spec.sampler_is_mode.startswith("sequence")
        is_ratio = []
        for i in range(rows):
            vals = [sum(diffs[i])] if sequence else diffs[i]
            row = []
            for d in vals:
                w = math.exp(d)
                lo = spec.sampler_is_clip_min if spec.sampler_is_clip_min is not None else -math.inf
                hi = spec.sampler_is_clip_max if spec.sampler_is_clip_max is not None else math.inf
                if spec.sampler_is_mode.endswith("truncate"):
                    w = min(max(w, lo), hi)
                elif w < lo or w > hi:
                    w = 0.0
                row.append(w)
            is_ratio.append(row)
    frozen["is"] = is_ratio
    if spec.loss_type == "vespo":
        phis = []
        for i in range(rows):
            s = sum(min(max(logps[i][t] - old[i][t], -20.0), 20.0) * mask[i][t] for t in range(length))
            if is_ratio is not None:
                s += sum(
                    min(max(math.log(w) if w > 0 else -math.inf, math.log(1e-8)), 20.0) for w in is_ratio[i]
                )
            log_w = min(max(s, math.log(1e-8)), 20.0)
            k, lam = (
                (spec.vespo_k_pos, spec.vespo_lambda_pos)
                if adv[i] >= 0
                else (spec.vespo_k_neg, spec.vespo_lambda_neg)
            )
            lam = max(lam, 1e-4)
            phi = math.exp(lam + k * log_w - lam * math.exp(log_w))
            phis.append(phi if math.isfinite(phi) else 0.0)
        frozen["phi"] = phis
    if spec.loss_type == "cispo":
        frozen["cispo_w"] = [
            [min(r, spec.epsilon_high_effective) for r in row] for row in _ratios(logps, old, mask, spec)
        ]
    return frozen


def _ratios(logps, old, mask, spec):
    rows, length = len(logps), len(logps[0])
    if spec.importance_sampling_level == "token":
        return [[math.exp(logps[i][t] - old[i][t]) for t in range(length)] for i in range(rows)]
    out = []
    for i in range(rows):
        n = max(sum(mask[i]), 1.0)
        out.append([math.exp(sum((logps[i][t] - old[i][t]) * mask[i][t] for t in range(length)) / n)])
    return out


def py_step_values(logps, inputs, spec, meta, frozen):
    """Plain-Python forward of the whole loss stage at ``logps`` (others from ``inputs`` / ``frozen``)."""
    mask, adv, old = inputs["loss_mask"], inputs["advantages"], frozen["old"]
    rows, length = len(logps), len(logps[0])
    ratios = _ratios(logps, old, mask, spec)
    lo_b, hi_b = 1.0 - spec.epsilon_low, 1.0 + spec.epsilon_high_effective
    ptl = [[0.0] * length for _ in range(rows)]
    clipped, low, high = [], [], []
    kl_out = [[0.0] * length for _ in range(rows)] if inputs.get("ref_logps") else None
    for i in range(rows):
        a = adv[i]
        c_row, l_row, h_row = [], [], []
        for _j, r in enumerate(ratios[i]):
            c_row.append(min(max(r, lo_b), hi_b))
            capped = min(r, spec.delta) if spec.delta is not None else r
            if spec.loss_type == "cispo":
                l_row.append(False)
                h_row.append(r > spec.epsilon_high_effective and a > 0)
                c_row[-1] = min(r, spec.epsilon_high_effective)
            else:
                l_row.append(capped < lo_b and a < 0)
                h_row.append(capped > hi_b and a > 0)
        clipped.append(c_row)
        low.append(l_row)
        high.append(h_row)
        for t in range(length):
            r = ratios[i][0 if spec.importance_sampling_level == "sequence" else t]
            if spec.loss_type in ("grpo", "bnpo", "dr_grpo", "dapo", "luspo"):
                capped = min(r, spec.delta) if spec.delta is not None else r
                value = -min(capped * a, min(max(r, lo_b), hi_b) * a)
                if spec.dual_clip is not None and a < 0:
                    value = min(value, -spec.dual_clip * a)
            elif spec.loss_type == "cispo":
                w = frozen["cispo_w"][i][0 if spec.importance_sampling_level == "sequence" else t]
                value = -w * a * logps[i][t]
            elif spec.loss_type == "sapo":
                tau = spec.sapo_temperature_pos if a > 0 else spec.sapo_temperature_neg
                value = -(1.0 / (1.0 + math.exp(-tau * (r - 1.0)))) * 4.0 / tau * a
            else:  # vespo
                value = -frozen["phi"][i] * a * logps[i][t]
            if "off" in frozen:
                value *= frozen["off"][i]
            if "ent" in frozen:
                value *= frozen["ent"][i][t]
            if frozen["is"] is not None and spec.loss_type != "vespo":
                value *= frozen["is"][i][0 if len(frozen["is"][i]) == 1 else t]
            if kl_out is not None:
                k = py_kl(logps[i][t], inputs["ref_logps"][i][t], spec.kl_estimator)
                if spec.use_bias_correction_kl:
                    k *= r
                kl_out[i][t] = k
                if spec.beta != 0.0:
                    value += spec.beta * k
            ptl[i][t] = value
    # aggregation (N1–N6)
    gas = meta.get("gradient_accumulation_steps", spec.gradient_accumulation_steps)
    procs = meta.get("num_processes", spec.num_processes)
    spg = meta.get("steps_per_generation", spec.steps_per_generation or gas)
    mode = spec.aggregation_effective
    masked_sum = sum(ptl[i][t] * mask[i][t] for i in range(rows) for t in range(length))
    count = sum(sum(r) for r in mask)
    if mode == "seq_mean_token_mean":
        loss = (
            sum(
                sum(ptl[i][t] * mask[i][t] for t in range(length)) / max(sum(mask[i]), 1.0)
                for i in range(rows)
            )
            / rows
            / gas
        )
        norm = rows * gas
    elif mode == "token_mean":
        if spec.loss_type == "bnpo" or meta.get("num_items_in_batch") is None:
            norm = max(count, 1.0) * gas
        else:
            norm = max(meta["num_items_in_batch"], 1.0) / procs * gas / spg
        loss = masked_sum / norm
    elif mode == "seq_mean_token_sum_norm":
        norm = rows * (spec.max_completion_length or length) * gas
        loss = masked_sum / norm
    else:
        loss = sum(sum(ptl[i][t] * mask[i][t] for t in range(length)) for i in range(rows)) / rows / gas
        norm = rows * gas
    if spec.entropy_coef != 0.0:
        ent = inputs["entropies"]
        eff = [
            [mask[i][t] * (frozen["ent"][i][t] if "ent" in frozen else 1.0) for t in range(length)]
            for i in range(rows)
        ]
        h = (
            sum(ent[i][t] * eff[i][t] for i in range(rows) for t in range(length))
            / max(sum(map(sum, eff)), 1.0)
            / gas
        )
        loss -= spec.entropy_coef * h
    return {
        "ratio": ratios, "clipped_ratio": clipped, "is_low_clipped": low, "is_high_clipped": high,
        "kl": kl_out, "per_token_loss": ptl, "loss": loss, "loss_normalizer": float(norm),
    }  # fmt: skip


def py_grad(inputs, spec, meta):
    """Richardson-extrapolated central differences of the plain-Python loss w.r.t. each logp."""
    frozen = _frozen(inputs, spec)
    base = inputs["logps"]

    def loss_at(i, t, delta):
        moved = [list(r) for r in base]
        moved[i][t] += delta
        return py_step_values(moved, inputs, spec, meta, frozen)["loss"]

    def derivative(i, t, h):
        d1 = (loss_at(i, t, h) - loss_at(i, t, -h)) / (2 * h)
        d2 = (loss_at(i, t, h / 2) - loss_at(i, t, -h / 2)) / h
        return (4 * d2 - d1) / 3

    grad = []
    for i in range(len(base)):
        row = []
        for t in range(len(base[0])):
            coarse, fine = derivative(i, t, 1e-4), derivative(i, t, 1e-5)
            # a kink (clip boundary) within the stencil shows up as disagreement: refuse such data
            assert abs(coarse - fine) <= 1e-7 * max(1.0, abs(fine)), (
                "kink near the base point",
                i,
                t,
                coarse,
                fine,
            )
            row.append(fine)
        grad.append(row)
    return grad


def py_reference_step(inputs, spec, meta):
    """Expected outputs of ``reference_step`` for a loss-stage case."""
    full = dict(inputs)
    mask = [list(map(float, r)) for r in inputs["completion_mask"]]
    if inputs.get("tool_mask"):
        mask = [
            [m * t for m, t in zip(mr, tr, strict=False)]
            for mr, tr in zip(mask, inputs["tool_mask"], strict=False)
        ]
    if spec.mask_truncated_completions and inputs.get("truncated"):
        mask = [[0.0 if tr else m for m in mr] for mr, tr in zip(mask, inputs["truncated"], strict=False)]
    full["loss_mask"] = mask
    frozen = _frozen(full, spec)
    values = py_step_values(full["logps"], full, spec, meta, frozen)
    out = {k: v for k, v in values.items() if v is not None}
    if spec.loss_type in ("sapo", "vespo"):
        for name in ("clipped_ratio", "is_low_clipped", "is_high_clipped"):
            out.pop(name)
    if frozen["is"] is not None and "sampler_is_ratio" not in inputs:
        out["sampler_is_ratio"] = frozen["is"]
    out["logps_grad"] = py_grad(full, spec, meta)
    return out


# ======================================================================================= case builders

CASES: dict[str, list[dict]] = {}


def spec_diff(spec: GRPOSpec) -> dict:
    defaults = DEFAULT_SPEC.to_dict()
    return {k: v for k, v in spec.to_dict().items() if v != defaults[k]}


def add(file, case_id, function, description, equations, spec, inputs, expected, *, hand=False, meta=None,
        kwargs=None, rtol=1e-10, atol=1e-12, dtypes=None):  # fmt: skip
    dtypes = dtypes or {}
    enc_in = {}
    for name, value in inputs.items():
        if value is None:
            continue
        default = (
            "int64"
            if name in ("group_index", "completion_ids")
            else ("bool" if name == "truncated" else "float64")
        )
        enc_in[name] = encode_tensor(value, dtypes.get(name, default))
    enc_out = {}
    for name, value in expected.items():
        is_bool = name in ("scorable", "is_low_clipped", "is_high_clipped", "in_support")
        enc_out[name] = encode_tensor(value, "bool" if is_bool else "float64")
    CASES.setdefault(file, []).append({
        "id": case_id, "function": function, "description": description, "hand_worked": hand,
        "equations": equations, "spec": spec_diff(spec), "meta": meta or {}, "kwargs": kwargs or {},
        "inputs": enc_in, "expected": enc_out, "rtol": rtol, "atol": atol,
    })  # fmt: skip


def adv_case(
    case_id, description, rewards, group_index, spec, weights=None, hand=False, expected_override=None
):
    expected = py_advantages(rewards, group_index, spec, weights)
    if expected_override:
        for (
            k,
            v,
        ) in expected_override.items():  # hand-worked numbers must agree with the plain-Python formulas
            assert all(
                abs(a - b) < 1e-12 or (isnan(a) and isnan(b)) for a, b in zip(expected[k], v, strict=False)
            ), (
                case_id,
                k,
            )
    inputs = {"rewards_per_func": rewards, "group_index": group_index}
    if weights is not None:
        inputs["reward_weights"] = list(weights)
    add("advantages.json", case_id, "compute_advantages", description, ["R1", "A1", "A2", "A3", "A4", "A5", "A6", "A7", "A8"],
        spec, inputs, expected, hand=hand)  # fmt: skip


def step_case(
    case_id,
    description,
    spec,
    inputs,
    meta=None,
    hand=False,
    equations=None,
    expected_override=None,
    kwargs=None,
):
    expected = py_reference_step(inputs, spec, meta or {})
    if expected_override:
        for k, v in expected_override.items():
            flat_a = _flatten(expected[k])
            flat_b = _flatten(v)
            assert all(abs(a - b) < 1e-9 for a, b in zip(flat_a, flat_b, strict=False)), (
                case_id,
                k,
                flat_a,
                flat_b,
            )
    add("loss.json", case_id, "reference_step", description, equations or ["P1", "P3", "O1", "N1"], spec, inputs,
        expected, hand=hand, meta=meta, kwargs=kwargs, rtol=1e-8, atol=1e-9)  # fmt: skip


def _flatten(x):
    if isinstance(x, list):
        return [y for v in x for y in _flatten(v)]
    return [float(x)]


def rand_matrix(rng, rows, cols, lo, hi):
    return [[rng.uniform(lo, hi) for _ in range(cols)] for _ in range(rows)]


def build() -> None:
    rng = random.Random(1234)
    S = GRPOSpec

    # ----------------------------------------------------------------------------- advantages
    # H1: G=4, rewards 1,0,0,1: mean 0.5, sample std sqrt(1/3)=0.57735, A = ±0.5/(0.57735+1e-4)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    adv_case("adv-h01-basic-sample-std", "One group of G=4, rewards 1,0,0,1, TRL defaults (sample std, eps 1e-4).",
             [[1.0], [0.0], [0.0], [1.0]], [0, 0, 0, 0], S(num_generations=4), hand=True,
             expected_override={"advantages": [a, -a, -a, a]})  # fmt: skip
    # H2: interleaved groups, population std: group 0 = {2, 0} mean 1 std 1 -> ±1/(1+1e-4)
    b = 1 / (1 + 1e-4)
    adv_case("adv-h02-interleaved-population", "Two groups interleaved (group_index 0,1,0,1), population std.",
             [[2.0], [5.0], [0.0], [5.0]], [0, 1, 0, 1], S(num_generations=2, std="population"), hand=True,
             expected_override={"advantages": [b, 0.0, -b, 0.0]})  # fmt: skip
    adv_case("adv-h03-all-equal", "All-equal group: advantage exactly 0 (numerator is exactly 0).",
             [[0.7], [0.7], [0.7]], [3, 3, 3], S(num_generations=3), hand=True,
             expected_override={"advantages": [0.0, 0.0, 0.0]})  # fmt: skip
    adv_case("adv-h04-g1", "G = 1: every group has one row, advantage 0 by definition (A7).",
             [[1.0], [0.0], [3.0]], [0, 1, 2], S(num_generations=1), hand=True,
             expected_override={"advantages": [0.0, 0.0, 0.0]})  # fmt: skip
    # H5: NaN excluded: scorable {1, 0, 0} mean 1/3, sample std sqrt(1/3)
    s5 = math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)
    adv_case("adv-h05-nan-excluded", "Unscorable (NaN) row: excluded from mean/std, advantage 0.",
             [[1.0], [NAN], [0.0], [0.0]], [0, 0, 0, 0], S(num_generations=4), hand=True,
             expected_override={"advantages": [(2 / 3) / (s5 + 1e-4), 0.0, (-1 / 3) / (s5 + 1e-4), (-1 / 3) / (s5 + 1e-4)]})  # fmt: skip
    # H6: RLOO, no scaling: r = 3,0,0 -> baselines 0, 1.5, 1.5 -> A = 3, -1.5, -1.5
    adv_case("adv-h06-rloo", "Leave-one-out baseline, scale_rewards='none'.",
             [[3.0], [0.0], [0.0]], [0, 0, 0], S(num_generations=3, baseline="rloo", scale_rewards="none"), hand=True,
             expected_override={"advantages": [3.0, -1.5, -1.5]})  # fmt: skip
    adv_case(
        "adv-07-scale-none",
        "scale_rewards='none' (Dr. GRPO): A = r − mean.",
        [[0.2], [0.9], [0.4], [1.0], [1.0], [0.0]],
        [0, 0, 0, 1, 1, 1],
        S(num_generations=3, scale_rewards="none"),
    )
    adv_case(
        "adv-08-scale-batch",
        "scale_rewards='batch': group mean, batch std.",
        [[0.2], [0.9], [0.4], [1.0], [1.0], [0.0]],
        [0, 0, 0, 1, 1, 1],
        S(num_generations=3, scale_rewards="batch"),
    )
    adv_case("adv-09-multi-func-weights", "Two reward functions with weights (1, 0.5), partial NaN, sum then normalise.",
             [[1.0, 0.0], [0.0, NAN], [1.0, 1.0], [NAN, 2.0], [0.0, 1.0], [1.0, 1.0]], [0, 0, 0, 1, 1, 1],
             S(num_generations=3), weights=(1.0, 0.5))  # fmt: skip
    adv_case("adv-10-normalize-then-sum", "normalize_then_sum: per-function group z-scores, weighted sum, batch z-score.",
             [[1.0, 0.0], [0.0, 3.0], [1.0, 1.0], [0.0, 2.0], [0.5, 1.0], [1.0, 0.0]], [0, 0, 0, 1, 1, 1],
             S(num_generations=3, multi_objective_aggregation="normalize_then_sum"), weights=(1.0, 0.5))  # fmt: skip
    adv_case(
        "adv-11-verl-eps-population",
        "verl-style: population std, epsilon 1e-6.",
        [[0.0], [1.0], [1.0], [1.0]],
        [0, 0, 0, 0],
        S(num_generations=4, std="population", adv_epsilon=1e-6),
    )
    adv_case(
        "adv-12-all-unscorable-group",
        "A group where every row is unscorable: all advantages 0, other group unaffected.",
        [[NAN], [NAN], [1.0], [0.0]],
        [0, 0, 1, 1],
        S(num_generations=2),
    )
    rewards13 = [[float(rng.randint(0, 4))] for _ in range(12)]
    groups13 = [g for g in range(3) for _ in range(4)]
    rng.shuffle(groups13)
    adv_case("adv-13-shuffled-groups", "Three groups of 4, rows in shuffled order (membership from group_index only).",
             rewards13, groups13, S(num_generations=4))  # fmt: skip
    # H14: bound: one success in G=4 -> A = (r - 1/4)/(std + eps), std = sqrt(1/4) = 0.5 -> 1.5/(1+2e-4)
    adv_case("adv-h14-bound-one-success", "One success among G=4: the maximum |A| = (G−1)/√G = 1.5 (up to eps).",
             [[1.0], [0.0], [0.0], [0.0]], [0, 0, 0, 0], S(num_generations=4), hand=True,
             expected_override={"advantages": [0.75 / (0.5 + 1e-4), -0.25 / (0.5 + 1e-4), -0.25 / (0.5 + 1e-4), -0.25 / (0.5 + 1e-4)]})  # fmt: skip
    adv_case(
        "adv-15-rloo-std-nan",
        "RLOO with group std scaling and a NaN row.",
        [[1.0], [0.5], [NAN], [0.0]],
        [0, 0, 0, 0],
        S(num_generations=4, baseline="rloo"),
    )

    # ------------------------------------------------------------------------------------ logps
    def logps_case(
        case_id, description, logits, ids, temperature=1.0, hand=False, override=None, kwargs_extra=None
    ):
        logps, entropy = py_logps_entropy(logits, ids, temperature)
        if override:
            assert all(
                abs(x - y) < 1e-12 for x, y in zip(_flatten(logps), _flatten(override), strict=False)
            ), case_id
        kwargs = {"temperature": temperature, **(kwargs_extra or {})}
        add("logps.json", case_id, "logps_and_entropy_from_logits", description, ["L2", "L3"], GRPOSpec(),
            {"logits": logits, "completion_ids": ids}, {"logps": logps, "entropies": entropy}, hand=hand, kwargs=kwargs)  # fmt: skip

    logps_case("logps-h01-uniform", "Uniform logits over V=4: log p = −log 4, entropy log 4.",
               [[[0.0, 0.0, 0.0, 0.0]]], [[2]], hand=True, override=[-math.log(4)])  # fmt: skip
    # H2: logits [0, ln 9] at T=2 -> scaled [0, ln 3] -> p = [1/4, 3/4]
    logps_case("logps-h02-temperature", "Temperature 2 on logits [0, ln 9]: p = (1/4, 3/4).",
               [[[0.0, math.log(9.0)], [0.0, math.log(9.0)]]], [[0, 1]], temperature=2.0, hand=True,
               override=[math.log(0.25), math.log(0.75)])  # fmt: skip
    logps_case("logps-03-extreme", "Extreme logits (±1e4): no overflow, log p of the winner is 0.",
               [[[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]]], [[0, 0]])  # fmt: skip
    logits4 = [rand_matrix(rng, 3, 7, -4, 4) for _ in range(2)]
    logps_case(
        "logps-04-random-temp",
        "Random B=2, T=3, V=7 at temperature 0.7.",
        logits4,
        [[1, 6, 3], [0, 2, 5]],
        0.7,
    )
    logps_case("logps-05-chunk1", "Same as logps-04 with chunk_size=1 (chunking must not change values).",
               logits4, [[1, 6, 3], [0, 2, 5]], 0.7, kwargs_extra={"chunk_size": 1})  # fmt: skip
    # shift: full logits for prompt P=2 + T=2 completion tokens
    full = [rand_matrix(rng, 4, 5, -3, 3)]
    ids = [[4, 1]]
    expected_shift, _ = py_logps_entropy([full[0][1:3]], ids, 1.0)
    add("logps.json", "logps-06-shift", "logps_from_full_logits", "One-token shift: position P−1+t predicts completion token t.",
        ["L1", "L2"], GRPOSpec(), {"full_logits": full, "completion_ids": ids}, {"logps": expected_shift},
        kwargs={"prompt_length": 2})  # fmt: skip

    def kept_case(case_id, description, z, ids, hand=False, override=None, **kw):
        params = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": None, "order": "hf"} | kw
        masses, supports = [], []
        for row_z, row_ids in zip(z, ids, strict=False):
            m_row, s_row = [], []
            for logits_t, y in zip(row_z, row_ids, strict=False):
                mass, keep = py_kept(
                    logits_t,
                    params["temperature"],
                    params["top_p"],
                    params["top_k"],
                    params["min_p"],
                    params["order"],
                )
                m_row.append(mass)
                s_row.append(keep[y])
            masses.append(m_row)
            supports.append(s_row)
        if override:
            assert all(abs(x - y) < 1e-12 for x, y in zip(_flatten(masses), override, strict=False)), (
                case_id,
                masses,
            )
        add("logps.json", case_id, "sampling_kept_mass", description, ["L5", "L6"], GRPOSpec(),
            {"logits": z, "completion_ids": ids}, {"kept_mass": masses, "in_support": supports}, hand=hand, kwargs=params)  # fmt: skip

    probs = [0.5, 0.3, 0.15, 0.05]
    z0 = [[[math.log(p) for p in probs]]]
    kept_case(
        "kept-h01-top-p",
        "top_p=0.7 on p=(.5,.3,.15,.05): keeps {.5,.3}, S=0.8.",
        z0,
        [[1]],
        hand=True,
        override=[0.8],
        top_p=0.7,
    )
    kept_case(
        "kept-h02-top-k",
        "top_k=3: keeps {.5,.3,.15}, S=0.95.",
        z0,
        [[3]],
        hand=True,
        override=[0.95],
        top_k=3,
    )
    kept_case(
        "kept-h03-min-p",
        "min_p=0.5: threshold 0.25 keeps {.5,.3}, S=0.8.",
        z0,
        [[0]],
        hand=True,
        override=[0.8],
        min_p=0.5,
    )
    z4 = [rand_matrix(rng, 3, 9, -3, 3) for _ in range(2)]
    kept_case("kept-04-combined-hf", "top_k=5, top_p=0.8, min_p=0.1, temperature 0.8, HF order.", z4, [[0, 1, 2], [3, 4, 5]],
              temperature=0.8, top_k=5, top_p=0.8, min_p=0.1)  # fmt: skip
    kept_case("kept-05-combined-vllm", "Same filters in vLLM order (min-p first).", z4, [[0, 1, 2], [3, 4, 5]],
              temperature=0.8, top_k=5, top_p=0.8, min_p=0.1, order="vllm")  # fmt: skip

    # --------------------------------------------------------------------------------------- KL
    lp = [[-1.0, -0.5, -2.0]]
    rf = [[-1.0, -1.5, -0.5]]
    for est in ("k1", "k2", "k3"):
        values = [[py_kl(a_, b_, est) for a_, b_ in zip(lp[0], rf[0], strict=False)]]
        add("kl.json", f"kl-h-{est}", "per_token_kl", f"{est} on logp=(−1, −.5, −2), ref=(−1, −1.5, −.5).", [est.upper().replace("K", "K")],
            GRPOSpec(), {"logps": lp, "ref_logps": rf}, {"kl": values}, hand=True, kwargs={"estimator": est})  # fmt: skip
    ratio = [[1.1, 0.9, 1.0]]
    values = [[py_kl(a_, b_, "k3") * r for a_, b_, r in zip(lp[0], rf[0], ratio[0], strict=False)]]
    add("kl.json", "kl-04-ratio-weighted-k3", "per_token_kl", "ρ·k3 (use_bias_correction_kl).", ["K4"], GRPOSpec(),
        {"logps": lp, "ref_logps": rf, "ratio": ratio}, {"kl": values}, kwargs={"estimator": "k3"})  # fmt: skip
    lp5, rf5 = [[-30.0, -1e-9, -5.0]], [[-0.1, -1e-9 - 1e-12, -5.0 + 1e-10]]
    values = [[py_kl(a_, b_, "k3") for a_, b_ in zip(lp5[0], rf5[0], strict=False)]]
    add("kl.json", "kl-05-k3-extreme", "per_token_kl", "k3 at a large gap (e^29.9) and at tiny gaps (expm1 accuracy).",
        ["K3"], GRPOSpec(), {"logps": lp5, "ref_logps": rf5}, {"kl": values}, kwargs={"estimator": "k3"}, rtol=1e-9, atol=1e-30)  # fmt: skip

    # ------------------------------------------------------------------------- sampler IS ratio
    old_is = [[-1.0, -2.0, -0.5], [-0.3, -0.2, -4.0]]
    samp_is = [[-1.2, -1.5, -0.5], [-0.3, -1.0, -4.0]]
    mask_is = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
    for mode, cmin, cmax in (
        ("token_truncate", None, 1.5),
        ("sequence_mask", 0.5, 2.0),
        ("token_mask", 0.9, 1.1),
    ):
        diffs = [
            [(o - s) * m for o, s, m in zip(ro, rs, rm, strict=False)]
            for ro, rs, rm in zip(old_is, samp_is, mask_is, strict=False)
        ]
        out = []
        for row in diffs:
            ws = [math.exp(sum(row))] if mode.startswith("sequence") else [math.exp(d) for d in row]
            lo = -math.inf if cmin is None else cmin
            hi = math.inf if cmax is None else cmax
            out.append(
                [
                    min(max(w, lo), hi) if mode.endswith("truncate") else (0.0 if (w < lo or w > hi) else w)
                    for w in ws
                ]
            )
        add("ratio.json", f"is-{mode}", "sampler_is_ratio", f"Sampler IS correction, mode {mode}.", ["P7"], GRPOSpec(),
            {"old_logps": old_is, "sampler_logps": samp_is, "loss_mask": mask_is}, {"sampler_is_ratio": out},
            kwargs={"mode": mode, "clip_min": cmin, "clip_max": cmax})  # fmt: skip

    # -------------------------------------------------------------------------- loss / step
    # H: grpo on-policy, lengths 2 and 1, A = (1, −1): per-token loss −A, loss 0, grad −A/(B·|o_i|)
    step_case("step-h01-grpo-on-policy", "GRPO on-policy (ρ=1): per-token loss = −A, loss 0, grad −A/(B·|o_i|).",
              S(loss_type="grpo"), {"logps": [[-1.0, -2.0], [-0.5, -9.0]], "completion_mask": [[1, 1], [1, 0]], "advantages": [1.0, -1.0]},
              hand=True, equations=["P1", "O1", "N1", "G1", "G2"],
              expected_override={"loss": 0.0, "logps_grad": [[-0.25, -0.25], [0.5, 0.0]]})  # fmt: skip
    step_case("step-h02-dapo-on-policy", "DAPO on-policy, num_items_in_batch=3: grad −A/3 on every token.",
              S(loss_type="dapo"), {"logps": [[-1.0, -2.0], [-0.5, -9.0]], "completion_mask": [[1, 1], [1, 0]], "advantages": [1.0, -1.0]},
              meta={"num_items_in_batch": 3}, hand=True, equations=["O1", "N3", "G1"],
              expected_override={"loss": -1 / 3, "logps_grad": [[-1 / 3, -1 / 3], [1 / 3, 0.0]]})  # fmt: skip
    step_case("step-h03-dr-grpo", "Dr. GRPO: normaliser B·L_max = 2·4 = 8 regardless of lengths.",
              S(loss_type="dr_grpo", max_completion_length=4),
              {"logps": [[-1.0, -2.0], [-0.5, -9.0]], "completion_mask": [[1, 1], [1, 0]], "advantages": [1.0, -1.0]},
              hand=True, equations=["O1", "N4", "G1"],
              expected_override={"loss": (-2 + 1) / 8, "logps_grad": [[-1 / 8, -1 / 8], [1 / 8, 0.0]]})  # fmt: skip
    # H4: clipping on both sides, bnpo: ρ = e^{0.5} with A=+1 (clipped high), ρ = e^{-0.5} with A=−1 (clipped low)
    hi_r, lo_r = math.exp(0.5), math.exp(-0.5)
    step_case("step-h04-clip-both-sides", "BNPO, ρ=e^0.5 with A=+1 and ρ=e^−0.5 with A=−1: both clipped, gradient 0 there.",
              S(loss_type="bnpo", epsilon=0.2, epsilon_high=0.28),
              {"logps": [[-0.5, -1.0], [-1.5, -1.0]], "old_logps": [[-1.0, -1.0], [-1.0, -1.0]],
               "completion_mask": [[1, 1], [1, 1]], "advantages": [1.0, -1.0]},
              hand=True, equations=["P1", "P3", "P4", "O1", "N2", "G2"],
              expected_override={"ratio": [[hi_r, 1.0], [lo_r, 1.0]],
                                 "per_token_loss": [[-1.28, -1.0], [0.8, 1.0]],
                                 "loss": (-1.28 - 1.0 + 0.8 + 1.0) / 4,
                                 "logps_grad": [[0.0, -0.25], [0.0, 0.25]]})  # fmt: skip
    # H5: k3 KL on-policy, beta 0.1, A=0: grad = β·(logp − ref)/(B|o|) with ρ·k3 (G7)
    step_case("step-h05-kl-k3-bias-corrected", "β=0.1, A=0, on-policy ρ·k3: gradient β·log(π/π_ref)/(B·|o_i|).",
              S(loss_type="grpo", beta=0.1),
              {"logps": [[-1.0, -2.0]], "ref_logps": [[-1.5, -1.0]], "completion_mask": [[1, 1]], "advantages": [0.0]},
              hand=True, equations=["K3", "K4", "G6", "G7"],
              expected_override={"logps_grad": [[0.1 * 0.5 / 2, 0.1 * -1.0 / 2]]})  # fmt: skip
    # H6: gas=2 halves everything for grpo
    step_case("step-h06-grad-accumulation", "grpo with gradient_accumulation_steps=2: loss and grad halved.",
              S(loss_type="grpo"), {"logps": [[-1.0, -2.0], [-0.5, -9.0]], "completion_mask": [[1, 1], [1, 0]], "advantages": [1.0, -1.0]},
              meta={"gradient_accumulation_steps": 2}, hand=True, equations=["N1"],
              expected_override={"logps_grad": [[-0.125, -0.125], [0.25, 0.0]]})  # fmt: skip

    def random_inputs(rows=4, length=5, seed_shift=0.3, with_ref=True, ragged=True):
        logps = rand_matrix(rng, rows, length, -3.0, -0.05)
        old = [[v + rng.uniform(-seed_shift, seed_shift) for v in r] for r in logps]
        mask = []
        for _i in range(rows):
            n = rng.randint(1, length) if ragged else length
            mask.append([1.0 if t < n else 0.0 for t in range(length)])
        inputs = {"logps": logps, "old_logps": old, "completion_mask": mask,
                  "advantages": [rng.uniform(-1.5, 1.5) for _ in range(rows)]}  # fmt: skip
        if with_ref:
            inputs["ref_logps"] = [[v + rng.uniform(-0.4, 0.4) for v in r] for r in logps]
        return inputs

    for loss_type in ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"):
        eps_high = 3.0 if loss_type == "cispo" else 0.28
        spec = S(
            loss_type=loss_type, epsilon_high=eps_high, beta=0.04, max_completion_length=6, num_generations=2
        )
        step_case(f"step-{loss_type}-token", f"{loss_type}, token level, off-policy, β=0.04 k3 with ρ, ragged lengths.",
                  spec, random_inputs(), meta={"num_items_in_batch": 30, "gradient_accumulation_steps": 2, "steps_per_generation": 4},
                  equations=["P1", "P3", "O1", "O3", "O4", "O5", "K4", "N1", "N2", "N3", "N4", "N5"])  # fmt: skip
    for loss_type in ("grpo", "dapo", "sapo", "luspo"):
        spec = S(
            loss_type=loss_type,
            importance_sampling_level="sequence",
            epsilon=3e-4,
            epsilon_high=4e-4,
            num_generations=2,
        )
        step_case(f"step-{loss_type}-sequence-gspo", f"{loss_type} with sequence-level (GSPO) ratio.", spec,
                  random_inputs(with_ref=False, seed_shift=0.002), meta={"num_items_in_batch": 12},
                  equations=["P2", "O1", "G4"])  # fmt: skip
    step_case("step-k2-no-bias", "k2 estimator without ratio weighting, β=0.1.", S(loss_type="dapo", beta=0.1, kl_estimator="k2", use_bias_correction_kl=False),
              random_inputs(), equations=["K2", "G6"])  # fmt: skip
    step_case("step-k1", "k1 estimator with ratio weighting, β=0.1.", S(loss_type="grpo", beta=0.1, kl_estimator="k1"),
              random_inputs(), equations=["K1", "K4", "G7"])  # fmt: skip
    step_case("step-delta-dual-clip", "Two-sided δ=1.2 and dual clip c=2 on negative advantages.",
              S(loss_type="dapo", delta=1.2, dual_clip=2.0),
              {"logps": [[-0.2, -1.0, -2.0], [-0.1, -1.0, -3.0]], "old_logps": [[-1.0, -1.0, -2.1], [-1.5, -0.6, -3.05]],
               "completion_mask": [[1, 1, 1], [1, 1, 1]], "advantages": [1.0, -0.5]},
              equations=["P5", "O2", "G3"])  # fmt: skip
    inputs_tm = random_inputs(with_ref=False)
    inputs_tm["tool_mask"] = [[1.0, 0.0, 1.0, 1.0, 1.0] for _ in range(4)]
    inputs_tm["truncated"] = [False, True, False, False]
    step_case("step-tool-and-truncation", "Tool-output tokens and a truncated completion excluded from the loss.",
              S(loss_type="bnpo", mask_truncated_completions=True), inputs_tm, equations=["M1"])  # fmt: skip
    inputs_all_masked = random_inputs(with_ref=False)
    inputs_all_masked["completion_mask"][1] = [0.0] * 5
    step_case("step-all-masked-row", "A row with no loss token (grpo): contributes 0, no NaN (|o| clamped to 1).",
              S(loss_type="grpo"), inputs_all_masked, equations=["N1"])  # fmt: skip
    inputs_ent = random_inputs(with_ref=False)
    inputs_ent["entropies"] = rand_matrix(rng, 4, 5, 0.0, 3.0)
    step_case("step-entropy-mask", "top_entropy_quantile=0.4: only the top-40% entropy tokens in the policy loss.",
              S(loss_type="dapo", top_entropy_quantile=0.4), inputs_ent, equations=["M2"])  # fmt: skip
    step_case("step-entropy-bonus", "Entropy bonus c=0.01 (grpo): loss −= c·mean entropy / K.",
              S(loss_type="grpo", entropy_coef=0.01), inputs_ent, meta={"gradient_accumulation_steps": 2}, equations=["N6"])  # fmt: skip
    inputs_opm = random_inputs(with_ref=False)
    inputs_opm["sampler_logps"] = [[v - rng.uniform(0.0, 0.3) for v in r] for r in inputs_opm["old_logps"]]
    step_case("step-off-policy-mask", "Off-policy sequence mask δ=0.05 (negative-advantage rows far from the sampler dropped).",
              S(loss_type="dapo", off_policy_mask_threshold=0.05), inputs_opm, equations=["P8"])  # fmt: skip
    step_case("step-sampler-is-token-truncate", "Sampler IS correction token_truncate, clip_max 1.1.",
              S(loss_type="dapo", sampler_is_correction=True, sampler_is_mode="token_truncate", sampler_is_clip_max=1.1),
              inputs_opm, equations=["P7"])  # fmt: skip
    step_case("step-sampler-is-sequence-mask", "Sampler IS correction sequence_mask with [0.5, 2].",
              S(loss_type="grpo", sampler_is_correction=True, sampler_is_mode="sequence_mask", sampler_is_clip_min=0.5,
                sampler_is_clip_max=2.0), inputs_opm, equations=["P7"])  # fmt: skip
    step_case("step-vespo-with-is", "VESPO with token-level sampler IS ratio inside the gamma weight.",
              S(loss_type="vespo", sampler_is_correction=True, sampler_is_mode="token_truncate"), inputs_opm, equations=["O5"])  # fmt: skip
    step_case("step-aggregation-override", "loss_type grpo with aggregation overridden to seq_mean_token_sum_norm.",
              S(loss_type="grpo", aggregation="seq_mean_token_sum_norm", max_completion_length=8), random_inputs(with_ref=False))  # fmt: skip
    step_case("step-extreme-logps", "Extreme log-probs (−40) and large off-policy gaps: clipping saturates, no overflow.",
              S(loss_type="dapo", beta=0.01),
              {"logps": [[-40.0, -0.001], [-35.0, -1e-6]], "old_logps": [[-38.0, -0.5], [-39.0, -1e-6]],
               "ref_logps": [[-39.0, -0.001], [-35.0, -3.0]], "completion_mask": [[1, 1], [1, 1]], "advantages": [0.5, -0.5]})  # fmt: skip
    step_case("step-multi-process", "dapo normaliser with num_processes=2, GAS=4, steps_per_generation=2.",
              S(loss_type="dapo"), random_inputs(with_ref=False),
              meta={"num_items_in_batch": 50, "num_processes": 2, "gradient_accumulation_steps": 4, "steps_per_generation": 2},
              equations=["N3"])  # fmt: skip
    # end-to-end from rewards (isolate=False): advantages computed by the reference feed the loss
    e2e = {"rewards_per_func": [[1.0], [0.0], [0.5], [0.5]], "group_index": [0, 0, 1, 1],
           "logps": [[-1.0, -0.5], [-0.2, -3.0], [-1.0, -1.0], [-2.0, -0.1]], "completion_mask": [[1, 1], [1, 0], [1, 1], [0, 0]]}  # fmt: skip
    adv = py_advantages(e2e["rewards_per_func"], e2e["group_index"], S(num_generations=2))
    with_adv = dict(e2e, advantages=adv["advantages"])
    expected = py_reference_step(with_adv, S(num_generations=2, loss_type="grpo"), {})
    expected["advantages"] = adv["advantages"]
    expected["rewards"] = adv["rewards"]
    add("loss.json", "step-end-to-end-from-rewards", "reference_step", "End to end (isolate=False): rewards → advantages → loss → grad.",
        ["R1", "A3", "O1", "N1", "S1"], S(num_generations=2, loss_type="grpo"), e2e, expected, kwargs={"isolate": False},
        rtol=1e-8, atol=1e-9)  # fmt: skip


def main() -> None:
    build()
    total = 0
    for target in (HERE, ROOT / "grpo_check" / "reference" / "golden_vectors"):
        target.mkdir(parents=True, exist_ok=True)
        for name, cases in CASES.items():
            doc = {
                "format": FORMAT,
                "generator": "reference/golden/generate.py (plain-Python, independent)",
                "cases": cases,
            }
            (target / name).write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    total = sum(len(c) for c in CASES.values())
    hand = sum(1 for cases in CASES.values() for c in cases if c["hand_worked"])
    print(f"wrote {total} cases ({hand} hand-worked) in {len(CASES)} files")


if __name__ == "__main__":
    main()
