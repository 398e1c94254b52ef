"""Validated schemas (pydantic) for every YAML config raymlc reads."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class DemoConfig(Strict):
    """The built-in polyphonic demo dataset (see `raymlc.data.demo`)."""

    seed: int = 0
    sample_rate: int = Field(16000, gt=0)
    clip_seconds: float = Field(3.0, gt=0)
    n_train: int = Field(1000, ge=1)
    n_val: int = Field(250, ge=1)
    n_test: int = Field(250, ge=1)
    min_events: int = Field(1, ge=1)
    max_events: int = Field(4, ge=1)
    drop_fraction: float = Field(0.3, ge=0, lt=1)
    removal: Literal["structured", "random"] = "structured"
    explicit_negative_rate: float = Field(0.3, ge=0, le=1)
    audio_format: Literal["flac", "wav"] = "flac"

    @model_validator(mode="after")
    def _events(self) -> Self:
        if self.max_events < self.min_events:
            raise ValueError("max_events must be >= min_events")
        return self


class MixtureConfig(Strict):
    """Multi-label mixtures of real FSDD spoken-digit recordings (see `raymlc.data.mixtures`).

    Each split draws recordings only from its own speakers, so the test speakers are never heard in training.
    """

    seed: int = 0
    sample_rate: int = Field(8000, gt=0)
    clip_seconds: float = Field(2.0, gt=0)
    n_train: int = Field(1200, ge=1)
    n_val: int = Field(300, ge=1)
    n_test: int = Field(300, ge=1)
    min_digits: int = Field(1, ge=1, le=10)
    max_digits: int = Field(3, ge=1, le=10)
    min_gain_db: float = Field(-20.0, le=0)  # each digit's level: uniform in [min_gain_db, 0] dB
    noise_db: float | None = Field(-40.0, le=0)  # white noise floor relative to a 0 dB digit; null: none
    train_speakers: list[str] = Field(default_factory=lambda: ["george", "jackson"], min_length=1)
    val_speakers: list[str] = Field(default_factory=lambda: ["lucas"], min_length=1)
    test_speakers: list[str] = Field(default_factory=lambda: ["nicolas"], min_length=1)
    drop_fraction: float = Field(0.3, ge=0, lt=1)
    removal: Literal["structured", "random"] = "structured"
    explicit_negative_rate: float = Field(0.3, ge=0, le=1)
    audio_format: Literal["flac", "wav"] = "flac"

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.max_digits < self.min_digits:
            raise ValueError("max_digits must be >= min_digits")
        splits = {"train": self.train_speakers, "val": self.val_speakers, "test": self.test_speakers}
        for first, second in (("train", "val"), ("train", "test"), ("val", "test")):
            shared = sorted(set(splits[first]) & set(splits[second]))
            if shared:
                raise ValueError(f"speakers {shared} are in both {first}_speakers and {second}_speakers")
        return self


class DataConfig(Strict):
    """Where the manifest is and which labels to train on."""

    manifest: str
    # Optional separate test manifest (e.g. MULAN's -test.arff, AudioSet's eval set): its rows are the
    # test split and `manifest` is split into train/val only.
    test_manifest: str | None = None
    format: str | None = None
    options: dict[str, str] = Field(default_factory=dict)
    # "observed": `labels` as given; "clean": `labels` ∪ `removed_labels` (the oracle, when recorded).
    label_source: Literal["observed", "clean"] = "observed"
    # When the manifest has no split column: fractions for a seeded multi-label stratified split.
    val_fraction: float = Field(0.15, ge=0, lt=1)
    test_fraction: float = Field(0.15, ge=0, lt=1)
    split_seed: int = 0
    # Folder that relative `audio` paths are relative to (local path or URI); default: the manifest's folder.
    audio_root: str | None = None
    # Before training, a split with more unreadable clips than this fraction stops the stage.
    max_reject_fraction: float = Field(0.05, ge=0, le=1)

    @model_validator(mode="after")
    def _one_audio_root(self) -> Self:
        if "audio_root" in self.options:
            raise ValueError("set data.audio_root, not data.options.audio_root (it applies to every format)")
        return self


class FrontEndConfig(Strict):
    """Log-mel front end; the window is the number of seconds the model sees at once."""

    sample_rate: int = Field(16000, gt=0)
    window_seconds: float = Field(3.0, gt=0)
    n_fft: int = Field(512, gt=0)
    win_length: int = Field(512, gt=0)
    hop_length: int = Field(256, gt=0)
    n_mels: int = Field(64, gt=0)
    f_min: float = Field(50.0, ge=0)
    f_max: float | None = None
    top_db: float = Field(80.0, gt=0)
    freq_mask: int = Field(8, ge=0)
    time_mask: int = Field(24, ge=0)


class ModelConfig(Strict):
    """`cnn` eats waveforms through the log-mel front end; `mlp` eats `features` vectors."""

    kind: Literal["cnn", "mlp"] = "cnn"
    channels: list[int] = Field(default_factory=lambda: [16, 32, 64, 128], min_length=1)
    hidden: list[int] = Field(default_factory=lambda: [256, 128], min_length=1)
    embedding_dim: int = Field(128, gt=0)
    dropout: float = Field(0.2, ge=0, lt=1)


class TrainConfig(Strict):
    """The single-process training loop (Ray Train wraps the same loop)."""

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(32, ge=1)  # the global batch: W data-parallel workers take batch_size / W each
    # Optimizer steps per epoch; default ceil(train clips / batch_size), i.e. one pass over the train split.
    steps_per_epoch: int | None = Field(None, ge=1)
    # "uniform": a seeded permutation per epoch; "balanced": drawn with replacement, a clip's weight being the
    # sum over its labels of 1 / (the label's train frequency), as PANNs and PSLA sample AudioSet.
    sampler: Literal["uniform", "balanced"] = "uniform"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype of the forward pass (fp16 scales grads)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    loss: Literal["bce", "sigmoid_f1"] = "bce"
    sigmoid_f1_beta: float = Field(1.0, gt=0)
    sigmoid_f1_eta: float = 0.0
    seed: int = 0
    num_threads: int | None = Field(None, ge=1)
    eval_batch_size: int = Field(64, ge=1)


class ThresholdConfig(Strict):
    """Adaptive per-label, per-instance thresholds θ_l(x) = λ·α_l·IDF_l + (1−λ)·β_l·KNN_l(x) + b_l.

    α, β, b are fitted on a frozen trained tagger; KNN_l(x) is the similarity-weighted share of the `k`
    nearest training clips (cosine of the model's embeddings) that carry label l (see `raymlc.thresholds`).
    """

    lam: float = Field(0.5, ge=0, le=1)  # λ: weight of the IDF term against the KNN term
    k: int = Field(10, ge=1)
    margin: float = Field(0.5, ge=0)  # Δ: logits closer than this to θ are penalized
    margin_weight: float = Field(0.1, ge=0)
    bank_size: int = Field(20000, ge=1)  # memory-bank cap (seeded uniform sample of the training clips)
    bank_seed: int = 0
    # "val": fit on the validation split (KNN from the training bank); "train": on the training split with
    # each clip excluded from its own neighbours. "val" falls back to "train" when there is no val split.
    fit_split: Literal["train", "val"] = "val"
    epochs: int = Field(300, ge=1)  # full-batch Adam steps
    lr: float = Field(0.05, gt=0)


class TaggerConfig(Strict):
    """What one model needs: data, front end, model, training and thresholds (stored in checkpoints)."""

    data: DataConfig
    frontend: FrontEndConfig = Field(default_factory=FrontEndConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    thresholds: ThresholdConfig = Field(default_factory=ThresholdConfig)

    def core(self) -> TaggerConfig:
        """Just the `TaggerConfig` sections of this config (a `PipelineConfig` drops its Ray sections)."""
        return TaggerConfig.model_validate(self.model_dump(include=set(TaggerConfig.model_fields)))

    @property
    def is_audio(self) -> bool:
        """The one place that decides audio vs features: a CNN takes waveforms (an `audio` manifest) through
        the front end, an MLP takes feature vectors (a `features` manifest)."""
        return self.model.kind == "cnn"

    @property
    def window_samples(self) -> int | None:
        """Samples per model window for audio models; None for feature models (they take whole feature rows)."""
        return round(self.frontend.window_seconds * self.frontend.sample_rate) if self.is_audio else None


class RayTrainConfig(Strict):
    """How Ray Train runs the loop: workers, resources, where checkpoints go, retries."""

    num_workers: int = Field(2, ge=1)
    cpus_per_worker: float = Field(0.5, gt=0)
    use_gpu: bool = False
    torch_threads: int = Field(1, ge=1)
    # Each worker's batches are read (decoded, cropped) by this many reader actors, a block ahead each.
    readers_per_worker: int = Field(1, ge=1)
    # CPUs a reader actor reserves. 0 (like PyTorch DataLoader workers): readers run beside the training
    # processes and can never wait for CPUs those hold; > 0 reserves CPUs, so on a cluster they go to nodes
    # with free CPUs.
    cpus_per_reader: float = Field(0.0, ge=0)
    storage_path: str = "runs/ray"  # local directory or s3://, gs:// URI
    max_failures: int = Field(2, ge=-1)


class ScoringConfig(Strict):
    """Ray Data batch scoring: an autoscaling pool of actors that decode and score `batch_size` clips at a time."""

    batch_size: int = Field(32, ge=1)
    min_actors: int = Field(1, ge=1)
    max_actors: int = Field(2, ge=1)
    cpus_per_actor: float = Field(0.5, gt=0)
    write_embeddings: bool = False

    @model_validator(mode="after")
    def _pool(self) -> Self:
        if self.max_actors < self.min_actors:
            raise ValueError("max_actors must be >= min_actors")
        return self


class RelabelConfig(Strict):
    """`raymlc relabel`: the manifest is cut into parts of `rows_per_part` rows (each committed on its own),
    decoded in tasks and tagged in an autoscaling pool of `min_actors`..`max_actors` actors."""

    rows_per_part: int = Field(256, ge=1)  # a multiple of batch_size; a rerun skips committed parts
    batch_size: int = Field(32, ge=1)  # clips per model call (fixed by row position: reruns match bit for bit)
    min_actors: int = Field(1, ge=1)
    max_actors: int = Field(2, ge=1)
    cpus_per_actor: float = Field(0.5, gt=0)
    decode_cpus: float = Field(0.25, gt=0)
    torch_threads: int = Field(1, ge=1)  # intra-op threads per actor
    min_margin: float = Field(0.0, ge=0)  # propose when logit − θ > min_margin
    review_per_class: int = Field(50, ge=0)  # review-queue entries per class

    @model_validator(mode="after")
    def _sizes(self) -> Self:
        if self.max_actors < self.min_actors:
            raise ValueError("max_actors must be >= min_actors")
        if self.rows_per_part % self.batch_size:
            raise ValueError(
                f"rows_per_part ({self.rows_per_part}) must be a multiple of batch_size ({self.batch_size})"
            )
        return self


class FlaggingConfig(Strict):
    """Which implicit negatives to flag per class: the top `percent` % (or `top_k`) by teacher score."""

    percent: float | None = Field(1.0, ge=0, le=100)
    top_k: int | None = Field(None, ge=0)
    crossfit_folds: int = Field(0, ge=0)  # 0: in-sample teacher scores; k >= 2: k-fold out-of-sample scores
    report_top: int = Field(10, ge=0)  # clips listed per class in the report

    @model_validator(mode="after")
    def _one_rule(self) -> Self:
        if (self.percent is None) == (self.top_k is None):
            raise ValueError("set exactly one of flagging.percent and flagging.top_k")
        if self.crossfit_folds == 1:
            raise ValueError("crossfit_folds must be 0 (in-sample) or >= 2")
        return self


class PipelineConfig(TaggerConfig):
    """`raymlc pipeline`: teacher -> scores -> flags -> student (+ references) on Ray."""

    ray: RayTrainConfig = Field(default_factory=RayTrainConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    flagging: FlaggingConfig = Field(default_factory=FlaggingConfig)
    student_loss: Literal["bce", "sigmoid_f1"] = "bce"
    references: bool = True  # also train the oracle and perfect-mask students when removed_labels exist

    @model_validator(mode="after")
    def _global_batch(self) -> Self:
        if self.train.batch_size % self.ray.num_workers:
            raise ValueError(
                f"train.batch_size ({self.train.batch_size}) is the global batch and must be a multiple of "
                f"ray.num_workers ({self.ray.num_workers})"
            )
        return self


class FloatRange(Strict):
    """One float dimension of a sweep: uniform, or log-uniform with `log: true`, in [low, high]."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-uniform range needs low > 0, got {self.low}")
        return self


