"""A small, *correct*, hand-written GRPO training loop on a tiny causal LM, recorded through ``Recorder``.

This is the pipeline every loop-based mutant of the bug zoo starts from. It follows the structure of TRL's
``GRPOTrainer`` (generate → decode → score → group advantages → per-token log-probs → ratio → KL → loss →
aggregate → backward), but each step is one small overridable method, so a mutant is a subclass that swaps
*one* function the way the bug appeared in the wild (e.g. ``selective_log_softmax`` with the sign flipped).

Everything is built from code: a 2-layer GPT-2 (hidden 32; absolute position embeddings, so left padding
without position ids really changes log-probs, as in TRL #6800) over a 16-symbol vocabulary of plain integer
ids. One run (3 prompts × 4 generations, 8 completion tokens) takes well under a second on one CPU core.

Example::

    >>> from grpo_check.zoo.loop import GRPOLoop, LoopConfig
    >>> run = GRPOLoop(LoopConfig(loss_type="dapo", beta=0.04)).run()
    >>> [step.meta["scope"] for step in run.trace.steps]
    ['generation', 'micro_batch']
    >>> sorted(run.trace.steps[1].tensors)[:3]
    ['advantages', 'clipped_ratio', 'completion_ids']
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch

from grpo_check.config import GRPOSpec
from grpo_check.zoo.toy import ToyVocab, build_tiny_policy

__all__ = ["GRPOLoop", "LoopConfig", "LoopRun", "ToyVocab", "build_tiny_policy"]


# ---------------------------------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """What one zoo run trains with. Fields mirror :class:`grpo_check.GRPOSpec` (and TRL's ``GRPOConfig``)."""

    num_prompts: int = 3
    num_generations: int = 4
    max_completion_length: int = 8
    generation_rounds: int = 1  # how many times a fresh batch is generated
    num_iterations: int = 1  # optimizer passes over one generation batch (μ in the paper)
    gradient_accumulation_steps: int = 1
    loss_type: str = "grpo"
    beta: float = 0.0
    kl_estimator: str = "k3"
    use_bias_correction_kl: bool = True
    epsilon: float = 0.2
    epsilon_high: float | None = None
    std: str = "sample"
    adv_epsilon: float = 1e-4
    scale_rewards: str = "group"
    temperature: float = 1.0
    top_p: float = 1.0
    reward_weights: tuple[float, ...] = (1.0, 0.5)
    learning_rate: float = 3e-4
    pad_is_eos: bool = False
    secondary_eos: bool = False  # two EOS ids: end-of-turn (1) and tokenizer.eos_token_id (3)
    tool_calls: bool = False  # rows with an injected tool answer (tool_mask = 0 on its tokens)
    unscorable_rows: tuple[int, ...] = ()  # rows every reward function returns NaN (None) for
    zero_reward_prompts: tuple[int, ...] = ()  # prompts whose completions all score 0 (an all-equal group)
    dropout: float = 0.0
    disable_dropout: bool = (
        True  # TRL's `disable_dropout` (PR #3234): the fix for a model trained with dropout
    )
    seed: int = 0

    @property
    def batch_size(self) -> int:
        return self.num_prompts * self.num_generations

    def spec(self) -> GRPOSpec:
        """The algorithm configuration the loop *declares* (what the reference is run with)."""
        return GRPOSpec(
            num_generations=self.num_generations,
            scale_rewards=self.scale_rewards,
            std=self.std,
            adv_epsilon=self.adv_epsilon,
            reward_weights=self.reward_weights,
            temperature=self.temperature,
            top_p=self.top_p,
            loss_type=self.loss_type,
            epsilon=self.epsilon,
            epsilon_high=self.epsilon_high,
            max_completion_length=self.max_completion_length,
            beta=self.beta,
            kl_estimator=self.kl_estimator,
            use_bias_correction_kl=self.use_bias_correction_kl,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            steps_per_generation=self.gradient_accumulation_steps,
            num_processes=1,
            num_iterations=self.num_iterations,
        )


@dataclasses.dataclass
class LoopRun:
    """What a run leaves behind: the trace, and the weights each optimizer step started from.

    ``policy_at(step)`` rebuilds the policy as it was when optimizer step ``step`` computed its log-probs, so
    a comparison that recomputes log-probs with its own forward pass uses the right weights.
    """

    trace: Any
    spec: GRPOSpec
    config: LoopConfig
    snapshots: dict[int, dict[str, torch.Tensor]]
    ref_model: torch.nn.Module | None
    vocab: ToyVocab

    def policy_at(self, step: int) -> torch.nn.Module:
        model = build_tiny_policy(self.vocab.size, seed=self.config.seed, dropout=0.0)
        model.load_state_dict(self.snapshots[step])
        return model.eval()


# ------------------------------------------------------------------------------------------------ loop
class GRPOLoop:
    """The correct loop. Mutants subclass it and override exactly one method.

    Method map (TRL names in brackets):

    * batch: :meth:`make_prompts`, :meth:`expand_prompts`, :meth:`sample` [vLLM / ``generate``],
      :meth:`completion_mask`, :meth:`decode` [``batch_decode``]
    * rewards: :meth:`reward_functions`, :meth:`combine_rewards` [``_calculate_rewards``]
    * advantages: :meth:`group_rewards`, :meth:`compute_advantages`
    * logps: :meth:`position_ids`, :meth:`completion_logits`, :meth:`selective_log_softmax`,
      :meth:`per_token_logps` [``_get_per_token_logps_and_entropies``], :meth:`old_logps`,
      :meth:`reference_logps`, :meth:`sampler_logps`
    * ratio / kl / loss: :meth:`importance_ratio`, :meth:`clip_ratio`, :meth:`per_token_kl`,
      :meth:`per_token_loss`, :meth:`loss_mask`, :meth:`aggregate` [``_compute_loss``], :meth:`metrics`
    """

    name = "zoo-loop"

    def __init__(self, config: LoopConfig | None = None):
        self.config = config or LoopConfig()
        self.vocab = ToyVocab(pad_is_eos=self.config.pad_is_eos, secondary_eos=self.config.secondary_eos)
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.ref_model = build_tiny_policy(self.vocab.size, seed=self.config.seed)
        self.ref_model.requires_grad_(False)
        # The policy starts from the reference weights (KL = 0 at the first step, as in TRL).
        self.model = build_tiny_policy(self.vocab.size, seed=self.config.seed, dropout=self.config.dropout)
        self.sampler_model = copy.deepcopy(self.model).eval()  # the "inference engine" copy (vLLM)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.config.learning_rate)
        self.optimizer_steps = 0

    # ------------------------------------------------------------------------------------------ batch
    def make_prompts(self) -> list[list[int]]:
        """Prompts of different lengths (so left padding matters): ``<bos>`` + 2..5 random letters."""
        prompts = []
        for index in range(self.config.num_prompts):
            length = 2 + (index % 4)
            letters = torch.randint(0, len(self.vocab.letters), (length,), generator=self.generator)
            prompts.append([self.vocab.bos_token_id, *(self.vocab.first_letter_id + letters).tolist()])
        return prompts

    def pad_prompts(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left padding, as for generation."""
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.vocab.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        return ids, mask

    def expand_prompts(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """G copies of each prompt, consecutive (``repeat_interleave``), plus which prompt each row is."""
        group_size = self.config.num_generations
        group_index = torch.arange(prompt_ids.shape[0]).repeat_interleave(group_size)
        return (
            prompt_ids.repeat_interleave(group_size, dim=0),
            prompt_mask.repeat_interleave(group_size, dim=0),
            group_index,
        )

    def sampler_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The inference engine's next-token logits (its own, correct, position handling)."""
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        return self.sampler_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).logits[:, -1, :]

    def sampler_logps(self, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """What the engine reports for the sampled token: the full-vocabulary log-prob at temperature T."""
        logprobs = torch.log_softmax(logits.float() / self.config.temperature, dim=-1)
        return logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)

    def _sampling_probs(self, logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits / self.config.temperature, dim=-1)
        if self.config.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            before = sorted_probs.cumsum(-1) - sorted_probs
            keep_sorted = before < self.config.top_p
            keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
            probs = torch.where(keep, probs, torch.zeros_like(probs))
            probs = probs / probs.sum(-1, keepdim=True)
        return probs

    @torch.no_grad()
    def sample(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token-by-token sampling (temperature, top-p); rows stop at EOS and are padded after it.

        With ``tool_calls``, odd rows get a forced tool answer (marker + 2 letters) at positions 2..4; the
        engine still reports log-probs for those tokens, but they are not the policy's to train on.
        """
        rows = prompt_ids.shape[0]
        length = self.config.max_completion_length
        ids, mask = prompt_ids.clone(), prompt_mask.clone()
        completion = torch.full((rows, length), self.vocab.pad_token_id, dtype=torch.long)
        sampler_logps = torch.zeros((rows, length))
        finished = torch.zeros(rows, dtype=torch.bool)
        for position in range(length):
            logits = self.sampler_forward(ids, mask)
            tokens = torch.multinomial(self._sampling_probs(logits), 1, generator=self.generator).squeeze(-1)
            if self.config.tool_calls and 2 <= position <= 4:
                forced = self.vocab.tool_token_id if position == 2 else self.vocab.letter_id("k")
                tokens = torch.where(torch.arange(rows) % 2 == 1, torch.full_like(tokens, forced), tokens)
            tokens = torch.where(finished, torch.full_like(tokens, self.vocab.pad_token_id), tokens)
            sampler_logps[:, position] = torch.where(finished, 0.0, self.sampler_logps(logits, tokens))
            completion[:, position] = tokens
            ends = torch.isin(tokens, torch.tensor(self.vocab.eos_token_ids))
            finished |= ends
            ids = torch.cat([ids, tokens.unsqueeze(-1)], dim=1)
            mask = torch.cat([mask, (~finished | ends).long().unsqueeze(-1)], 1)
        return completion, sampler_logps

    def completion_mask(self, completion_ids: torch.Tensor) -> torch.Tensor:
        """1 up to and including the first EOS (any EOS id; to the end when there is none), 0 after it."""
        is_eos = torch.isin(completion_ids, torch.tensor(self.vocab.eos_token_ids))
        length = completion_ids.shape[1]
        first_eos = torch.where(
            is_eos.any(-1),
            is_eos.int().argmax(-1),
            torch.full_like(is_eos[:, 0], length - 1, dtype=torch.long),
        )
        positions = torch.arange(length).unsqueeze(0)
        return (positions <= first_eos.unsqueeze(-1)).long()

    def tool_mask(self, completion_ids: torch.Tensor) -> torch.Tensor | None:
        if not self.config.tool_calls:
            return None
        mask = torch.ones_like(completion_ids)
        mask[1::2, 2:5] = 0
        return mask

    def decode(self, completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> list[str]:
        """Decode each completion (its masked tokens), skipping special tokens."""
        return [
            self.vocab.decode(row[m.bool()].tolist())
            for row, m in zip(completion_ids, completion_mask, strict=True)
        ]

    # ---------------------------------------------------------------------------------------- rewards
    def reward_functions(self, texts: list[str], group_index: torch.Tensor) -> torch.Tensor:
        """Two reward functions, (B, F): share of early letters (a-f), and a length bonus.

        Edge cases from the config: rows in ``unscorable_rows`` get NaN from every function (the verifier could
        not parse them: TRL's ``None``); prompts in ``zero_reward_prompts`` always score 0 (an all-equal group).
        """
        early = set(self.vocab.letters[:6])
        scores = []
        for row, text in enumerate(texts):
            share = sum(c in early for c in text) / max(len(text), 1)
            length_bonus = min(len(text), 6) / 6.0
            if int(group_index[row]) in self.config.zero_reward_prompts:
                share, length_bonus = 0.0, 0.0
            if row in self.config.unscorable_rows:
                share, length_bonus = float("nan"), float("nan")
            scores.append([share, length_bonus])
        return torch.tensor(scores, dtype=torch.float32)

    def combine_rewards(self, rewards_per_func: torch.Tensor) -> torch.Tensor:
        """Weighted sum over reward functions, skipping NaN entries; NaN when every function returned NaN."""
        weights = torch.tensor(self.config.reward_weights, dtype=torch.float32)
        total = (rewards_per_func * weights).nansum(dim=1)
        return total.masked_fill(torch.isnan(rewards_per_func).all(dim=1), float("nan"))

    # ------------------------------------------------------------------------------------- advantages
    def group_rewards(self, rewards: torch.Tensor) -> torch.Tensor:
        """(num_prompts, G): rows are laid out prompt by prompt (``repeat_interleave``), as TRL does."""
        return rewards.view(-1, self.config.num_generations)

    def group_statistics(self, grouped: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """NaN-aware per-group mean, std and number of scorable rows (unscorable rows are left out)."""
        finite = ~torch.isnan(grouped)
        count = finite.sum(dim=1).float()
        values = torch.where(finite, grouped, torch.zeros_like(grouped))
        mean = values.sum(dim=1) / count.clamp(min=1.0)
        squares = torch.where(finite, (grouped - mean.unsqueeze(1)) ** 2, torch.zeros_like(grouped)).sum(
            dim=1
        )
        dof = count - 1.0 if self.config.std == "sample" else count
        std = (squares / dof.clamp(min=1.0)).sqrt()
        return mean, std, count

    def compute_advantages(self, rewards: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
        """A = (r − mean_group) / (std_group + ε); 0 for unscorable rows and groups with < 2 scorable rows."""
        group_size = self.config.num_generations
        mean, std, count = self.group_statistics(self.group_rewards(rewards))
        mean, std, count = (x.repeat_interleave(group_size) for x in (mean, std, count))
        advantages = rewards - mean
        if self.config.scale_rewards == "group":
            advantages = advantages / (std + self.config.adv_epsilon)
        keep = (count > 1) & ~torch.isnan(rewards)
        return torch.where(keep, advantages, torch.zeros_like(advantages))

    # ------------------------------------------------------------------------------------------- logps
    def position_ids(self, attention_mask: torch.Tensor) -> torch.Tensor | None:
        """Positions that skip the left padding (what ``generate`` uses)."""
        return (attention_mask.cumsum(-1) - 1).clamp(min=0)

    def completion_logits(self, logits: torch.Tensor, prompt_length: int) -> torch.Tensor:
        """The logits that predict each completion token: position t−1 predicts token t."""
        return logits[:, prompt_length - 1 : -1, :]

    def selective_log_softmax(self, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """log p(index) = logit[index] − logsumexp(logits)."""
        picked = logits.gather(-1, index.unsqueeze(-1)).squeeze(-1)
        return picked - torch.logsumexp(logits, dim=-1)

    def scale_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Divide by the sampling temperature, as the sampler did."""
        return logits / self.config.temperature

    def per_token_logps(
        self, model, prompt_ids, prompt_mask, completion_ids, completion_mask
    ) -> torch.Tensor:
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        logits = model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=self.position_ids(attention_mask)
        ).logits
        logits = self.completion_logits(logits, prompt_ids.shape[1])
        return self.selective_log_softmax(self.scale_logits(logits), completion_ids)

    def old_logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Log-probs of the policy that generated the batch; needed when the batch is reused (μ > 1)."""
        if self.config.num_iterations == 1:
            return None
        with torch.no_grad():
            return self.per_token_logps(self.model, *self._model_inputs(batch))

    def old_logps_for_iteration(self, batch, iteration: int) -> torch.Tensor | None:
        """Old log-probs used by iteration ``iteration`` (the ones taken at generation time)."""
        return batch.get("old_logps")

    def reference_logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if self.config.beta == 0.0:
            return None
        with torch.no_grad():
            return self.per_token_logps(self.ref_model, *self._model_inputs(batch))

    # ------------------------------------------------------------------------------- ratio / kl / loss
    def importance_ratio(self, logps: torch.Tensor, old_logps: torch.Tensor) -> torch.Tensor:
        return torch.exp(logps - old_logps)

    def clip_ratio(self, ratio: torch.Tensor) -> torch.Tensor:
        high = self.config.epsilon if self.config.epsilon_high is None else self.config.epsilon_high
        return torch.clamp(ratio, 1 - self.config.epsilon, 1 + high)

    def per_token_kl(self, logps: torch.Tensor, ref_logps: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        """k3 = exp(ref − logp) − (ref − logp) − 1, times the ratio (TRL's ``use_bias_correction_kl``)."""
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1
        return kl * ratio if self.config.use_bias_correction_kl else kl

    def policy_loss(self, ratio, clipped_ratio, advantages) -> torch.Tensor:
        """−min(ρ·A, clip(ρ)·A)."""
        return -torch.min(ratio * advantages, clipped_ratio * advantages)

    def per_token_loss(self, ratio, clipped_ratio, advantages, kl) -> torch.Tensor:
        loss = self.policy_loss(ratio, clipped_ratio, advantages)
        return loss if kl is None else loss + self.config.beta * kl

    def loss_mask(self, completion_mask: torch.Tensor, tool_mask: torch.Tensor | None) -> torch.Tensor:
        return completion_mask if tool_mask is None else completion_mask * tool_mask

    def aggregate(
        self, per_token_loss: torch.Tensor, mask: torch.Tensor, num_items_in_batch: int
    ) -> torch.Tensor:
        """TRL's aggregation per loss type, scaled for gradient accumulation."""
        gas = self.config.gradient_accumulation_steps
        mask = mask.to(per_token_loss.dtype)
        loss_type = self.config.loss_type
        if loss_type == "grpo":
            return ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean() / gas
        if loss_type == "bnpo":
            return (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0) / gas
        if loss_type == "dr_grpo":
            rows = per_token_loss.shape[0]
            return (per_token_loss * mask).sum() / (rows * self.config.max_completion_length) / gas
        if loss_type == "dapo":
            return (per_token_loss * mask).sum() / max(float(num_items_in_batch), 1.0)
        raise ValueError(f"loop does not implement loss_type {loss_type!r}")

    def metrics(self, ratio, advantages, mask) -> dict[str, float]:
        """Clip fractions as TRL logs them: share of *tokens* whose ratio is clipped in the advantage's direction."""
        high = self.config.epsilon if self.config.epsilon_high is None else self.config.epsilon_high
        low_clipped = (ratio < 1 - self.config.epsilon) & (advantages < 0)
        high_clipped = (ratio > 1 + high) & (advantages > 0)
        tokens = mask.sum().clamp(min=1.0)
        return {
            "clip_ratio/low_mean": float((low_clipped * mask).sum() / tokens),
            "clip_ratio/high_mean": float((high_clipped * mask).sum() / tokens),
            "clip_ratio/region_mean": float(((low_clipped | high_clipped) * mask).sum() / tokens),
        }

    # ------------------------------------------------------------------------------------ orchestration
    def _model_inputs(self, batch):
        return batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"], batch["completion_mask"]

    def set_train_mode(self) -> None:
        """Dropout is switched off (TRL's ``disable_dropout``) unless the config says otherwise."""
        if self.config.dropout > 0 and not self.config.disable_dropout:
            self.model.train()
        else:
            self.model.eval()

    def sync_sampler_weights(self) -> None:
        """Push the trained weights to the inference engine after each optimizer step."""
        self.sampler_model.load_state_dict(self.model.state_dict())

    def generate_and_score(self) -> dict[str, Any]:
        prompt_ids, prompt_mask = self.pad_prompts(self.make_prompts())
        prompt_ids, prompt_mask, group_index = self.expand_prompts(prompt_ids, prompt_mask)
        completion_ids, sampler_logps = self.sample(prompt_ids, prompt_mask)
        completion_mask = self.completion_mask(completion_ids)
        texts = self.decode(completion_ids, completion_mask)
        rewards_per_func = self.reward_functions(texts, group_index)
        rewards = self.combine_rewards(rewards_per_func)
        advantages = self.compute_advantages(rewards, group_index)
        batch: dict[str, Any] = {
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "completion_ids": completion_ids,
            "completion_mask": completion_mask,
            "group_index": group_index,
            "tool_mask": self.tool_mask(completion_ids),
            "rewards_per_func": rewards_per_func,
            "rewards": rewards,
            "advantages": advantages,
            "sampler_logps": sampler_logps,
            "texts": texts,
        }
        self.set_train_mode()
        batch["old_logps"] = self.old_logps(batch)
        batch["ref_logps"] = self.reference_logps(batch)
        return batch

    def _common_meta(self) -> dict[str, Any]:
        return {
            "gradient_accumulation_steps": self.config.gradient_accumulation_steps,
            "steps_per_generation": self.config.gradient_accumulation_steps,
            "num_processes": 1,
            "num_generations": self.config.num_generations,
            "eos_token_ids": list(self.vocab.eos_token_ids),
            "pad_token_id": self.vocab.pad_token_id,
            "kl_estimator": self.config.kl_estimator,
        }

    def record_generation(self, recorder, batch, generation: int) -> None:
        """One ``scope="generation"`` step per generation batch: whole groups, so the reward and advantage
        stages are checked where every group is complete (as the TRL adapter does)."""
        num_items = int(self.loss_mask(batch["completion_mask"], batch["tool_mask"]).sum())
        with recorder.step(
            step=self.optimizer_steps,
            micro_batch=0,
            scope="generation",
            generation=generation,
            num_items_in_batch=num_items,
            **self._common_meta(),
        ) as s:
            s.record(
                prompt_ids=batch["prompt_ids"],
                prompt_mask=batch["prompt_mask"],
                completion_ids=batch["completion_ids"],
                completion_mask=batch["completion_mask"],
                group_index=batch["group_index"],
                tool_mask=batch["tool_mask"],
                rewards_per_func=batch["rewards_per_func"],
                reward_weights=torch.tensor(self.config.reward_weights),
                rewards=batch["rewards"],
                advantages=batch["advantages"],
            )
            s.record_text(completion_text=batch["texts"])

    def train_micro_batch(self, recorder, batch, rows: slice, *, iteration: int, micro_batch: int) -> None:
        part = {k: (v[rows] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        part["texts"] = batch["texts"][rows]
        num_items = int(self.loss_mask(batch["completion_mask"], batch["tool_mask"]).sum())
        group_index = part["group_index"]
        whole_groups = all(
            int((group_index == g).sum()) == int((batch["group_index"] == g).sum())
            for g in group_index.unique()
        )
        with recorder.step(
            step=self.optimizer_steps,
            micro_batch=micro_batch,
            scope="micro_batch",
            iteration=iteration,
            optimizer_steps_since_old_logps=iteration,
            num_items_in_batch=num_items,
            **self._common_meta(),
        ) as s:
            if whole_groups:
                s.record(group_index=group_index)
            else:  # partial groups: the advantage stage is checked on the generation step instead
                s.record_extra(group_index=group_index)
            s.record(
                prompt_ids=part["prompt_ids"],
                prompt_mask=part["prompt_mask"],
                completion_ids=part["completion_ids"],
                completion_mask=part["completion_mask"],
                tool_mask=part["tool_mask"],
                rewards_per_func=part["rewards_per_func"],
                reward_weights=torch.tensor(self.config.reward_weights),
                rewards=part["rewards"],
                advantages=part["advantages"],
                sampler_logps=part["sampler_logps"],
                ref_logps=part["ref_logps"],
            )
            s.record_text(completion_text=part["texts"])
            logps = self.per_token_logps(self.model, *self._model_inputs(part))
            s.watch("logps", logps)
            old_logps = self.old_logps_for_iteration(part, iteration)
            if old_logps is None:
                old_logps = logps.detach()
            else:
                s.record(old_logps=old_logps)
            ratio = self.importance_ratio(logps, old_logps)
            clipped = self.clip_ratio(ratio)
            advantages = part["advantages"].unsqueeze(1)
            kl = None if part["ref_logps"] is None else self.per_token_kl(logps, part["ref_logps"], ratio)
            per_token_loss = self.per_token_loss(ratio, clipped, advantages, kl)
            mask = self.loss_mask(part["completion_mask"], part["tool_mask"])
            loss = self.aggregate(per_token_loss, mask, num_items)
            s.record(ratio=ratio, clipped_ratio=clipped, kl=kl, per_token_loss=per_token_loss, loss=loss)
            s.meta["metrics"] = self.metrics(ratio.detach(), advantages, mask)
            loss.backward()

    def run(self, recorder=None) -> LoopRun:
        """Train ``generation_rounds × num_iterations`` optimizer steps; returns the trace and weight snapshots."""
        from grpo_check.trace.recorder import Recorder

        spec = self.config.spec()
        own_recorder = recorder is None
        if own_recorder:
            recorder = Recorder(
                None,
                spec=spec,
                trainer=self.name,
                trainer_config=dataclasses.asdict(self.config),
                seeds=self.config.seed,
            )
        snapshots: dict[int, dict[str, torch.Tensor]] = {}
        gas = self.config.gradient_accumulation_steps
        rows_per_micro = self.config.batch_size // gas
        for generation in range(self.config.generation_rounds):
            batch = self.generate_and_score()
            self.record_generation(recorder, batch, generation)
            for iteration in range(self.config.num_iterations):
                snapshots[self.optimizer_steps] = copy.deepcopy(self.model.state_dict())
                self.set_train_mode()
                self.optimizer.zero_grad()
                for micro in range(gas):
                    rows = slice(micro * rows_per_micro, (micro + 1) * rows_per_micro)
                    self.train_micro_batch(recorder, batch, rows, iteration=iteration, micro_batch=micro)
                self.optimizer.step()
                self.optimizer_steps += 1
                self.after_optimizer_step()
        trace = recorder.close() if own_recorder else recorder.trace
        return LoopRun(
            trace=trace,
            spec=spec,
            config=self.config,
            snapshots=snapshots,
            ref_model=self.ref_model,
            vocab=self.vocab,
        )

    def after_optimizer_step(self) -> None:
        self.sync_sampler_weights()
