"""`DistillConfig`: one typed schema for `jax-distill data distill` (YAML in configs/, dotted overrides, CLI flags)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class TeacherConfig:
    """Who writes the traces. ``api``: any OpenAI-compatible chat endpoint (o1-mini, DeepSeek-R1, QwQ served by
    vLLM/SGLang); ``open``: a local checkpoint sampled by our continuous-batching engine (no API at all)."""

    kind: Literal["api", "open"] = "api"
    model: str = "o1-mini"  # endpoint model name (api)
    endpoint: str | None = None  # base URL, e.g. http://127.0.0.1:8000/v1 (None: api.openai.com)
    api_key_env: str = "OPENAI_API_KEY"
    system_prompt: str | None = None  # None: no system turn (o1 models refuse one)
    prompt_template: str = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
    temperature: float | None = None  # None: the endpoint's default (o1 accepts only its default)
    top_p: float | None = None
    send_seed: bool = True  # api: sample k is requested with seed + k (reproducible on vLLM/SGLang)
    max_tokens: int = 32768  # completion budget per sample (reasoning included); longer = finish_reason length
    # The request field carrying it: o1 models accept only max_completion_tokens; some servers only max_tokens.
    max_tokens_field: Literal["max_completion_tokens", "max_tokens"] = "max_completion_tokens"
    concurrency: int = 16  # requests in flight at most
    max_retries: int = 6  # per request: 429, 5xx, timeouts and dropped connections, exponential backoff with jitter
    timeout: float = 600.0  # seconds per request
    cache: str | None = None  # JSONL of finished responses (None: OUT/teacher_cache.jsonl, or a local file for gs://)
    # USD per 1M tokens; None: the teacher's row in the prices file (`teachers:` in configs/prices.yaml)
    price_input: float | None = None
    price_output: float | None = None
    # Where a separate reasoning field (`reasoning_content`) goes: wrapped in <think></think> before the answer, or
    # dropped (the visible answer only).
    reasoning: Literal["think_tags", "drop"] = "think_tags"
    # open teacher
    checkpoint: str = ""  # HF dir, `convert` Orbax dir or training checkpoint
    tokenizer: str = ""  # the teacher's tokenizer (default: the student's, `filters.tokenizer`)
    slots: int = 64  # engine decode slots
    compact: bool = True  # engine: gather the live rows into a smaller batch in the tail (one compile per size)
    # Decode mesh, as `eval --mesh`: "data=2,tensor=4" (weights tensor-parallel, slots over data); "" = one device.
    mesh: str = ""
    rules: list[str] = field(default_factory=list)  # decode rule overrides, e.g. ["kv_heads=null"]
    seed: int = 0
    dtype: str = "bfloat16"

    def validate(self) -> None:
        if self.concurrency < 1 or self.max_retries < 0 or self.max_tokens < 1 or self.timeout <= 0:
            raise ValueError("teacher: concurrency and max_tokens must be >= 1, max_retries >= 0, timeout > 0")
        if self.kind == "open" and not self.checkpoint:
            raise ValueError("teacher.kind open needs teacher.checkpoint (an HF dir, Orbax dir or checkpoint)")
        if self.mesh or self.rules:
            from jax_distill.sharding import parse_mesh_spec

            m = parse_mesh_spec(self.mesh, self.rules, decode=True)
            if m.data > 0 and self.slots % m.data:
                raise ValueError(f"teacher.slots {self.slots} must divide by the mesh's data axis ({m.data})")


@dataclass
class FilterConfig:
    """What a graded, correct trace must also pass. Lengths are in the student's tokens."""

    tokenizer: str = ""  # the student's tokenizer (.tiktoken, HF dir or hub name): lengths and token totals
    min_tokens: int = 0
    max_tokens: int = 16384  # the student's training seq_len less the prompt is a good bound
    drop_truncated: bool = True  # finish_reason "length": the teacher never finished
    require_final_box: bool = True  # the answer's last \boxed{} closes the text (at most `tail_chars` after it)
    tail_chars: int = 200
    near_duplicate: float = 0.9  # Jaccard of word 5-gram shingles between traces of one problem; 1.0 = exact only
    shingle: int = 5

    def validate(self) -> None:
        if not 0.0 < self.near_duplicate <= 1.0:
            raise ValueError(f"filters.near_duplicate {self.near_duplicate}: a Jaccard threshold in (0, 1]")
        if self.min_tokens < 0 or self.max_tokens < max(1, self.min_tokens) or self.shingle < 1:
            raise ValueError("filters: need 0 <= min_tokens <= max_tokens and shingle >= 1")


@dataclass
class DecontamConfig:
    """Problems sharing an n-gram (numbers normalised) with an evaluation set are removed before sampling."""

    # name -> JSON-lines file (aime24/aime25/amc23/math500 or any name); a name with no file loads from the hub
    sets: dict[str, str | None] = field(default_factory=dict)
    ngram: int = 13  # words (numbers normalised); see distill/decontam.py for the false-match rates measured
    min_overlap: int = 1  # shared n-grams needed to call a problem contaminated

    def validate(self) -> None:
        if self.ngram < 3 or self.min_overlap < 1:
            raise ValueError("decontam: ngram must be >= 3 and min_overlap >= 1")


@dataclass
class DistillConfig:
    """Problem set in → teacher samples → grade → filters → sharded trace JSONL + distill_report.json out."""

    input: str = ""  # datasets hub name, or local/gs:// .jsonl/.json/.parquet file(s) or glob
    config_name: str | None = None  # the hub dataset's config
    split: str = "train"
    limit: int | None = None  # first N rows only
    problem_fields: list[str] = field(default_factory=lambda: ["problem", "question", "prompt"])
    answer_fields: list[str] = field(default_factory=lambda: ["answer", "final_answer"])
    solution_fields: list[str] = field(default_factory=lambda: ["solution", "response"])  # boxed answer fallback
    id_fields: list[str] = field(default_factory=lambda: ["id", "unique_id", "idx"])
    out: str = ""  # output folder, local or gs://
    samples: int = 4  # teacher samples per problem
    keep: Literal["all", "first", "distinct"] = "distinct"  # correct traces kept per problem
    max_per_problem: int = 2  # keep=distinct: at most this many (near-duplicates never count twice)
    shard_problems: int = 256  # problems per output shard (the unit of atomic writes and of resume)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    decontam: DecontamConfig = field(default_factory=DecontamConfig)

    def validate(self) -> None:
        if self.samples < 1 or self.max_per_problem < 1 or self.shard_problems < 1:
            raise ValueError("samples, max_per_problem and shard_problems must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit {self.limit}: must be >= 1 or null")
