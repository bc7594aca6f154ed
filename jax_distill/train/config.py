"""The run config: one file in configs/ holds the model, the mesh, both SFT stages, optimizer and checkpointing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from jax_distill.data.config import DataConfig
from jax_distill.model.config import ModelConfig
from jax_distill.sharding import MeshConfig


@dataclass
class OptimConfig:
    """AdamW with warmup then decay, global-norm clipping. Weight decay is masked off norms and biases."""

    learning_rate: float = 1e-5
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # final lr = learning_rate * min_lr_ratio
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_norm: float | None = 1.0

    def validate(self) -> None:
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be > 0 or null (no clipping), got {self.clip_norm}")


@dataclass
class StageConfig:
    """One SFT stage. Unset fields (None) fall back to the run's ``train`` section."""

    name: str = "stage"
    data: DataConfig = field(default_factory=DataConfig)
    eval_data: DataConfig | None = None  # held-out loss; None = no held-out evaluation
    steps: int | None = None
    batch_size: int | None = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    reset_optimizer: bool = True  # a later stage starts from the previous stage's weights with a fresh optimizer
    # For the cost model: tokens in one pass over this stage's data and passes planned (the paper's scale).
    dataset_tokens: int | None = None
    epochs: float = 1.0

    def validate(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1 (or unset: train.steps), got {self.steps}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (or unset: train.batch_size), got {self.batch_size}")
        if self.dataset_tokens is not None and self.dataset_tokens < 1:
            raise ValueError(f"dataset_tokens must be >= 1 or null, got {self.dataset_tokens}")
        if not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")


@dataclass
class TrainConfig:
    steps: int = 100  # default steps per stage (`train.steps=N` overrides every stage that does not set its own)
    batch_size: int = 8  # global batch, in packed rows of data.seq_len tokens
    grad_accum: int = 1  # micro-batches per step (batch_size must divide by it)
    log_every: int = 1
    eval_every: int = 0  # 0 = held-out loss only at the end of each stage
    eval_batches: int = 4
    mfu_peak_flops: float | None = None  # per-device peak FLOP/s for MFU; None = look up by device kind

    def validate(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0 (0 = only at the end of each stage), got {self.eval_every}")
        if self.eval_batches < 1:
            raise ValueError(f"eval_batches must be >= 1, got {self.eval_batches}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} does not divide by grad_accum {self.grad_accum}")
        if self.mfu_peak_flops is not None and not self.mfu_peak_flops > 0:
            raise ValueError(f"mfu_peak_flops must be > 0 or null, got {self.mfu_peak_flops}")


@dataclass
class CheckpointConfig:
    dir: str | None = None  # None = <output_dir>/checkpoints
    every: int = 100  # steps between saves (and one at the end of each stage)
    keep: int = 3
    async_save: bool = True
    export_dtype: str = "bfloat16"  # storage dtype of each stage's Hugging Face export (OUT/<stage>/hf)

    def validate(self) -> None:
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every}")
        if self.keep < 1:
            raise ValueError(f"keep must be >= 1, got {self.keep}")


@dataclass
class DistributedConfig:
    """How this process joins a multi-process job (train/distributed.py). ``auto`` detects explicit settings (these
    keys or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID), a SLURM job, or a Cloud TPU VM."""

    mode: Literal["auto", "explicit", "slurm", "tpu", "none"] = "auto"
    coordinator_address: str | None = None  # host:port of process 0
    num_processes: int | None = None
    process_id: int | None = None
    initialization_timeout_s: int = 300  # how long to wait for every process to join
    heartbeat_timeout_s: int = 45  # a process silent this long is declared dead and the others stop (JAX: 100)

    def validate(self) -> None:
        if self.num_processes is not None and self.num_processes < 1:
            raise ValueError(f"num_processes must be >= 1, got {self.num_processes}")
        if self.process_id is not None and self.process_id < 0:
            raise ValueError(f"process_id must be >= 0, got {self.process_id}")
        for name in ("initialization_timeout_s", "heartbeat_timeout_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 second, got {getattr(self, name)}")


@dataclass
class RunConfig:
    name: str = "run"
    seed: int = 0
    output_dir: str = "runs/run"
    model: ModelConfig = field(default_factory=lambda: ModelConfig(preset="tiny"))
    mesh: MeshConfig = field(default_factory=MeshConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stages: list[StageConfig] = field(default_factory=list)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def validate(self) -> None:
        for i, s in enumerate(self.stages):
            bs = self.stage_batch_size(s)
            if bs % self.train.grad_accum:
                raise ValueError(f"stages.{i} ({s.name}): batch_size {bs} does not divide by train.grad_accum "
                                 f"{self.train.grad_accum}")

    def stage_steps(self, stage: StageConfig) -> int:
        """Steps of ``stage``: its own ``steps``, else ``train.steps``."""
        return stage.steps if stage.steps is not None else self.train.steps

    def stage_batch_size(self, stage: StageConfig) -> int:
        """Global batch (packed rows) of ``stage``: its own ``batch_size``, else ``train.batch_size``."""
        return stage.batch_size or self.train.batch_size

    def stage_offsets(self) -> list[int]:
        """Global step at which each stage starts, then the total: stage i covers [offsets[i], offsets[i + 1])."""
        out = [0]
        for s in self.stages:
            out.append(out[-1] + self.stage_steps(s))
        return out
