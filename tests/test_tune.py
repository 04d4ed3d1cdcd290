"""`wsml tune`: a tiny study completes, prunes a clearly worse trial, records failures, writes a recipe that
`wsml train --recipe` reruns, continues after an interruption, and two processes share one study."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from helpers import HOOKED, StopAfter, hooked_env, invoke, write
from optuna.trial import TrialState

from wsml_fast.core.errors import WsmlError
from wsml_fast.data.sources import from_folder
from wsml_fast.schemes.declaration import Choice
from wsml_fast.training.config import TrainConfig, resolve
from wsml_fast.training.stopping import RunInterrupted
from wsml_fast.tuning.claims import HOLDER, SURPLUS, UNNAMED_SECONDS, abandoned, has_room, holding
from wsml_fast.tuning.study import (
    JOURNAL,
    Tuner,
    check_search,
    open_study,
    read_space,
    run_study,
    scheme_ranges,
    space_record,
    study_bar,
    trial_rows,
)

TINY = ["--backbone", "test_efficientnet", "--no-pretrained", "--img-size", "32", "--epochs", "2"]


def tune(demo_folder: Path, out: Path, *args: str):
    return invoke("tune", "--data", demo_folder, *TINY, "--schemes", "an,llct", "--out", out, *args)


def load(out: Path) -> optuna.Study:
    return open_study(out, "wsml", None, 0, "median", epochs=4)


def test_a_tiny_study_prunes_a_clearly_worse_trial_and_writes_a_recipe_that_reruns(
    demo_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "tune"
    first = tune(demo_folder, out, "--trials", "1", "--epochs", "4")
    assert first.exit_code == 0, first.output
    real = load(out).trials[0]
    study = load(out)
    for _ in range(5):  # five trials far better at every epoch: the next real one is clearly worse
        better = optuna.trial.create_trial(  # (a final value of 0: the pruner reads the epochs' values alone)
            params=real.params,
            distributions=real.distributions,
            value=0.0,
            intermediate_values=dict.fromkeys(range(1, 5), 99.0),
        )
        study.add_trial(better)
    result = tune(demo_folder, out, "--trials", "7", "--epochs", "4")
    assert result.exit_code == 0, result.output
    assert "6 of 7 trials done" in result.output and "pruned after epoch 2" in result.output
    trials = pd.read_csv(out / "trials.csv")
    assert trials["state"].tolist() == ["complete"] * 6 + ["pruned"]
    pruned = out / "trial-0006"
    assert "pruned after epoch 2" in json.loads((pruned / "results.json").read_text())["status"]
    # judged from half its epochs on: worse at epoch 1 already, it ran on to epoch 2 and stopped there
    assert len(pd.read_csv(pruned / "metrics.csv")) == 2
    assert json.loads((pruned / "results.json").read_text())["test_map"] is None  # trials never see the test split
    best = json.loads((out / "best.json").read_text())
    assert best["trial"] == 0 and best["test_map"] is not None and (out / "tune.png").stat().st_size > 1000
    recipe = yaml.safe_load((out / "best.yaml").read_text())
    assert recipe["scheme"] == real.params["scheme"] and recipe["lr"] == pytest.approx(real.params["lr"])
    rerun = invoke("train", "--recipe", out / "best.yaml", "--out", tmp_path / "rerun")
    assert rerun.exit_code == 0, rerun.output
    again = json.loads((tmp_path / "rerun" / "results.json").read_text())
    assert again["valid_map"] == pytest.approx(best["valid_map"])  # the best trial, rerun as is


def test_a_failing_trial_is_recorded_and_the_study_goes_on(demo_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "tune"
    out.mkdir()
    search = write(tmp_path / "search.yaml", "lr: [1.0e+20, 0.01]\nbs: [16]\n")
    study = load(out)
    study.enqueue_trial({"scheme": "an", "lr": 1e20, "bs": 16})  # diverges: a non-finite loss
    study.enqueue_trial({"scheme": "an", "lr": 0.01, "bs": 16})
    result = tune(demo_folder, out, "--trials", "2", "--search", search)
    assert result.exit_code == 0, result.output
    trials = pd.read_csv(out / "trials.csv")
    assert trials["state"].tolist()[0] == "fail" and trials["state"].tolist()[1] in ("complete", "pruned")
    assert trials["note"][0].startswith("the training loss became nan")


def test_an_error_every_trial_would_hit_ends_the_study_in_one_line(demo_folder: Path, tmp_path: Path) -> None:
    result = invoke("tune", "--data", demo_folder, "--backbone", "resnet5", "--trials", "3", "--out", tmp_path)
    assert result.exit_code == 2 and "not a timm model" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_interrupted_study_continues_without_redoing_finished_trials(demo_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "tune"
    out.mkdir()
    options = {"data": str(demo_folder), "backbone": "test_efficientnet", "pretrained": False, "img_size": 32}
    configs = {s: resolve(None, None, {**options, "epochs": 2, "scheme": s}) for s in ("an", "llct")}

    def tuner() -> Tuner:
        batches = {"bs": Choice((16,))}  # 2 epochs of 3 training and 1 validation batches: 8 boundaries a trial
        return Tuner(configs.__getitem__, from_folder(demo_folder), ["an", "llct"], batches, out, load(out), print)

    with pytest.raises(RunInterrupted):  # the 13th batch boundary is in trial 1
        run_study(tuner(), 3, None, StopAfter(12))
    first = (out / "trial-0000" / "metrics.csv").read_bytes()
    best = run_study(tuner(), 3, None)
    trials = load(out).trials
    assert [t.user_attrs.get("interrupted", False) for t in trials] == [False, True, False, False]
    assert trials[2].params == trials[1].params  # the interrupted trial runs again, as a new one
    assert (out / "trial-0000" / "metrics.csv").read_bytes() == first  # a finished trial is not redone
    assert best is not None and pd.read_csv(out / "trials.csv")["state"].tolist()[1] == "interrupted"


def test_two_processes_share_one_study_exactly_and_never_draw_the_same_settings(
    demo_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "tune"
    out.mkdir()
    command = [sys.executable, str(HOOKED), "tune", "--data", str(demo_folder), *TINY, "--schemes", "an,llct"]
    command += ["--trials", "4", "--out", str(out), "--storage", str(out / JOURNAL)]
    env = hooked_env(WSML_TUNE_MEET=f"{tmp_path / 'meet'},2")  # both run a trial at once, then race for the rest
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in "ab"
    ]
    outputs = [process.communicate(timeout=600) for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    done = [t for t in load(out).trials if t.state.is_finished() and not t.user_attrs.get(SURPLUS)]
    assert len(done) == 4 and len(pd.read_csv(out / "trials.csv")) == 4  # --trials holds, whoever came last
    assert len({tuple(sorted(t.params.items())) for t in done}) == 4
    runs = [t.user_attrs["run"] for t in done]
    assert len(set(runs)) == 4 and all((Path(run) / "results.json").is_file() for run in runs)
    assert {t.user_attrs["pid"] for t in done} == {p.pid for p in processes}  # both ran trials of the one study


def test_continued_and_shared_studies_draw_new_settings(tmp_path: Path) -> None:
    tuner = Tuner(lambda scheme: TrainConfig(scheme=scheme), None, ["an", "llct"], {}, tmp_path, load(tmp_path))

    def draw(study: optuna.Study) -> None:
        study.optimize(lambda trial: 0.0 if tuner.settings(trial) else 1.0, n_trials=1)

    for _ in range(3):
        draw(load(tmp_path))  # 3 trials, then a continuation: each process seeded by --seed alone
    draw(load(tmp_path))
    (tmp_path / "a").mkdir()
    first, second = load(tmp_path / "a"), load(tmp_path / "a")  # two processes on one study, taking turns
    for study in (first, second, first, second):
        draw(study)
    for folder in (tmp_path, tmp_path / "a"):
        assert len({tuple(sorted(t.params.items())) for t in load(folder).trials}) == 4


def test_a_trial_without_room_under_the_total_is_given_back(tmp_path: Path) -> None:
    study = load(tmp_path)
    for _ in range(3):
        study.enqueue_trial({"lr": 0.01})
    trials = [study.ask() for _ in range(4)]  # trial 3 (asked by another process) before trial 0 claims its place
    assert [has_room(study, t.number, 3) for t in trials] == [True, True, True, False]
    study.tell(trials[0], state=optuna.trial.TrialState.FAIL)
    assert has_room(study, trials[3].number, 3) is False  # a failed trial counts, a queued one is spoken for


def test_a_trial_is_abandoned_once_its_process_is_killed_and_not_before(demo_folder: Path, tmp_path: Path) -> None:
    """Real processes: a `wsml tune` paused in its first trial keeps that trial running for whoever opens the study;
    killed, the trial is failed and queued again by the next opening, at once."""
    out, go = tmp_path / "tune", tmp_path / "go"
    command = [sys.executable, str(HOOKED), "tune", "--data", str(demo_folder), *TINY, "--schemes", "an"]
    command += ["--trials", "1", "--out", str(out)]
    env = hooked_env(WSML_PAUSE_AT=f"1,0,{go}", WSML_KILL_AT="2,0")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 180
    while not Path(f"{go}.reached").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    assert [t.state for t in load(out).trials] == [TrialState.RUNNING]  # its process lives
    go.touch()
    process.communicate(timeout=180)
    assert process.returncode == -9
    left, again = load(out).trials
    assert (
        left.state == TrialState.FAIL and left.user_attrs["interrupted"] and not Path(left.user_attrs[HOLDER]).exists()
    )
    assert again.state == TrialState.WAITING and again.system_attrs["fixed_params"] == left.params


def test_a_trial_stays_running_while_its_process_holds_its_lock(tmp_path: Path) -> None:
    """Whatever happens to the trial's run folder (its lock is let go before Optuna records the trial's end)."""
    study = load(tmp_path)
    with holding(tmp_path) as holder:
        trial = study.ask()
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr(HOLDER, str(holder))
        assert [t.state for t in load(tmp_path).trials] == [TrialState.RUNNING]
    assert not holder.exists()  # (a lock file held by no one: removed)
    assert [t.state for t in load(tmp_path).trials] == [TrialState.FAIL, TrialState.WAITING]


def test_a_trial_that_names_no_holder_is_abandoned_only_when_it_started_long_ago(tmp_path: Path) -> None:
    study = load(tmp_path)
    study.ask()
    (trial,) = study.trials
    assert not abandoned(trial)  # a live process names its holder as the trial starts
    trial.datetime_start -= timedelta(seconds=UNNAMED_SECONDS + 1)
    assert abandoned(trial)


def test_the_study_bar_fills_with_the_finished_trials() -> None:
    assert study_bar(0, 30) == "[" + "-" * 24 + "] 0/30"
    assert study_bar(15, 30) == "[" + "#" * 12 + "-" * 12 + "] 15/30"
    assert study_bar(31, 30) == "[" + "#" * 24 + "] 31/30"  # other processes may finish past the total


def test_trials_show_the_settings_a_run_used_not_the_index_of_a_choice(tmp_path: Path) -> None:
    study = load(tmp_path)
    study.add_trial(  # GR's schedules are lists, which Optuna draws by index: the table shows the list
        optuna.trial.create_trial(
            params={"scheme": "gr", "gr_w": 1},
            distributions={
                "scheme": optuna.distributions.CategoricalDistribution(["gr"]),
                "gr_w": optuna.distributions.CategoricalDistribution([0, 1]),
            },
            value=50.0,
            user_attrs={"settings": {"scheme": "gr", "gr_w": [0.0, 10.0]}, "run": "trial-0000"},
        )
    )
    assert trial_rows(study)[0]["gr_w"] == [0.0, 10.0]


def test_the_average_of_the_weights_is_searched_only_when_the_search_file_asks(tmp_path: Path) -> None:
    base = resolve(None, None, {"scheme": "an"}, implied={"dataset": "demo"})
    assert "ema" not in scheme_ranges(base, {})
    path = write(tmp_path / "search.yaml", "ema: [null, 0.999]\n")
    space = read_space(path)
    check_search(path, space, {"an": base})
    assert scheme_ranges(base, space)["ema"] == Choice((None, 0.999))
    with pytest.raises(WsmlError, match="ema: 1.5 cannot be used"):
        check_search(path, {"ema": Choice((None, 1.5))}, {"an": base})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- lr\n", "give a mapping of setting names to ranges"),
        ("lr: {low: abc, high: 1}\n", "lr: low and high must be numbers"),
        ("lr: {low: 1, high: 0.1}\n", "lr: need low <= high"),
        ("lr: {low: 0, high: 0.1, log: true}\n", "low > 0 (log)"),
        (
            "lr: [0.01]\nfoo: [1]\n",
            "foo: not searched by --schemes an,llct (searchable: bs, delta_rel, ema, lr, mix, mix_n, mix_p)",
        ),
        ("bs: [16, 0]\n", "bs: 0 cannot be used (--bs must be"),
        ("delta_rel: {low: 0.1, high: 200}\n", "delta_rel: 200.0 cannot be used"),
    ],
)
def test_a_bad_search_file_is_one_line_before_anything_is_made(
    demo_folder: Path, tmp_path: Path, text: str, message: str
) -> None:
    search = write(tmp_path / "search.yaml", text)
    result = tune(demo_folder, tmp_path / "tune", "--search", search)
    assert result.exit_code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "tune").exists()


@pytest.mark.parametrize(
    ("option", "value"),
    [("--schemes", ","), ("--timeout", "abc"), ("--timeout", "-5"), ("--storage", "."), ("--storage", "no/s.log")],
)
def test_bad_tune_options_are_one_line_before_anything_is_made(
    demo_folder: Path, tmp_path: Path, option: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = tune(demo_folder, tmp_path / "tune", option, value)
    assert result.exit_code == 2 and option in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "tune").exists()


@pytest.mark.parametrize(
    ("args", "difference"),
    [
        (["--schemes", "an"], "searches --schemes an,llct, not an;"),
        (["--search", "bs: [16]\n"], "searches bs of an over [16, 32, 64], not [16] (--search or --recipe)"),
    ],
)
def test_a_study_continued_with_another_search_space_is_refused_before_a_trial_is_made(
    demo_folder: Path, tmp_path: Path, args: list[str], difference: str
) -> None:
    out = tmp_path / "tune"
    out.mkdir()
    options = {"data": str(demo_folder), "backbone": "test_efficientnet", "pretrained": False, "img_size": 32}
    bases = {s: resolve(None, None, {**options, "epochs": 2, "scheme": s}) for s in ("an", "llct")}
    open_study(out, "wsml", None, 0, "median", 2, space_record(bases, {}))
    if args[0] == "--search":
        args = ["--search", str(write(tmp_path / "search.yaml", args[1]))]
    result = invoke("tune", "--data", demo_folder, *TINY, "--out", out, *(["--schemes", "an,llct"] + args)[-4:])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert difference in result.stderr and "start a new study with --study NAME or another --out" in result.stderr
    assert load(out).trials == []
