"""A hand-written GRPO loop with one bug (rewards grouped with view(G, -1)), recorded with grpo_check.Recorder.

Run: python examples/my_loop.py && grpo-check compare traces/my-loop  (see docs/compare.md, "Walkthrough")
"""

import torch

from grpo_check import GRPOSpec, Recorder
from grpo_check.compare.synthetic import TinyLM

G, n_prompts, T = 4, 3, 6
spec = GRPOSpec(num_generations=G, loss_type="grpo", beta=0.0, max_completion_length=T)
torch.manual_seed(0)
model = TinyLM()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
rec = Recorder("traces/my-loop", spec=spec, trainer="my-loop", overwrite=True)
for step in range(3):
    # rows of a prompt are contiguous
    prompts = torch.randint(1, 13, (n_prompts, 3)).repeat_interleave(G, dim=0)
    completions = torch.randint(1, 13, (n_prompts * G, T))
    completion_mask = torch.ones_like(completions)
    rewards = (completions[:, 0] % 3 == 0).double() + 0.1 * completions[:, 1].double() / 13
    grouped = rewards.view(G, -1)  # BUG: should be rewards.view(-1, G)
    advantages = ((grouped - grouped.mean(0)) / (grouped.std(0) + 1e-4)).reshape(-1)
    with rec.step(step=step) as s:
        s.record(
            prompt_ids=prompts,
            prompt_mask=torch.ones_like(prompts),
            completion_ids=completions,
            completion_mask=completion_mask,
            group_index=torch.arange(n_prompts * G) // G,
            rewards_per_func=rewards.unsqueeze(1),
            advantages=advantages,
        )
        logits = model(torch.cat([prompts, completions], 1)).logits[:, prompts.shape[1] - 1 : -1]
        logps = s.watch(
            "logps", torch.log_softmax(logits, -1).gather(-1, completions.unsqueeze(-1)).squeeze(-1)
        )
        old_logps = logps.detach()
        per_token_loss = -torch.exp(logps - old_logps) * advantages.unsqueeze(1)
        loss = ((per_token_loss * completion_mask).sum(1) / completion_mask.sum(1)).mean()
        s.record(old_logps=old_logps, per_token_loss=per_token_loss, loss=loss)
        loss.backward()
    opt.step()
    opt.zero_grad()
rec.close()
