"""Mutants of the hand-written loop: each swaps ONE function of :class:`GRPOLoop` the way the bug appeared.

Every class is registered by :func:`grpo_check.zoo.catalog.mutant` with the bug-catalog entry it carries,
the stage the bug lives in, and the configuration that lets the bug show (bugs hide at T=1, top_p=1, GAS=1,
μ=1, β=0: each mutant leaves the setting that would hide it, nothing more).
"""

from __future__ import annotations

import warnings

import torch

from grpo_check.zoo.catalog import Bug, mutant
from grpo_check.zoo.loop import GRPOLoop, LoopConfig

# ============================================================================================ seed (S1-S3)


@mutant(
    "S1",
    "logps",
    id="S1-logsoftmax-sign",
    title="log-softmax sign flipped (logsumexp − logit)",
    seen_in="the SkillsBench debug-trl-grpo task (a TRL 0.17-based pipeline)",
    config=LoopConfig(beta=0.04),
)
class LogSoftmaxSignFlip(GRPOLoop):
    """``selective_log_softmax`` returns logsumexp − logit: every log-prob is positive, ratio and KL inverted."""

    def selective_log_softmax(self, logits, index):
        picked = logits.gather(-1, index.unsqueeze(-1)).squeeze(-1)
        return torch.logsumexp(logits, dim=-1) - picked


@mutant(
    "S2",
    "advantages",
    id="S2-adv-epsilon-1e4",
    title="advantage epsilon 1e4 instead of 1e-4",
    seen_in="the SkillsBench debug-trl-grpo task (a TRL 0.17-based pipeline)",
)
class AdvantageEpsilonTypo(GRPOLoop):
    """The std guard is written ``1e4``: advantages shrink by σ/(σ+10⁴), the learning signal vanishes."""

    def compute_advantages(self, rewards, group_index):
        group_size = self.config.num_generations
        mean, std, count = self.group_statistics(self.group_rewards(rewards))
        mean, std, count = (x.repeat_interleave(group_size) for x in (mean, std, count))
        advantages = (rewards - mean) / (std + 1e4)
        keep = (count > 1) & ~torch.isnan(rewards)
        return torch.where(keep, advantages, torch.zeros_like(advantages))


@mutant(
    "S3",
    "batch",
    id="S3-decode-blank",
    title="post-processing blanks or truncates the decoded completion; rewards score the wrong string",
    seen_in="the SkillsBench debug-trl-grpo task (a TRL 0.17-based pipeline)",
)
class DecodeBlanksText(GRPOLoop):
    """Post-processing keeps only the text after an answer marker: '' when the marker is missing, and the
    scored string is never the completion the policy produced."""

    answer_marker = "a"  # stands for "<answer>" in the toy vocabulary

    def decode(self, completion_ids, completion_mask):
        texts = super().decode(completion_ids, completion_mask)
        return [text.partition(self.answer_marker)[2] for text in texts]


class _SkillsBenchScenario(LogSoftmaxSignFlip, AdvantageEpsilonTypo, DecodeBlanksText):
    """S1 + S2 + S3 in one TRL-style pipeline, as in the SkillsBench debug-trl-grpo task."""

    pipeline = "loop"


mutant(
    "S1",
    "logps",
    id="skillsbench-S1-S2-S3",
    title="the SkillsBench debug-trl-grpo scenario: S1 + S2 + S3 in one pipeline (each must be found in its own stage)",
    seen_in="the SkillsBench debug-trl-grpo task (a TRL 0.17-based pipeline)",
    extra_bugs=(Bug("S2", "advantages"), Bug("S3", "batch")),
    config=LoopConfig(beta=0.04),
)(_SkillsBenchScenario)

# ================================================================================================= batch


@mutant(
    "11",
    "batch",
    id="11-pad-eq-eos-masks-eos",
    title="pad == eos: completion mask built from `!= pad` drops the EOS token",
    seen_in="TRL PR #2708, #4970",
    config=LoopConfig(pad_is_eos=True),
)
class MaskFromPadId(GRPOLoop):
    """``completion_mask = completion_ids != pad_token_id`` with a tokenizer whose pad token is the EOS."""

    def completion_mask(self, completion_ids):
        return (completion_ids != self.vocab.pad_token_id).long()


@mutant(
    "11",
    "batch",
    id="11-tokens-after-eos",
    title="completion mask ignores EOS: padding after the EOS counted as completion",
    seen_in="TRL PR #7039; verl #3805",
)
class MaskIgnoresEos(GRPOLoop):
    """The mask covers the whole generation buffer (taken from the buffer shape, not from the first EOS)."""

    def completion_mask(self, completion_ids):
        return torch.ones_like(completion_ids)


