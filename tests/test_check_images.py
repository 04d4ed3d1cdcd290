"""The image check before training, by threads: the same errors in the same order as one image at a time."""

import io
import re
import sys
from pathlib import Path

import pytest
from PIL import Image

from wsml_fast.core.errors import WsmlError
from wsml_fast.data.table import CHECK_CHUNK, check_images


@pytest.fixture
def listed(tmp_path: Path) -> tuple[Path, list[str], list[str], list[str]]:
    """Over three chunks of links to one PNG, with missing and unreadable images scattered (in list order)."""
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "one.png")
    (tmp_path / "junk.png").write_text("not an image")
    names = [f"{i:05d}.png" for i in range(3 * CHECK_CHUNK + 10)]
    missing = [names[i] for i in (5, 300, 301, 700)]
    unreadable = [names[i] for i in (2, 290, 600, 770)]
    for name in names:
        if name not in missing:
            (root / name).symlink_to(tmp_path / ("junk.png" if name in unreadable else "one.png"))
    return root, names, missing, unreadable


def error_of(root: Path, names: list[str], threads: int) -> str:
    with pytest.raises(WsmlError) as caught:
        check_images(root, names, root.parent / "observed.csv", threads=threads)
    return str(caught.value)


@pytest.mark.parametrize("threads", [1, 2, 8])
def test_problems_are_counted_and_named_in_list_order(listed: tuple, threads: int) -> None:
    root, names, missing, unreadable = listed
    first = ", ".join(missing[:3])
    assert error_of(root, names, threads) == (
        f"{root.parent / 'observed.csv'}: 4 of {len(names)} listed images are missing under {root} (first: {first}); "
        "fix the paths or remove those rows"
    )
    present = [n for n in names if n not in missing]
    said = f"4 of {len(present)} listed images are unreadable under {root} (first: {', '.join(unreadable[:3])})"
    assert said in error_of(root, present, threads)
    check_images(root, [n for n in present if n not in unreadable], root.parent / "observed.csv", threads=threads)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_one_line_rewritten_in_place_on_a_terminal(
    listed: tuple, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, names, missing, unreadable = listed
    good = [n for n in names if n not in missing + unreadable]
    check_images(root, good, root.parent / "observed.csv")  # stdout is not a terminal here: nothing shown
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(sys, "stdout", Terminal())
    check_images(root, good, root.parent / "observed.csv")
    text = sys.stdout.getvalue()
    assert text.endswith(f"\rchecking images: {len(good):,} of {len(good):,}\n") and text.count("\n") == 1
    counts = [int(n.replace(",", "")) for n in re.findall(r"checking images: ([\d,]+) of", text)]
    assert counts == sorted(set(counts)) and all(n % CHECK_CHUNK == 0 for n in counts[:-1])
