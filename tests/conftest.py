"""Test session setup: 8 host CPU devices for real sharding, CPU only, no hub access."""

import os
from pathlib import Path

# Must be set before jax is imported anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("JAX_DISTILL_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real AIME/AMC/MATH-500 files and the Qwen vocabulary); skip where absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def qwen_tiktoken(shared_data: Path) -> Path:
    path = shared_data / "tokenizer" / "qwen.tiktoken"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path
