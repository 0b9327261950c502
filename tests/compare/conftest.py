import sys
from pathlib import Path

# the crafted broken steps live beside the diagnosis tests
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "diagnose"))
