"""The `wsml` command line. Heavy libraries are imported inside commands so `wsml --help` is instant."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from wsml_fast.core.errors import WsmlError, one_line
from wsml_fast.schemes import SCHEMES, SETTINGS, option_help, schemes_json
from wsml_fast.schemes.declaration import option_name

if TYPE_CHECKING:
    from wsml_fast.core.process import Process

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Weakly supervised multi-label image classification: train, evaluate and predict from partial labels.",
)


QUIETED_LIBRARIES = r"(torch|fastai|timm|albumentations)\."  # whose deprecation notices a command silences


def friendly(command):
    """Run a command with the libraries' deprecation notices silenced (they say nothing a user can act on; the
    filter is put back when the command ends), and turn a WsmlError into one line on stderr and exit code 2. Under
    torchrun every process meets the same error before training: process 0 alone says it, once."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings(
                    "ignore", category=FutureWarning, module=r"(torch|fastai|timm|albumentations)\."
                )
                return command(*args, **kwargs)
        except WsmlError as exc:
            if os.environ.get("RANK", "0") == "0":
                typer.echo(f"error: {one_line(exc)}", err=True)
            raise typer.Exit(2) from None

    return wrapper


@contextlib.contextmanager
def _this_process(autotune: bool = False) -> Iterator[Process]:
    """The command's one decision about this process (which of the job it is, whether it writes, its device and
    precision), under the command's process-wide switches (`process_switches`), put back when it ends."""
    from wsml_fast.core.process import launched, process_switches

    with process_switches(launched(), autotune) as process:
        yield process


def _absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else None


DatasetOpt = Annotated[
    str | None, typer.Option("--dataset", help="Prepared dataset under $WSML_HOME/data (default: the built-in demo).")
]
RecipeOpt = Annotated[
    str | None, typer.Option("--recipe", help="Recipe YAML (default: the recipe named like --dataset).")
]
DataOpt = Annotated[str | None, typer.Option("--data", help="Dataset folder: images/, observed.csv[, truth.csv].")]
CsvOpt = Annotated[str | None, typer.Option("--csv", help="A label CSV (with --images).")]
ImagesOpt = Annotated[str | None, typer.Option("--images", help="Folder the CSV's image paths are relative to.")]
ThresholdsOpt = Annotated[
    str | None,
    typer.Option(
        help="Per-class thresholds fitted on valid: f1 (each class's best F1), precision:P (the lowest reaching "
        "precision P) or fixed:T."
    ),
]

LogOpt = Annotated[
    list[str] | None,
    typer.Option(
        metavar="NAME",
        help="Also log to a tracker (repeatable): tensorboard (RUN_DIR/tensorboard) or mlflow (at "
        "MLFLOW_TRACKING_URI); the `track` extra installs them.",
    ),
]