@mutant(
    "11",
    "batch",
    id="11-secondary-eos-ignored",
    title="secondary EOS id (end-of-turn) ignored by the completion mask",
    seen_in="TRL PR #4970; verl #3805",
    config=LoopConfig(secondary_eos=True),
)
class SecondaryEosIgnored(GRPOLoop):
    """The mask looks for ``tokenizer.eos_token_id`` only; a completion ended by the end-of-turn id runs on."""

    def completion_mask(self, completion_ids):
        is_eos = completion_ids == self.vocab.tokenizer_eos_token_id
        length = completion_ids.shape[1]
        last = torch.full_like(is_eos[:, 0], length - 1, dtype=torch.long)
        first_eos = torch.where(is_eos.any(-1), is_eos.int().argmax(-1), last)
        return (torch.arange(length).unsqueeze(0) <= first_eos.unsqueeze(-1)).long()


# ============================================================================================= advantages


@mutant(
    "6",
    "advantages",
    id="6-repeat-not-interleave",
    title="prompts expanded with repeat instead of repeat_interleave; advantages grouped by view(-1, G)",
    seen_in="R1-V #67; verl-agent #138",
)
class RepeatInsteadOfInterleave(GRPOLoop):
    """Rows come out prompt-major (p0, p1, p2, p0, ...) while the advantage code assumes consecutive groups."""

    def expand_prompts(self, prompt_ids, prompt_mask):
        group_size = self.config.num_generations
        group_index = torch.arange(prompt_ids.shape[0]).repeat(group_size)  # the truth: which prompt a row is
        return prompt_ids.repeat(group_size, 1), prompt_mask.repeat(group_size, 1), group_index


@mutant(
    "6",
    "advantages",
    id="6-transposed-grouping",
    title="rewards reshaped (G, num_prompts) instead of (num_prompts, G)",
    seen_in="prime-rl PR #600; fla #1073",
)
class TransposedGrouping(GRPOLoop):
    """``rewards.view(G, -1).T``: each 'group' mixes completions of different prompts."""

    def group_rewards(self, rewards):
        return rewards.view(self.config.num_generations, -1).T.contiguous()


@mutant(
    "8",
    "advantages",
    id="8-nan-reward-in-mean",
    title="an unscorable (NaN) reward leaks into its group's mean and std",
    seen_in="TRL PR #3079, #5773",
    config=LoopConfig(unscorable_rows=(1,)),
)
class NanRewardLeaks(GRPOLoop):
    """Plain ``mean``/``std`` over the group: one NaN reward makes the whole group's advantages NaN."""

    def group_statistics(self, grouped):
        count = torch.full((grouped.shape[0],), float(grouped.shape[1]))
        return grouped.mean(dim=1), grouped.std(dim=1, unbiased=self.config.std == "sample"), count


@mutant(
    "8",
    "rewards",
    id="8-nan-reward-as-zero",
    title="an unscorable reward is scored 0 and kept in the group statistics",
    seen_in="ms-swift #8123; TRL PR #5775",
    config=LoopConfig(unscorable_rows=(1,)),
)
class NanRewardAsZero(GRPOLoop):
    """``nansum`` over reward functions turns an all-None row into reward 0, which then counts as a real score."""

    def combine_rewards(self, rewards_per_func):
        weights = torch.tensor(self.config.reward_weights, dtype=torch.float32)
        return (rewards_per_func * weights).nansum(dim=1)


@mutant(
    "9",
    "advantages",
    id="9-no-std-guard",
    title="std without the epsilon guard: an all-equal group gives 0/0 = NaN advantages",
    seen_in="axolotl PR #3353; NeMo-RL PR #4161",
    config=LoopConfig(zero_reward_prompts=(1,)),
)
class NoStdGuard(GRPOLoop):
    """``(r − mean) / std``: fine until a group's rewards are all equal."""

    def compute_advantages(self, rewards, group_index):
        group_size = self.config.num_generations
        mean, std, _ = self.group_statistics(self.group_rewards(rewards))
        return (rewards - mean.repeat_interleave(group_size)) / std.repeat_interleave(group_size)


