"""Label Studio's formats, both ways: the tasks `wsml suggest --format label-studio` writes (Label Studio's JSON
task import with pre-annotations), the labeling config they expect, and the JSON export `wsml merge` reads back.

A task is one image; it asks about some classes (the suggested entries of that image):

    {"data": {"image": "/data/local-files/?d=003.png",   # what Label Studio shows (prefix + quoted image path)
              "wsml_image": "003.png",                   # the image as observed.csv names it
              "asked": ["3", "7"],                       # the classes asked about, best first
              "question": "Tick each class present: 3, 7"},
     "predictions": [{"model_version": "wsml <model>", "score": 0.42,
                      "result": [{"id": "wsml-1", "from_name": "label", "to_name": "image", "type": "choices",
                                  "value": {"choices": ["3"]}}]}]}

The pre-annotation ticks the asked classes the model decides present (probability at or above the class's
threshold); `score` is the model's confidence in the whole task, the product over the asked classes of p (ticked)
or 1 - p (not ticked): Label Studio's Data Manager can sort by it, least sure first. The labeling config
(`labeling_config`) shows the image, the question, and a multiple-choice `Choices` named `label` listing every
class asked about in the file.

Reading an export back (`read_export`): for each task, its last annotation that was not cancelled (skipped in the
labeling interface) gives the answers: every asked class ticked in the `label` choices is 1, every asked class
left unticked is 0, and a ticked class that was not asked is 1 too (the annotator said it is present). A task
without such an annotation gives no answer and is counted as skipped. `data.wsml_image` and `data.asked` name
the image and the asked classes, so the image URL is never parsed back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np

from wsml_fast.core.errors import WsmlError
from wsml_fast.data.answers import Answers

LOCAL_FILES = "/data/local-files/?d="  # Label Studio's URL of a file under LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT
CHOICES = "label"  # the Choices tag's name: `from_name` of results
IMAGE = "image"  # the Image tag's name and data key: `to_name` of results


def image_url(image: str, prefix: str = LOCAL_FILES) -> str:
    """The URL Label Studio loads: `prefix` followed by the image's path as observed.csv writes it, quoted."""
    return prefix + quote(image)


def suggestion_tasks(
    images: Sequence[str],
    classes: Sequence[str],
    probabilities: np.ndarray,
    decided: np.ndarray,
    model_version: str,
    prefix: str = LOCAL_FILES,
) -> list[dict]:
    """One task per image of the suggested entries (given best first: tasks follow their image's best entry)."""
    asked: dict[str, list[int]] = {}
    for at, image in enumerate(images):
        asked.setdefault(image, []).append(at)
    tasks = []
    for number, (image, entries) in enumerate(asked.items(), 1):
        names = [classes[i] for i in entries]
        ticked = [classes[i] for i in entries if decided[i]]
        sure = np.where(decided[entries], probabilities[entries], 1 - probabilities[entries]).astype(np.float64)
        result = {"id": f"wsml-{number}", "from_name": CHOICES, "to_name": IMAGE, "type": "choices"}
        result["value"] = {"choices": ticked}
        data = {IMAGE: image_url(image, prefix), "wsml_image": image, "asked": names}
        data["question"] = f"Tick each class present: {', '.join(names)}"
        prediction = {"model_version": model_version, "score": round(float(np.prod(sure)), 6)}
        tasks.append({"data": data, "predictions": [prediction | {"result": [result] if ticked else []}]})
    return tasks


def labeling_config(classes: Sequence[str]) -> str:
    """The labeling config of a Label Studio project for these tasks: every asked class as a choice."""
    choices = "".join(f"    <Choice value={quoteattr(name)}/>\n" for name in dict.fromkeys(classes))
    return (
        "<View>\n"
        f'  <Image name="{IMAGE}" value="${IMAGE}"/>\n'
        '  <Header value="$question"/>\n'
        f'  <Choices name="{CHOICES}" toName="{IMAGE}" choice="multiple" showInline="true">\n'
        f"{choices}"
        "  </Choices>\n"
        "</View>\n"
    )


def _annotation(task: dict) -> dict | None:
    """The task's last annotation that was not cancelled, or None."""
    kept = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    return kept[-1] if kept else None


def _ticked(annotation: dict, path: Path, where: str) -> list[str]:
    """The classes ticked in the `label` choices of an annotation, in their order; a result not shaped as Label
    Studio writes it is one line naming the task."""
    ticked: dict[str, None] = {}
    for result in annotation.get("result") or []:
        if not isinstance(result, dict) or result.get("from_name") != CHOICES or result.get("type") != "choices":
            continue
        choices = (result.get("value") or {}).get("choices") if isinstance(result.get("value"), dict) else None
        if not isinstance(choices, list):
            raise WsmlError(f"{path}: {where}: a `{CHOICES}` result whose value.choices is not a list of classes")
        ticked |= dict.fromkeys(str(c) for c in choices)
    return list(ticked)


def read_export(path: Path) -> Answers:
    """The answers of a Label Studio JSON export of tasks written by `wsml suggest` (see the module docstring)."""
    try:
        tasks = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WsmlError(f"{path}: not a JSON file ({exc}); export the project as Label Studio JSON") from None
    if not isinstance(tasks, list):
        raise WsmlError(f"{path}: not a Label Studio JSON export (a list of tasks); export the project as JSON")
    answers = Answers(path)
    for number, task in enumerate(tasks, 1):
        where = f"task {number} (id {task.get('id')})" if isinstance(task, dict) else f"task {number}"
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict) or "wsml_image" not in data or not isinstance(data.get("asked"), list):
            raise WsmlError(
                f"{path}: {where} has no data.wsml_image and data.asked; export (as JSON, not JSON-MIN) a "
                "project whose tasks `wsml suggest --format label-studio` wrote"
            )
        annotation = _annotation(task)
        if annotation is None:
            answers.skipped += 1
            continue
        ticked = _ticked(annotation, path, where)
        asked = [str(name) for name in data["asked"]]
        for name in dict.fromkeys(asked + ticked):
            answers.add(str(data["wsml_image"]), name, "1" if name in ticked else "0", where)
    return answers