def with_scheme_options(after: str) -> Callable[[Callable], Callable]:
    """Show typer, in the command's signature after the parameter `after`, an option for every declared scheme
    setting (its type, and its help from the declaration; default None: the scheme's default applies). Their
    values reach the command in its `**scheme_settings`."""

    def add_options(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        parameters = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        at = [p.name for p in parameters].index(after) + 1
        options = [
            inspect.Parameter(
                setting.name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=None,
                annotation=Annotated[setting.type | None, typer.Option(setting.option, help=option_help(setting))],
            )
            for setting in SETTINGS.values()
        ]
        command.__signature__ = signature.replace(parameters=[*parameters[:at], *options, *parameters[at:]])
        return command

    return add_options


@app.command()
@friendly
@with_scheme_options(after="boost_lu")
def train(
    dataset: DatasetOpt = None,
    data: DataOpt = None,
    csv: CsvOpt = None,
    images: ImagesOpt = None,
    recipe: RecipeOpt = None,
    scheme: Annotated[
        str | None, typer.Option(help=f"Loss scheme: {', '.join(SCHEMES)} (`wsml schemes`: what each does).")
    ] = None,
    backbone: Annotated[str | None, typer.Option(help="Any timm model name.")] = None,
    pretrained: Annotated[bool | None, typer.Option("--pretrained/--no-pretrained")] = None,
    weights: Annotated[str | None, typer.Option(help="Local backbone state dict (.pth or .safetensors).")] = None,
    epochs: Annotated[int | None, typer.Option()] = None,
    bs: Annotated[int | None, typer.Option(help="Batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (of the backbone).")] = None,
    opt: Annotated[str | None, typer.Option(help="adam (no weight decay) or sgd (momentum 0.9, wd 1e-3).")] = None,
    schedule: Annotated[str | None, typer.Option(help="one-cycle or constant.")] = None,
    head_lr_mult: Annotated[float | None, typer.Option(help="Head learning rate = lr x this.")] = None,
    mode: Annotated[str | None, typer.Option(help="end-to-end, linear (frozen backbone) or linear-init.")] = None,
    linear_epochs: Annotated[int | None, typer.Option(help="Linear epochs before end-to-end (linear-init).")] = None,
    early_stop: Annotated[
        bool | None, typer.Option("--early-stop/--no-early-stop", help="Stop when valid mAP falls 3 points below best.")
    ] = None,
    linear_lr: Annotated[float | None, typer.Option(help="linear-init: the linear phase's lr (default --lr).")] = None,
    linear_bs: Annotated[int | None, typer.Option(help="linear-init: the linear phase's batch size.")] = None,
    early_stop_drop: Annotated[
        float | None, typer.Option(help="--early-stop: the drop in valid mAP points that stops (default 3).")
    ] = None,
    ema: Annotated[
        float | None,
        typer.Option(
            metavar="DECAY",
            help="Average the weights (decay DECAY, with warm-up), validate the average every epoch (valid_map_ema) "
            "and keep whichever scores higher; 0: no average (the demo recipe averages at 0.999).",
        ),
    ] = None,
    accumulate: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="One optimizer step per N batches (effective batch bs x N); large-loss selection stays per batch.",
        ),
    ] = None,
    boost_lu: Annotated[
        float | None, typer.Option(help="BoostLU head: positive class activations x ALPHA (Kim et al. 2023: 5).")
    ] = None,
    track_memorization: Annotated[
        bool | None, typer.Option("--track-memorization", help="Record losses of sampled unobserved entries.")
    ] = None,
    img_size: Annotated[int | None, typer.Option(help="Square input size (default: the backbone's).")] = None,
    hflip: Annotated[bool | None, typer.Option("--hflip/--no-hflip", help="Random horizontal flips.")] = None,
    mix: Annotated[
        str | None, typer.Option(help="Mix training images: logicmix (unknown labels stay unknown; docs/mixing.md).")
    ] = None,
    mix_p: Annotated[float | None, typer.Option(help="--mix: the chance an image is mixed (default 0.5).")] = None,
    mix_n: Annotated[int | None, typer.Option(help="--mix: images in a mix, 2 or 3 (default 2).")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    workers: Annotated[int | None, typer.Option(help="DataLoader workers (default: from the CPU count).")] = None,
    precision: Annotated[str | None, typer.Option(help="auto, fp32, fp16 or bf16.")] = None,
    compile: Annotated[
        bool | None, typer.Option("--compile", help="torch.compile the model (falls back if it fails).")
    ] = None,
    sync_bn: Annotated[
        bool | None, typer.Option("--sync-bn/--no-sync-bn", help="torchrun: batch norm over the global batch.")
    ] = None,
    map_convention: Annotated[str | None, typer.Option(help="skip or paper (classes without positives).")] = None,
    thresholds: ThresholdsOpt = None,
    check_images: Annotated[
        bool | None,
        typer.Option(
            "--check-images/--no-check-images",
            help="Check every image (exists, readable header) before training (default). Without the check, a "
            "missing or unreadable image is found only when its batch loads: one error line stops the run; put the "
            "image right under the same name, then `wsml train --resume` continues from the last complete epoch.",
        ),
    ] = None,
    log: LogOpt = None,
    out: Annotated[str | None, typer.Option(help="Run folder (default runs/<dataset>-<scheme>-<time>).")] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue this run from its last complete epoch (only --epochs may be given).")
    ] = None,
    **scheme_settings: Any,  # an option for each scheme setting, added by `with_scheme_options`
) -> None:
    """Train a multi-label classifier from partial labels and write a run folder."""
    options = dict(locals())  # exactly the parameters above: the command-line layer of the config
    options.update(options.pop("scheme_settings"))
    options.pop("resume")
    if resume is not None:
        changed = [name for name, value in options.items() if value is not None and name != "epochs"]
        if changed:
            raise WsmlError(
                f"--resume continues {resume} with its saved settings; {option_name(changed[0])} cannot "
                "be changed (only a larger --epochs)"
            )
        with _this_process(autotune=True) as process:
            from wsml_fast.training.run import resume as resume_training

            _with_signals(process, lambda stop: resume_training(resume, epochs, stop, process))
        return
    with _this_process(autotune=True) as process:
        from wsml_fast.core.report import Reporter
        from wsml_fast.data.sources import resolve_source
        from wsml_fast.training.run import train as run_training

        config = _configure(options, options.pop("recipe"), scheme)
        source = resolve_source(config.dataset, config.data, config.csv, config.images, Reporter(speaks=process.writes))
        _with_signals(process, lambda stop: run_training(config, source, stop, process=process))