@mutant(
    "9",
    "advantages",
    id="9-singleton-group-std",
    title="G = 1: the sample std of a one-completion group is NaN and propagates",
    seen_in="axolotl PR #3353",
    config=LoopConfig(num_prompts=4, num_generations=1),
)
class SingletonGroupStd(GRPOLoop):
    """``torch.std`` (Bessel) of a single value is NaN; nothing zeroes the singleton groups."""

    def compute_advantages(self, rewards, group_index):
        grouped = self.group_rewards(rewards)
        mean = grouped.mean(dim=1).repeat_interleave(self.config.num_generations)
        with warnings.catch_warnings():  # torch warns about the zero degrees of freedom, then returns NaN
            warnings.simplefilter("ignore", UserWarning)
            std = grouped.std(dim=1).repeat_interleave(self.config.num_generations)
        return (rewards - mean) / (std + self.config.adv_epsilon)


# ================================================================================================== logps


@mutant(
    None,
    "logps",
    id="temperature-trainer-side",
    title="temperature applied by the sampler but not by the trainer's log-probs",
    seen_in="TRL PR #2716 era; OpenRLHF, verl (temperature in rollout only)",
    keywords=("temperature",),
    config=LoopConfig(temperature=0.7),
)
class TemperatureOneSide(GRPOLoop):
    """The trainer forgets ``logits / T``: its log-probs are of a different distribution than the sampler's."""

    def scale_logits(self, logits):
        return logits


@mutant(
    None,
    "logps",
    id="logps-off-by-one",
    title="off-by-one shift: logits at position t scored against token t (not t+1)",
    seen_in="common in hand-written loops (logits[:, P:] instead of logits[:, P-1:-1])",
    keywords=("shift", "off-by-one", "off by one", "misalign"),
)
class OffByOneShift(GRPOLoop):
    """The one-token shift is dropped: each token is scored by the logits that come *after* it."""

    def completion_logits(self, logits, prompt_length):
        return logits[:, prompt_length:, :]


@mutant(
    "14",
    "logps",
    id="14-left-pad-no-position-ids",
    title="left-padded training forward without position ids (GPT-2 absolute positions)",
    seen_in="TRL #6800 (GPT-2, 34 nats); OpenRLHF #217",
)
class LeftPadNoPositionIds(GRPOLoop):
    """The training forward passes no ``position_ids``: padded rows see shifted absolute positions."""

    def position_ids(self, attention_mask):
        return None


@mutant(
    "15",
    "logps",
    id="15-dropout-on",
    title="dropout left on: ratio ≠ 1 at the first on-policy step",
    seen_in="TRL PR #3234",
    config=LoopConfig(dropout=0.1, disable_dropout=False, num_iterations=2),
)
class DropoutOn(GRPOLoop):
    """The model config has dropout and nothing disables it; the config flag says it was disabled."""

    pipeline = "loop"


@mutant(
    "3",
    "logps",
    id="3-sampler-renormalised-top-p",
    title="sampler log-probs renormalised over the top-p support",
    seen_in="TRL #6789",
    config=LoopConfig(top_p=0.8),
)
class SamplerRenormalised(GRPOLoop):
    """The engine reports log-probs of its *processed* (truncated, renormalised) distribution."""

    def sampler_logps(self, logits, tokens):
        probs = self._sampling_probs(logits.float())
        return torch.log(probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1))


@mutant(
    "1",
    "logps",
    id="1-sampler-weights-not-synced",
    title="weights not pushed to the sampler after the optimizer step (silently off-policy)",
    seen_in="verl PR #2953; TRL PR #3867; open-instruct #1473",
    also=("26",),
    config=LoopConfig(generation_rounds=2, learning_rate=1e-3),
)
class SamplerNotSynced(GRPOLoop):
    """The weight sync after each optimizer step is skipped: round 2 is generated by the old weights."""

    def after_optimizer_step(self):
        pass


@mutant(
    "16",
    "logps",
    id="16-old-logps-bf16",
    title="old log-probs computed under bfloat16 autocast, the training forward in float32 (ρ ≠ 1 on-policy)",
    seen_in="verl #6280, #2996; xtuner PR #1108",
    also=("15", "32"),
    config=LoopConfig(num_iterations=2),
)
class OldLogpsBfloat16(GRPOLoop):
    """The no-grad 'old' forward runs under bf16 autocast to save memory; the loss forward does not."""

    def old_logps(self, batch):
        if self.config.num_iterations == 1:
            return None
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return self.per_token_logps(self.model, *self._model_inputs(batch)).float()


@mutant(
    "32",
    "logps",
    id="32-bf16-log-softmax",
    title="trainer log-softmax computed in bfloat16 (quantised log-probs)",
    seen_in="transformers #31267",
    also=("16",),
)
class Bfloat16LogSoftmax(GRPOLoop):
    """Logits are cast to bfloat16 before the log-softmax (a memory optimisation), then back to float32."""

    def selective_log_softmax(self, logits, index):
        return super().selective_log_softmax(logits.to(torch.bfloat16), index).float()


