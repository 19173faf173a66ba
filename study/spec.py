"""The study's command line, parsed into a frozen, validated :class:`StudySpec` before Ray starts.

Every check here is cheap and local: preset names, data specs and roots, folds, counts, files. A bad
value exits with one line that names it and the fix (``StudyError``), and nothing is written.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

from search_spaces import DEFAULT_PRESET, PRESETS, Preset, get_preset, validate_search
from trainables.config import parse_data

SAMPLERS = ("tpe", "qmc", "random")
PROGRESS_MODES = ("compact", "ray", "off")  # see study/progress.py
# Ray Jobs sets this in the environment of a job's driver (ray._private.runtime_env.constants).
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
OUTPUT_HOME_ENV = "NOISY_TRANSFER_HOME"  # where a Ray job's relative --output resolves (default: ~)
# Retries of a crashed trial (killed worker, lost node, out of memory) from its last checkpoint. Sized for
# spot GPU workers: a days-long trial may see several reclaims; a diverged trial is never retried.
DEFAULT_MAX_FAILURES = 10


class StudyError(ValueError):
    """A problem with what the user asked for; printed as one line, exit code 2."""


@dataclass(frozen=True)
class StudySpec:
    """Everything one invocation of ``study/run.py`` asked for, validated."""

    preset: str
    data: str
    output: Path
    name: str
    tracking_uri: str
    storage: str
    num_samples: int | None
    seeds: int | None
    folds: tuple[int, ...] | None
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int
    sampler: str
    imagenet_weights: str
    smoke: bool
    resume: bool
    print_configs: bool = False  # print the resolved trial configs and exit, without Ray
    progress: str = "compact"  # the console: compact | ray | off (study/progress.py)
    max_failures: int = DEFAULT_MAX_FAILURES  # Ray's FailureConfig.max_failures: retries of a crashed trial

    @property
    def study_dir(self) -> Path:
        return self.output / self.name

    @property
    def storage_is_remote(self) -> bool:
        return "://" in self.storage and not self.storage.startswith("file://")

    @property
    def experiment_path(self) -> str:
        """Ray Tune's experiment folder (or URI) of this study: ``STORAGE/NAME``."""
        return experiment_uri(self.storage, self.name)

    @property
    def preset_obj(self) -> Preset:
        return get_preset(self.preset)

    @property
    def search_samples(self) -> int:
        """Trials the searcher draws for a search preset (``--num-samples``, else the preset's count)."""
        return self.preset_obj.search_samples(self.smoke, self.num_samples)

    def trial_configs(self) -> list[dict[str, Any]]:
        """The resolved configs of a grid preset's trials (every field concrete, as each trial receives
        it), or the constant config(s) of a search preset."""
        preset = self.preset_obj
        overrides = {"data_cache": str(self.output / ".cache" / "data")}
        if preset.trainable == "pretrain_finetune":
            overrides["pretrain_cache"] = pretrain_cache_location(self.storage, self.name, self.output)
        try:
            configs = preset.trial_configs(self.data, folds=self.folds, seeds=self.seeds, smoke=self.smoke,
                                           imagenet_weights=self.imagenet_weights, overrides=overrides)
            if preset.is_search:
                validate_search(preset, configs[0])
        except ValueError as error:
            raise StudyError(str(error)) from None
        return configs


def pretrain_cache_location(storage: str, name: str, output: Path) -> str:
    """The pre-training cache folder: under the study's storage, so every node of a cluster on a shared
    filesystem shares it. Object storage (``s3://``...) is no folder ``torch.save`` and the cache's
    exclusive claim files can use, so there each node keeps its own cache under ``OUTPUT/.cache``."""
    if "://" in storage and not storage.startswith("file://"):
        return str(output / ".cache" / "pretrain" / name)
    return f"{storage.removeprefix('file://').rstrip('/')}/{name}/pretrain_cache"


def experiment_uri(storage: str, name: str) -> str:
    """``storage`` with ``name`` appended to its path, keeping a URI's query where pyarrow reads it
    (``s3://b/p?endpoint_override=h:9000&scheme=http`` -> ``s3://b/p/NAME?endpoint_override=...``)."""
    parts = urlsplit(storage)
    if "://" not in storage or not parts.query:
        return f"{storage.rstrip('/')}/{name}"
    return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{name}"))