DATA_KEYS = ("dataset", "data", "csv")


def _configure(options: dict, recipe_file: str | None, scheme: str | None):
    """The command line's options over the recipe (`--recipe FILE`, else the one named like the dataset) over
    the defaults; the built-in demo when neither the options nor the recipe name any data."""
    from wsml_fast.training.config import resolve
    from wsml_fast.training.recipes import find_recipe

    options = {**options, **{k: _absolute(options.get(k)) for k in ("data", "csv", "images")}}
    named = any(options.get(k) for k in DATA_KEYS)
    values, recipe_name = find_recipe(recipe_file, options.get("dataset") or (None if named else "demo"), scheme)
    implied = {} if named or any((values or {}).get(k) for k in DATA_KEYS) else {"dataset": "demo"}
    return resolve(values, recipe_name, options, implied)


def _with_signals(process: Process, training) -> None:
    """Run `training(stop)` with Ctrl-C and SIGTERM asking for a clean stop; exit 130 / 143 after one."""
    from wsml_fast.core.report import Reporter
    from wsml_fast.training.stopping import RunInterrupted, StopRequest

    try:
        with StopRequest(Reporter(speaks=process.writes)).installed() as stop:
            training(stop)
    except RunInterrupted as exc:
        raise typer.Exit(exc.exit_code) from None


ModelArg = Annotated[Path, typer.Argument(help="A run folder written by `wsml train`, or its model.pth.")]


def _open_model(path: Path, quiet: bool = False):
    """The trained model at `path`, saying first (on stderr when `quiet`) when its run did not finish."""
    from wsml_fast.inference.trained import load_model

    model = load_model(path)
    note = model.note()
    if note:
        typer.echo(note, err=quiet)
    return model


def _model_source(model, data: str | None, csv: str | None, images: str | None):
    """The data named by the options, else the data the model was trained on."""
    from wsml_fast.data.sources import resolve_source

    if data or csv:
        return resolve_source(None, data, csv, images)
    config = model.config()
    return resolve_source(config.dataset, config.data, config.csv, config.images)