@mutant(
    "17",
    "logps",
    id="17-old-logps-after-update",
    title="old log-probs recomputed after the optimizer step: ratio ≡ 1, clipping silently inactive",
    seen_in="open-instruct PR #755; TRL PR #3725",
    config=LoopConfig(num_iterations=2),
)
class OldLogpsAfterUpdate(GRPOLoop):
    """Each iteration re-takes the 'old' log-probs from the current weights instead of the generating ones."""

    def old_logps_for_iteration(self, batch, iteration):
        with torch.no_grad():
            return self.per_token_logps(self.model, *self._model_inputs(batch))


@mutant(
    "20",
    "logps",
    id="20-ref-is-policy",
    title="reference log-probs taken from the policy itself (KL ≡ 0)",
    seen_in="TRL #3194 / PR #3196, #1340",
    config=LoopConfig(beta=0.04, generation_rounds=2, learning_rate=1e-3),
)
class RefIsPolicy(GRPOLoop):
    """The reference forward uses the policy (the adapter was never disabled)."""

    def reference_logps(self, batch):
        if self.config.beta == 0.0:
            return None
        with torch.no_grad():
            return self.per_token_logps(self.model, *self._model_inputs(batch))


# ===================================================================================================== ratio


@mutant(
    "21",
    "ratio",
    id="21-clip-higher-ignored",
    title="clip-higher (epsilon_high) configured but the upper bound uses epsilon",
    seen_in="fla #1073; rllm #81",
    config=LoopConfig(num_iterations=2, epsilon_high=0.28, learning_rate=1e-3),
)
class ClipHigherIgnored(GRPOLoop):
    """``clamp(ρ, 1 − ε, 1 + ε)``: the declared ε_high never takes effect."""

    def clip_ratio(self, ratio):
        return torch.clamp(ratio, 1 - self.config.epsilon, 1 + self.config.epsilon)


@mutant(
    "22",
    "ratio",
    id="22-clip-fraction-over-one",
    title="clip-fraction metric divided by sequences instead of tokens (> 1)",
    seen_in="TRL PR #3175, #3289; RLinf #1471",
    config=LoopConfig(num_iterations=2, learning_rate=1e-3),
)
class ClipFractionPerSequence(GRPOLoop):
    """Clipped *tokens* are counted, but divided by the number of *sequences*."""

    def metrics(self, ratio, advantages, mask):
        high = self.config.epsilon if self.config.epsilon_high is None else self.config.epsilon_high
        low_clipped = (ratio < 1 - self.config.epsilon) & (advantages < 0)
        high_clipped = (ratio > 1 + high) & (advantages > 0)
        rows = float(mask.shape[0])
        return {
            "clip_ratio/low_mean": float((low_clipped * mask).sum() / rows),
            "clip_ratio/high_mean": float((high_clipped * mask).sum() / rows),
            "clip_ratio/region_mean": float(((low_clipped | high_clipped) * mask).sum() / rows),
        }


# ======================================================================================================== kl


@mutant(
    "18",
    "kl",
    id="18-k1-as-kl-loss",
    title="k1 (logp − ref) used as the KL loss instead of k3",
    seen_in="Schulman 'Approximating KL'; arXiv 2512.21852 (TRL #4967)",
    config=LoopConfig(beta=0.04, generation_rounds=2, learning_rate=1e-3),
)
class K1AsKlLoss(GRPOLoop):
    """k1 has the right expectation but the wrong gradient (a constant 1 per token)."""

    def per_token_kl(self, logps, ref_logps, ratio):
        kl = logps - ref_logps
        return kl * ratio if self.config.use_bias_correction_kl else kl


@mutant(
    "18",
    "kl",
    id="18-k3-arguments-swapped",
    title="k3 with its arguments swapped (estimates KL(ref ‖ π) instead of KL(π ‖ ref))",
    seen_in="TRL PR #4638, #6503",
    config=LoopConfig(beta=0.04, generation_rounds=2, learning_rate=1e-3),
)
class K3Swapped(GRPOLoop):
    """``exp(logp − ref) − (logp − ref) − 1``: still ≥ 0, but a different divergence with a different gradient."""

    def per_token_kl(self, logps, ref_logps, ratio):
        delta = logps - ref_logps
        kl = torch.exp(delta) - delta - 1
        return kl * ratio if self.config.use_bias_correction_kl else kl


