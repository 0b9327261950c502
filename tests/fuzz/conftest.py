import sys
from pathlib import Path

# the harness and the targets are imported by name, here and by scripts/fuzz_long.py
sys.path.insert(0, str(Path(__file__).resolve().parent))