@app.command("eval")
@friendly
def evaluate(
    model_path: ModelArg,
    data: DataOpt = None,
    csv: CsvOpt = None,
    images: ImagesOpt = None,
    split: Annotated[str, typer.Option(help="train, valid or test.")] = "test",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON: mAP, the F1 family, per-class figures.")] = False,
    map_convention: Annotated[
        str | None, typer.Option(help="skip (default) or paper: classes without positives count as AP 0.")
    ] = None,
) -> None:
    """mAP, the F1 family (at the model's thresholds, at 0.5, top-3) and per-class figures of a trained model
    (on its own data unless told otherwise)."""
    from wsml_fast.model.metrics import CONVENTIONS

    model = _open_model(model_path, quiet=as_json)
    convention = map_convention or model.config().map_convention
    if convention not in CONVENTIONS:
        raise WsmlError(f"--map-convention {convention!r} is not one of: {', '.join(CONVENTIONS)}")
    with _this_process() as process:
        from wsml_fast.inference.evaluate import evaluate as run_eval

        result = run_eval(model, _model_source(model, data, csv, images), split, convention, process)
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
        return
    width = max(len(c) for c in [*result.per_class, "class"])
    typer.echo(f"{'class':<{width}}  {'AP':>6}  {'thresh':>6}  {'P':>6}  {'R':>6}  {'F1':>6}  positives")
    for name, row in result.per_class.items():
        ap = f"{row['ap']:6.2f}" if row["ap"] is not None else f"{'-':>6}"
        figures = "  ".join(f"{row[k]:6.2f}" for k in ("precision", "recall", "f1"))
        typer.echo(f"{name:<{width}}  {ap}  {row['threshold']:6.3f}  {figures}  {row['positives']}")
    if result.map.skipped:
        typer.echo(f"AP skipped (no positive or no negative labelled): {', '.join(result.map.skipped)}")
    typer.echo(f"{split} mAP {result.map.map:.2f} over {len(result.map.per_class)} classes ({convention} convention)")
    for line in result.summary():
        typer.echo(f"{split} {line}")


@app.command()
@friendly
def calibrate(
    model_path: ModelArg,
    thresholds: ThresholdsOpt = None,
    data: DataOpt = None,
    csv: CsvOpt = None,
    images: ImagesOpt = None,
) -> None:
    """Fit a trained model's per-class thresholds again on a valid split, without training: model.pth and
    thresholds.csv are rewritten."""
    from wsml_fast.model.decisions import ThresholdRule
    from wsml_fast.training.runfolder import THRESHOLDS

    model = _open_model(model_path)
    rule = ThresholdRule.parse(thresholds or model.config().thresholds)
    with _this_process() as process:
        from wsml_fast.inference.calibrate import calibrate as run_calibrate

        fitted = run_calibrate(model, _model_source(model, data, csv, images), rule, process)
    for note in fitted.notes(model.classes):
        typer.echo(note)
    beside = f" and {model.run.file(THRESHOLDS)}" if model.run is not None else ""
    typer.echo(f"thresholds ({rule}) written to {model.path}{beside}")


@app.command()
@friendly
def complete(
    model_path: ModelArg,
    target_precision: Annotated[
        float, typer.Option(help="Add an unobserved entry as positive from the threshold of this valid precision.")
    ],
    out: Annotated[
        Path, typer.Option(help="Dataset folder to write (new or empty); `wsml train --data OUT` takes it.")
    ],
    negatives: Annotated[
        float | None,
        typer.Option(
            help="Also add as negative the entries below the threshold of this valid negative predictive value."
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="The split to complete: train, valid or test.")] = "train",
    data: DataOpt = None,
    csv: CsvOpt = None,
    images: ImagesOpt = None,
) -> None:
    """Complete a split's labels with a trained model: per class, the unobserved entries above the threshold of the
    target precision on valid become positives; writes a dataset folder (observed.csv, added.csv, images linked)."""
    from wsml_fast.inference.complete import Targets, check_out
    from wsml_fast.inference.complete import complete as run_complete

    targets = Targets(target_precision, negatives)
    check_out(out)
    model = _open_model(model_path)
    with _this_process() as process:
        completion = run_complete(model, _model_source(model, data, csv, images), split, targets, out, process)
    for line in [*completion.notes(), completion.summary()]:
        typer.echo(line)