def _in_bounds(name: str, value: FloatRange | float, low: float, high: float) -> None:
    lo, hi = (value.low, value.high) if isinstance(value, FloatRange) else (value, value)
    if lo < low or hi > high:
        raise ValueError(f"space.{name} must lie in [{low}, {high}], got {value}")


class SearchSpaceConfig(Strict):
    """What a sweep searches; a number instead of a range fixes that dimension (one loss choice fixes it)."""

    discard_percent: FloatRange | float = Field(default_factory=lambda: FloatRange(low=0.05, high=20.0, log=True))
    # p = 0 (no flags): "reference": the base config without a mask runs first, and the search samples p from
    # the range; "searched": p = 0 is also a choice of the search (half of the random start-up trials);
    # "never": no trial without a mask.
    no_mask: Literal["reference", "searched", "never"] = "reference"
    lam: FloatRange | float = Field(default_factory=lambda: FloatRange(low=0.0, high=1.0))
    margin: FloatRange | float = Field(default_factory=lambda: FloatRange(low=0.0, high=1.0))
    margin_weight: FloatRange | float = Field(default_factory=lambda: FloatRange(low=0.0, high=0.5))
    loss: list[Literal["bce", "sigmoid_f1"]] = Field(default_factory=lambda: ["bce", "sigmoid_f1"], min_length=1)
    lr: FloatRange | float = Field(default_factory=lambda: FloatRange(low=5e-4, high=5e-3, log=True))

    @model_validator(mode="after")
    def _ranges(self) -> Self:
        _in_bounds("discard_percent", self.discard_percent, 0.0, 100.0)
        _in_bounds("lam", self.lam, 0.0, 1.0)
        _in_bounds("margin", self.margin, 0.0, float("inf"))
        _in_bounds("margin_weight", self.margin_weight, 0.0, float("inf"))
        _in_bounds("lr", self.lr, 1e-12, float("inf"))
        return self