def check_storage(storage: str) -> str:
    """``storage`` if it carries no credentials. Ray Tune writes the storage URI into its experiment
    state (``tuner.pkl``, in the storage itself), so ``s3://KEY:SECRET@bucket`` would leave the secret
    in the bucket: keys come from the environment (README, "S3 and S3-compatible storage")."""
    if "://" in storage and "@" in urlsplit(storage).netloc:
        raise StudyError(f"--storage {_URL_USERINFO.sub('', storage)}: remove the KEY:SECRET@ part, Ray Tune "
                         "would store it in its experiment state; set AWS_ACCESS_KEY_ID and "
                         "AWS_SECRET_ACCESS_KEY (or an AWS profile) instead")
    return storage


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python study/run.py",
        description="Run a noisy-transfer study: Ray Tune trials of pretrain-then-finetune (or PU "
        "classification), searched by Optuna, logged to MLflow, exported to parquet.",
    )
    parser.add_argument("--preset", default=DEFAULT_PRESET, help=f"study preset (default {DEFAULT_PRESET}); "
                        "see --list-presets")
    parser.add_argument("--data", default=None, help="synthetic | voc:PATH | cifar:PATH | moons "
                        "(default: synthetic, or moons for fig4)")
    parser.add_argument("--output", default="results", help="folder of study folders (default: results)")
    parser.add_argument("--name", default=None, help="study name (default: the preset name, +'-smoke')")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: sqlite:///OUTPUT/NAME/mlflow.db)")
    parser.add_argument("--storage", default=None, help="Ray Tune storage: a shared path or s3:// URI "
                        "(default: OUTPUT/ray; must be shared storage on a multi-node cluster)")
    parser.add_argument("--num-samples", type=int, default=None, help="trials the searcher draws (search presets)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per condition and fold")
    parser.add_argument("--folds", default=None, help="comma-separated folds from 1..4, e.g. 1,3")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0)
    parser.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractions share a GPU, e.g. 0.25")
    parser.add_argument("--max-concurrent", type=int, default=0,
                        help="at most N trials at once (default 0: as many as the cluster can place, "
                        "floor(CPUs / --cpus-per-trial) and floor(GPUs / --gpus-per-trial), counting an "
                        "autoscaling cluster at its published maximum; the study prints the count and why)")
    parser.add_argument("--max-failures", type=int, default=DEFAULT_MAX_FAILURES, metavar="N",
                        help="retry a crashed trial (a killed worker, a lost or preempted node, out of memory) "
                        f"up to N times from its last checkpoint (default {DEFAULT_MAX_FAILURES}, sized for spot "
                        "instances; 0: never). A diverged trial (NaN loss) or a trial config the trainable refuses "
                        "is a result, never retried. --resume keeps the value the study started with")
    parser.add_argument("--sampler", default="tpe", help="Optuna sampler: tpe | qmc | random")
    parser.add_argument("--imagenet-weights", default="", help="local torchvision AlexNet state dict "
                        "(adds the ImageNetModel baseline)")
    parser.add_argument("--smoke", action="store_true", help="tiny data, 1 epoch per phase, minimal grid")
    parser.add_argument("--resume", action="store_true", help="continue the study in its folder")
    parser.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    parser.add_argument("--print-configs", action="store_true",
                        help="print every trial's resolved config and exit (starts no Ray, writes nothing)")
    parser.add_argument("--progress", default="compact", help="console: compact (one line per trial start "
                        "and end, a status line every 30 s) | ray (Ray's tables and worker logs) | off")
    parser.add_argument("--version", action="version", version=f"noisy-transfer {_version()}")
    return parser


def parse_spec(argv: Sequence[str] | None = None) -> StudySpec | None:
    """Parse and validate the command line; None when it asked only for --list-presets."""
    args = build_parser().parse_args(argv)
    if args.list_presets:
        return None
    if args.preset not in PRESETS:
        raise StudyError(f"unknown preset {args.preset!r}; choose one of: {', '.join(PRESETS)}")
    preset = PRESETS[args.preset]
    data = _resolve_data(args.data, preset)
    folds = _parse_folds(args.folds)
    _check_counts(args)
    if args.imagenet_weights and not Path(args.imagenet_weights).is_file():
        raise StudyError(f"--imagenet-weights: file {args.imagenet_weights} does not exist")
    if args.num_samples is not None and not preset.is_search:
        raise StudyError(f"--num-samples: preset {preset.name} is a grid; repeat it with --seeds instead")
    if folds and not preset.uses_folds:
        raise StudyError(f"--folds: preset {preset.name} has no folds (it is a classification study)")
    output = resolve_output(args.output)
    name = args.name or (f"{preset.name}-smoke" if args.smoke else preset.name)
    if not name or "/" in name or name.startswith("."):
        raise StudyError(f"--name must be a plain folder name, got {name!r}")
    storage = check_storage(args.storage or str(output / "ray"))
    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    spec = StudySpec(
        preset=preset.name,
        data=data,
        output=output,
        name=name,
        tracking_uri=(args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                      or f"sqlite:///{output / name / 'mlflow.db'}"),
        storage=storage,
        num_samples=args.num_samples,
        seeds=args.seeds,
        folds=folds,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        max_concurrent=args.max_concurrent,
        sampler=args.sampler,
        imagenet_weights=str(Path(args.imagenet_weights).resolve()) if args.imagenet_weights else "",
        smoke=args.smoke,
        resume=args.resume,
        print_configs=args.print_configs,
        progress=args.progress,
        max_failures=args.max_failures,
    )
    spec.trial_configs()  # validate every trial now
    return spec