@app.command()
@friendly
def predict(
    model_path: ModelArg,
    paths: Annotated[list[Path], typer.Argument(help="Images, or folders of images.")],
    out: Annotated[
        Path, typer.Option(help="CSV: image + one probability column per class (with --top-k: labels, scores).")
    ] = Path("preds.csv"),
    threshold: Annotated[
        float | None, typer.Option(help="One probability for every class (default: the model's per-class thresholds).")
    ] = None,
    top_k: Annotated[
        int | None,
        typer.Option(help="Write and print the K most probable classes of each image (|-separated), not all."),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace --out even when it is not an earlier predictions CSV (never the model, an image being "
            "scored, a run's or a dataset's label files).",
        ),
    ] = False,
) -> None:
    """Class probabilities for new images, written a batch at a time; prints the labels decided at the model's
    per-class thresholds (with --threshold: at that one value; with --top-k: the K most probable)."""
    if threshold is not None and not 0 <= threshold <= 1:
        raise WsmlError(f"--threshold must be between 0 and 1 (got {threshold})")
    from wsml_fast.inference.outputs import check_output_file
    from wsml_fast.inference.predict import PredictionRows, check_replacing, collect_images, write_predictions

    check_output_file(out, "predictions", "preds.csv")
    images = collect_images(paths)
    model = _open_model(model_path)
    check_replacing(out, model.classes, model.path, images, overwrite)
    rows = PredictionRows(model.classes, model.thresholds if threshold is None else threshold, top_k)
    with _this_process() as process:
        batches = model.batches(images, process=process)
        written = write_predictions(out, batches, rows, typer.echo)
    typer.echo(f"wrote {written} rows to {out}")


@app.command()
@friendly
def export(
    model: ModelArg,
    out: Annotated[Path, typer.Option(help="The file to write (model.onnx, model.pt).")],
    fmt: Annotated[str, typer.Option("--format", help="onnx or torchscript.")] = "onnx",
) -> None:
    """Write the model as one ONNX or TorchScript file: uint8 RGB images in, probabilities out, with the classes,
    thresholds and input size inside; checked against PyTorch before it is put in place."""
    from wsml_fast.inference.export import check_format, check_target, export_model

    check_format(fmt)
    check_target(out, model)
    export_model(_open_model(model).file, fmt, out, typer.echo)


@app.command()
@friendly
def suggest(
    model_path: ModelArg,
    budget: Annotated[int, typer.Option(help="How many unobserved (image, class) entries to ask about.")],
    out: Annotated[Path, typer.Option(help="The CSV; with --format label-studio the tasks JSON (config: .xml).")],
    strategy: Annotated[str, typer.Option(help="likely-positive, uncertain or random.")] = "likely-positive",
    per_class_cap: Annotated[
        int | None, typer.Option(help="At most K a class (default: an equal share, unused shares passed on).")
    ] = None,
    split: Annotated[str, typer.Option(help="train, valid or test.")] = "train",
    seed: Annotated[int, typer.Option(help="Seed of --strategy random.")] = 0,
    fmt: Annotated[str, typer.Option("--format", help="csv or label-studio (task import JSON).")] = "csv",
    image_url: Annotated[
        str | None, typer.Option(help="label-studio: URL prefix of the images (default /data/local-files/?d=).")
    ] = None,
    data: DataOpt = None,
    csv: CsvOpt = None,
    images: ImagesOpt = None,
) -> None:
    """The unobserved entries whose answers are worth most (the likeliest positives by default), as a CSV
    or as Label Studio tasks; answer them, then `wsml merge` the answers into the labels."""
    from wsml_fast.inference.outputs import check_output_file
    from wsml_fast.inference.suggest import check_options, summary, write_suggestions
    from wsml_fast.inference.suggest import suggest as run_suggest

    check_options(strategy, budget, per_class_cap, fmt, out)
    check_output_file(out, "the suggestions", "queue.csv")
    model = _open_model(model_path)
    with _this_process() as process:
        source = _model_source(model, data, csv, images)
        found = run_suggest(model, source, split, strategy, budget, per_class_cap, seed, process)
    version = f"wsml {model.path.parent.name}/{model.path.name}"
    written = write_suggestions(found, out, fmt, version, image_url)
    typer.echo(summary(found, split, strategy, written))


@app.command()
@friendly
def merge(
    observed_csv: Annotated[Path, typer.Argument(help="The label CSV to add the answers to (observed.csv).")],
    answers: Annotated[Path, typer.Argument(help="A CSV image,class,answer (1 or 0), or Label Studio's JSON export.")],
    out: Annotated[Path, typer.Option(help="The merged CSV, in the same form (compact: classes.txt beside it).")],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace --out if it exists (even OBSERVED_CSV).")
    ] = False,
) -> None:
    """Answers become observed entries: every answer is checked first, and a problem names its row and writes
    nothing."""
    from wsml_fast.data.merge import merge_answers

    typer.echo(merge_answers(observed_csv, answers, out, overwrite).line(out))


