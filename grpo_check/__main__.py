from grpo_check.cli import main

main()