def _resolve_data(data: str | None, preset: Preset) -> str:
    """``--data`` checked against the preset, a local root made absolute (default: the preset's kind)."""
    data = data or ("moons" if preset.data_kinds == ("moons",) else "synthetic")
    try:
        kind, root = parse_data(data)
    except ValueError as error:
        raise StudyError(f"--data: {error}") from None
    if kind not in preset.data_kinds:
        raise StudyError(f"--data {data!r}: preset {preset.name} runs on {' or '.join(preset.data_kinds)} data")
    if root and not Path(root).expanduser().is_dir():
        raise StudyError(f"--data {data!r}: data root {root} does not exist (nothing is downloaded; "
                         f"point it at a local copy of the {kind.upper()} data)")
    if root:
        data = f"{kind}:{Path(root).expanduser().resolve()}"
    return data


def _check_counts(args: argparse.Namespace) -> None:
    """Refuse counts and resources no study can run with, and an unknown sampler."""
    for flag, value in (("--num-samples", args.num_samples), ("--seeds", args.seeds)):
        if value is not None and value < 1:
            raise StudyError(f"{flag} must be a positive integer, got {value}")
    if args.max_concurrent < 0:
        raise StudyError(f"--max-concurrent must be >= 0 (0 = as resources allow), got {args.max_concurrent}")
    if args.max_failures < 0:
        # Ray's -1 (retry forever) would loop forever on a trial that crashes deterministically
        raise StudyError(f"--max-failures must be an integer >= 0 (retries of a crashed trial; 0: none), "
                         f"got {args.max_failures}")
    if args.cpus_per_trial <= 0:
        raise StudyError(f"--cpus-per-trial must be > 0, got {args.cpus_per_trial}")
    if args.gpus_per_trial < 0:
        raise StudyError(f"--gpus-per-trial must be >= 0, got {args.gpus_per_trial}")
    if args.sampler not in SAMPLERS:
        raise StudyError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {args.sampler!r}")
    if args.progress not in PROGRESS_MODES:
        raise StudyError(f"--progress must be one of {', '.join(PROGRESS_MODES)}, got {args.progress!r}")


def resolve_output(output: str, environ: Mapping[str, str] | None = None) -> Path:
    """``--output`` as an absolute path. Relative paths resolve against the working directory, except
    under Ray Jobs, whose working directory is a per-job copy of ``--working-dir`` that Ray deletes:
    there they resolve against ``$NOISY_TRANSFER_HOME`` or the home folder, so results outlive the job
    and ``--resume`` after a code change finds them."""
    environ = os.environ if environ is None else environ
    path = Path(output).expanduser()
    if not path.is_absolute() and RAY_JOB_ENV in environ:
        path = Path(environ.get(OUTPUT_HOME_ENV) or Path.home()).expanduser() / path
    return path.resolve()


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("noisy-transfer")
    except metadata.PackageNotFoundError:
        return "unknown (not installed; pip install -e .)"


def _parse_folds(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        folds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise StudyError(f"--folds must be comma-separated integers from 1..4, got {text!r}") from None
    bad = [f for f in folds if not 1 <= f <= 4]
    if not folds or bad:
        raise StudyError(f"--folds must be comma-separated integers from 1..4, got {text!r}")
    if len(set(folds)) != len(folds):
        raise StudyError(f"--folds lists a fold twice: {text!r}")
    return folds


def list_presets() -> str:
    width = max(len(name) for name in PRESETS)
    return "\n".join(f"{name:<{width}}  {preset.description}" for name, preset in PRESETS.items())


SECRET_MARKERS = ("SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIAL", "ACCESS_KEY", "PRIVATE_KEY", "API_KEY")
# Shorter values ("1", "true") are flags, not credentials, and replacing them would garble every text.
MIN_SECRET_LENGTH = 8
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


@dataclass(frozen=True)
class Secrets:
    """What must never reach MLflow, parquet, study.json or the log: the names and values of environment
    variables whose names look like credentials (``AWS_SECRET_ACCESS_KEY``, ``MLFLOW_TRACKING_TOKEN``...),
    and the ``user:password@`` part of any URI."""

    names: frozenset[str] = frozenset()
    values: tuple[str, ...] = ()

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> "Secrets":
        environ = dict(os.environ if environ is None else environ)
        names = {name for name in environ if any(marker in name.upper() for marker in SECRET_MARKERS)}
        values = {environ[name] for name in names if len(environ[name]) >= MIN_SECRET_LENGTH}
        return cls(frozenset(names), tuple(sorted(values, key=len, reverse=True)))

    def __reduce__(self) -> tuple:
        # Pickled, a Secrets carries no value: Ray pickles RunConfig's callbacks (which hold one) into
        # tuner.pkl in the study's storage, an S3 bucket on a cluster. The process that unpickles it (a
        # resumed driver) reads the values from its own environment again.
        return (Secrets.from_environment, ())

    def redact(self, text: str) -> str:
        """``text`` with URI credentials removed (``http://u:p@host`` -> ``http://host``, which still works
        with MLflow's MLFLOW_TRACKING_USERNAME/PASSWORD) and every secret value replaced by ``***``."""
        text = _URL_USERINFO.sub("", text)
        for value in self.values:
            text = text.replace(value, "***")
        return text

    def public(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """``config`` without secret-named keys, string values redacted (for params, artifacts, parquet)."""
        return {key: self.redact(value) if isinstance(value, str) else value
                for key, value in config.items() if key not in self.names}