@app.command()
@friendly
def report(run_dir: Annotated[Path, typer.Argument(help="A run folder written by `wsml train`.")]) -> None:
    """Write RUN_DIR/report.html: the run on one self-contained page (settings, curves, classes, added labels)."""
    from wsml_fast.training.report import write_report

    path = write_report(run_dir)
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


@app.command()
@friendly
def prepare(
    name: Annotated[str, typer.Argument(help="Format: voc, coco, nuswide, cub, openimages, npy or csv.")],
    root: Annotated[Path, typer.Option(help="The raw download (or the folder/file of the npy/csv formats).")],
    out: Annotated[Path | None, typer.Option(help="Dataset folder to write (default $WSML_HOME/data/NAME).")] = None,
    observed: Annotated[
        str,
        typer.Option(
            help="single-positive, single-positive:size or :location (drawn from object boxes: coco, voc), "
            "pos:K,neg:M or fraction:P (labels kept per train image)."
        ),
    ] = "single-positive",
    seed: Annotated[int, typer.Option(help="Seed of the 80/20 split and of the observed labels.")] = 1200,
    protocol: Annotated[str, typer.Option(help="wsml, or reference: the reference code's exact draws.")] = "wsml",
    image_root: Annotated[Path | None, typer.Option(help="Image folder, where it is not the standard one.")] = None,
    allow_missing: Annotated[
        bool, typer.Option(help="Drop listed images that are missing instead of failing.")
    ] = False,
    copy_images: Annotated[bool, typer.Option(help="Copy images instead of linking to them.")] = False,
) -> None:
    """Turn a benchmark download or a fully labelled CSV into a partial-label dataset folder."""
    from wsml_fast.data.sources import data_home
    from wsml_fast.prepare import prepare_dataset

    target = out or data_home() / name
    prepare_dataset(
        name,
        root,
        target,
        observed=observed,
        seed=seed,
        protocol=protocol,
        allow_missing=allow_missing,
        copy_images=copy_images,
        image_root=image_root,
        log=typer.echo,
    )
    typer.echo(
        f"train on it with: wsml train --data {target}" if out else f"train on it with: wsml train --dataset {name}"
    )