class AshaConfig(Strict):
    """ASHA early stopping on the per-epoch objective: every trial runs `grace_period` epochs, then only the
    top 1/`reduction_factor` at each rung (grace_period·factor^k epochs, below the last epoch) go on."""

    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)


class SweepConfig(Strict):
    """`raymlc sweep`: Ray Tune (Optuna TPE + ASHA) over the student's flags, loss, lr and thresholds."""

    base: PipelineConfig | str  # the pipeline config (inline, or a YAML path): data, model, teacher, Ray Train
    space: SearchSpaceConfig = Field(default_factory=SearchSpaceConfig)
    num_trials: int = Field(8, ge=1)
    seeds: int = Field(2, ge=1)  # per configuration: one Train worker per seed, the trial reports their mean
    objective: Literal["map", "lwlrap", "macro_f1"] = "map"  # on the validation split
    # Declare the val split completely labelled (like AudioSet's eval set); else the sweep warns.
    trusted_validation: bool = False
    epochs: int | None = Field(None, ge=1)  # student epochs per trial (default: base train.epochs)
    asha: AshaConfig = Field(default_factory=AshaConfig)
    search_seed: int = 0  # Optuna TPE sampler seed
    startup_trials: int = Field(4, ge=1)  # trials sampled at random before TPE models the results
    max_concurrent_trials: int = Field(2, ge=1)
    cpus_per_seed: float = Field(0.45, gt=0)  # CPUs of each trial's Train worker (one per seed)
    trial_cpus: float = Field(0.1, gt=0)  # CPUs of the trial driver (flags, thresholds; training is in workers)
    storage: str | None = None  # Tune storage (local path or s3://, gs:// URI); default: the sweep directory

    def pipeline(self) -> PipelineConfig:
        """The base pipeline config, read from its YAML file when `base` is a path."""
        return load_config(self.base) if isinstance(self.base, str) else self.base

    def student_epochs(self, base: PipelineConfig) -> int:
        """Epochs each trial trains (`epochs`, else the base config's); more than the ASHA grace period."""
        epochs = self.epochs or base.train.epochs
        if self.asha.grace_period >= epochs:
            raise ConfigError(
                f"asha.grace_period ({self.asha.grace_period}) must be below the trial epochs ({epochs}): "
                "ASHA stops trials only before their last epoch"
            )
        return epochs