# ====================================================================================================== loss


@mutant(
    "21",
    "loss",
    id="21-kl-penalty-sign",
    title="KL penalty subtracted instead of added (the policy is pushed away from the reference)",
    seen_in="rllm #81-style sign errors",
    also=("18",),
    config=LoopConfig(beta=0.04, generation_rounds=2, learning_rate=1e-3),
)
class KlPenaltySign(GRPOLoop):
    def per_token_loss(self, ratio, clipped_ratio, advantages, kl):
        loss = self.policy_loss(ratio, clipped_ratio, advantages)
        return loss if kl is None else loss - self.config.beta * kl


@mutant(
    "21",
    "loss",
    id="21-clipping-not-used",
    title="clipped ratio computed but the loss uses the unclipped ρ·A",
    seen_in="verl PR #784; rllm #81",
    config=LoopConfig(num_iterations=2, learning_rate=1e-3),
)
class ClippingNotUsed(GRPOLoop):
    def policy_loss(self, ratio, clipped_ratio, advantages):
        return -(ratio * advantages)


@mutant(
    "21",
    "loss",
    id="21-loss-sign-flipped",
    title="policy loss sign flipped (gradient ascent on the loss)",
    seen_in="fla #1073",
)
class LossSignFlipped(GRPOLoop):
    def policy_loss(self, ratio, clipped_ratio, advantages):
        return torch.min(ratio * advantages, clipped_ratio * advantages)


@mutant(
    "28",
    "loss",
    id="28-tool-tokens-trained",
    title="tool-output tokens inside the completion are trained on",
    seen_in="TRL PR #4975; NeMo-RL PR #2176",
    config=LoopConfig(tool_calls=True),
)
class ToolTokensTrained(GRPOLoop):
    """The loss mask is the completion mask alone; the tool mask is recorded but never applied."""

    def loss_mask(self, completion_mask, tool_mask):
        return completion_mask


@mutant(
    "4",
    "loss",
    id="4-grpo-loss-not-scaled-by-gas",
    title="loss not divided by gradient_accumulation_steps (gradient × GAS)",
    seen_in="TRL #3021; unsloth #3006",
    config=LoopConfig(num_prompts=4, gradient_accumulation_steps=4),
)
class LossNotScaledByGas(GRPOLoop):
    def aggregate(self, per_token_loss, mask, num_items_in_batch):
        mask = mask.to(per_token_loss.dtype)
        return ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


@mutant(
    "4",
    "loss",
    id="4-dapo-local-normaliser",
    title="DAPO normaliser uses the micro-batch token count instead of the global one",
    seen_in="TRL PR #6024, #5619; verl #5625",
    config=LoopConfig(num_prompts=4, gradient_accumulation_steps=4, loss_type="dapo"),
)
class DapoLocalNormaliser(GRPOLoop):
    def aggregate(self, per_token_loss, mask, num_items_in_batch):
        mask = mask.to(per_token_loss.dtype)
        return (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)


@mutant(
    "5",
    "loss",
    id="5-dapo-declared-seq-mean",
    title="loss_type='dapo' declared, per-sequence mean (grpo aggregation) computed",
    seen_in="TRL PR #3256, #3938; verl #3741",
    config=LoopConfig(loss_type="dapo"),
)
class DapoDeclaredSeqMean(GRPOLoop):
    def aggregate(self, per_token_loss, mask, num_items_in_batch):
        mask = mask.to(per_token_loss.dtype)
        return ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


@mutant(
    "5",
    "loss",
    id="5-dr-grpo-token-count",
    title="dr_grpo normalised by the token count instead of B·L_max",
    seen_in="Dr. GRPO (arXiv 2503.20783); TRL PR #3256",
    config=LoopConfig(loss_type="dr_grpo"),
)
class DrGrpoTokenCount(GRPOLoop):
    def aggregate(self, per_token_loss, mask, num_items_in_batch):
        mask = mask.to(per_token_loss.dtype)
        return (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)


# ====================================================================================================== grad


@mutant(
    None,
    "grad",
    id="ratio-detached",
    title="importance ratio detached: no policy gradient flows through ρ",
    seen_in="hand-written loops computing ρ under no_grad / with .detach()",
    also=("21",),
    keywords=("detach", "no gradient", "zero gradient"),
    config=LoopConfig(beta=0.04),
)
class RatioDetached(GRPOLoop):
    def importance_ratio(self, logps, old_logps):
        return torch.exp(logps - old_logps).detach()