@app.command()
@friendly
def tune(
    dataset: DatasetOpt = None,
    data: DataOpt = None,
    csv: CsvOpt = None,
    images: ImagesOpt = None,
    recipe: RecipeOpt = None,
    schemes: Annotated[
        str, typer.Option(help="Schemes to search, comma-separated (`wsml schemes` lists them).")
    ] = "an,llr,llct,llcp,em,em-apl,gr",
    trials: Annotated[int, typer.Option(help="The study's total number of trials (over every process).")] = 30,
    epochs: Annotated[int | None, typer.Option(help="Epochs of each trial (default: the recipe's).")] = None,
    timeout: Annotated[str | None, typer.Option(help="Stop starting trials after this long: 2h, 30m, 90s.")] = None,
    study: Annotated[str, typer.Option(help="Study name (processes sharing a study and storage cooperate).")] = "wsml",
    storage: Annotated[
        str | None, typer.Option(help="Journal file or database URL (default: OUT/study.journal).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Tune folder (default tunes/<dataset>); rerun to continue.")] = None,
    search: Annotated[Path | None, typer.Option(help="YAML of search ranges that replace the defaults.")] = None,
    pruner: Annotated[str, typer.Option(help="median or halving (on each epoch's valid mAP).")] = "median",
    backbone: Annotated[str | None, typer.Option(help="Any timm model name.")] = None,
    pretrained: Annotated[bool | None, typer.Option("--pretrained/--no-pretrained")] = None,
    img_size: Annotated[int | None, typer.Option(help="Square input size.")] = None,
    mode: Annotated[str | None, typer.Option(help="end-to-end, linear or linear-init.")] = None,
    workers: Annotated[int | None, typer.Option(help="DataLoader workers.")] = None,
    precision: Annotated[str | None, typer.Option(help="auto, fp32, fp16 or bf16.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of every trial's run and of the sampler.")] = None,
    log: LogOpt = None,
) -> None:
    """Search scheme, learning rate, batch size and the schemes' own settings by valid mAP (Optuna); every trial
    is a run folder in OUT, and the best becomes OUT/best.yaml, scored once on the test split."""
    with _this_process(autotune=True) as process:
        import optuna

        from wsml_fast.core.report import Reporter
        from wsml_fast.data.sources import resolve_source
        from wsml_fast.schemes import get_scheme
        from wsml_fast.tuning import study as studies

        names = [name.strip() for name in schemes.split(",") if name.strip()]
        if not names:
            raise WsmlError("--schemes: name at least one scheme (`wsml schemes` lists them)")
        for name in names:
            get_scheme(name)
        if trials < 1:
            raise WsmlError(f"--trials must be at least 1 (got {trials})")
        seconds = studies.parse_duration(timeout) if timeout else None  # options checked before anything is made
        space = studies.read_space(search) if search else {}
        if pruner not in ("median", "halving"):
            raise WsmlError(f"--pruner {pruner!r} is not one of: median, halving")
        studies.check_storage(storage)
        fixed = {"dataset": dataset, "data": data, "csv": csv, "images": images, "epochs": epochs, "backbone": backbone}
        fixed |= {"img_size": img_size, "mode": mode, "workers": workers, "precision": precision, "seed": seed}
        fixed |= {"pretrained": pretrained, "log": log}
        configs = {name: _configure({**fixed, "scheme": name}, recipe, name) for name in names}
        if search:
            studies.check_search(search, space, configs)
        first = configs[names[0]]
        source = resolve_source(first.dataset, first.data, first.csv, first.images, Reporter(speaks=process.writes))
        folder = out or Path("tunes") / source.name
        if folder.exists() and not folder.is_dir():
            raise WsmlError(f"--out {folder}: is a file, not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # wsml prints a line per trial itself
        try:
            searched = studies.space_record(configs, space)
            opened = studies.open_study(folder, study, storage, first.seed, pruner, first.epochs, searched)
            tuner = studies.Tuner(configs.__getitem__, source, names, space, folder, opened, process=process)
            _with_signals(process, lambda stop: studies.run_study(tuner, trials, seconds, stop))
        finally:
            optuna.logging.set_verbosity(verbosity)


@app.command()
def schemes(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON list: each scheme with its settings' declarations.")
    ] = False,
) -> None:
    """List the training schemes: what each does, whose method it is, and its own settings."""
    from wsml_fast.schemes import FAMILIES

    if as_json:
        typer.echo(json.dumps(schemes_json(), indent=2))
        return
    for scheme in SCHEMES.values():
        settings = ", ".join(f"{s.name}={s.config_default}" for s in scheme.settings)
        typer.echo(
            f"{scheme.name}: {scheme.description}\n    {FAMILIES[scheme.family].paper}"
            + (f"; settings: {settings}" if settings else "")
        )


@app.command()
def recipes() -> None:
    """List the recipes that ship with wsml."""
    from wsml_fast.training.recipes import load_recipe, shipped_recipes

    def listed(settings: dict) -> str:
        return ", ".join(f"{k}={v}" for k, v in settings.items())

    for name, path in sorted(shipped_recipes().items()):
        settings = load_recipe(path)
        description = settings.pop("description", "")
        sections = {
            label: settings.pop(key, None) or {} for key, label in (("families", "family"), ("schemes", "scheme"))
        }
        typer.echo(f"{name}: {description}\n    {listed(settings)}")
        for label, section in sections.items():
            for part, values in section.items():
                typer.echo(f"    {label} {part}: {listed(values)}")


def main(argv: list[str] | None = None) -> None:
    """The `wsml` console script: click's own usage errors (a missing or malformed option value) become one
    `error:` line with exit code 2, like every other bad input."""
    from typer.exceptions import TyperException  # the base of click's usage errors (typer carries its own click)

    try:
        code = app(sys.argv[1:] if argv is None else argv, standalone_mode=False)
    except TyperException as exc:
        context = getattr(exc, "ctx", None)
        where = f"; see `{context.command_path} --help`" if context else ""
        typer.echo(f"error: {exc.format_message().rstrip('.')}{where}", err=True)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