class ServeConfig(Strict):
    """The tagger HTTP service (`raymlc serve`, serve/config.yaml): which bundle, request limits, batching.

    It is the Serve deployment's `user_config`: `serve deploy` with a changed value (a new `bundle_uri`)
    applies it to the running replicas in place (`reconfigure`), without dropping requests.
    """

    bundle_uri: str = Field(min_length=1)  # bundle directory: local path or s3://, gs://, file:// URI
    max_duration_s: float = Field(120.0, gt=0)  # longer clips answer 413
    max_body_mb: float = Field(32.0, gt=0)  # larger request bodies answer 413
    max_batch_size: int = Field(16, ge=1)  # clips per model call (`@serve.batch`); 1 disables batching
    batch_wait_timeout_s: float = Field(0.01, ge=0)  # how long a batch waits to fill
    torch_threads: int = Field(1, ge=1)  # intra-op threads per replica
    token_file: str | None = None  # bearer token required on /v1/* (else $RAYMLC_API_TOKEN; neither: open)


SchemaT = TypeVar("SchemaT", bound=BaseModel)


class ConfigError(ValueError):
    """A config file that is missing, not YAML, or does not match its schema."""


def load_config(path: str | Path, schema: type[SchemaT] = PipelineConfig) -> SchemaT:
    """Read a YAML file and validate it against `schema`; errors name the file and the field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    try:
        return schema.model_validate(raw or {})
    except ValidationError as error:
        raise ConfigError(f"{path}: invalid config:\n{error}") from None


def load_with_overrides(path: str | Path | None, schema: type[SchemaT], **overrides: object) -> SchemaT:
    """The config at `path` (the schema's defaults without one) with the command line's non-None `overrides`
    applied and validated again; errors name the file (or the schema) and the field."""
    config = load_config(path, schema) if path else schema()
    try:
        return schema.model_validate(config.model_dump() | {k: v for k, v in overrides.items() if v is not None})
    except ValidationError as error:
        raise ConfigError(f"{path or schema.__name__}: invalid override:\n{error}") from None
