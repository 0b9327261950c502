"""An example trainer factory for ``grpo-check compare --trainer examples/train_factory.py:build_trainer``.

grpo-check imports this file, calls ``build_trainer(steps=N)``, attaches its capture hooks to the returned
``GRPOTrainer``, trains N optimizer steps and compares every captured micro-batch with the float64
reference. Write yours the same way: build exactly the trainer your training script builds (model, reward
functions, dataset, GRPOConfig) and return it *before* calling ``train()``.

This one trains a tiny policy built from code (no download) on a digit copy/reverse task, with settings that
leave the defaults that hide bugs (temperature != 1, top_p < 1, beta > 0, steps_per_generation != GAS).

Run::

    grpo-check compare --trainer examples/train_factory.py:build_trainer --steps 2
"""

from __future__ import annotations

import tempfile

from trl import GRPOConfig, GRPOTrainer

from grpo_check.demo.model import build_tokenizer, save_policy
from grpo_check.demo.task import correctness_reward, format_reward, make_dataset


def build_trainer(steps: int = 2) -> GRPOTrainer:
    workdir = tempfile.mkdtemp(prefix="grpo-check-example-")
    model_path = save_policy(f"{workdir}/policy", seed=0)  # your model: a hub id or a local path
    config = GRPOConfig(
        output_dir=f"{workdir}/out",
        max_steps=steps,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=6,
        gradient_accumulation_steps=2,
        steps_per_generation=4,
        temperature=0.7,
        top_p=0.9,
        beta=0.04,
        loss_type="grpo",
        learning_rate=5e-3,
        reward_weights=[1.0, 0.5],
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,  # TRL 1.x defaults to bf16 (autocast, even on CPU): float32 holds it to float32 tolerances
        seed=0,
        disable_tqdm=True,
    )
    return GRPOTrainer(
        model=model_path,
        reward_funcs=[correctness_reward, format_reward],
        args=config,
        train_dataset=make_dataset(64),
        processing_class=build_tokenizer(),
    )
