"""Bad inputs that used to be misread silently or to crash: each now fails with a one-line error or is read right."""

from __future__ import annotations

import io
import shutil
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import error_of as invoke_error
from helpers import write
from PIL import Image

from wsml_fast.core.errors import WsmlError
from wsml_fast.data.labels import read_label_csv
from wsml_fast.data.loaders import check_train_batches, load_rgb
from wsml_fast.data.sources import from_csv, from_folder
from wsml_fast.data.table import check_images, load_table
from wsml_fast.prepare import prepare_dataset
from wsml_fast.training import features as features_module

U = -1.0


def error_of(path: Path, **kwargs) -> str:
    with pytest.raises(WsmlError) as error:
        read_label_csv(path, **kwargs)
    message = str(error.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


# ---------------------------------------------------------------- the header: exactly the classes written


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("image,split,cat,dog,\na.png,train,1,0,\n", "empty column name in the header (the last column: a trailing"),
        ("image,split,,dog\na.png,train,1,0\n", "empty column name in the header (column 3)"),
        ("image,split,red,blue,red\na.png,train,1,0,1\n", "class 'red' appears twice in the header"),
        ("image,split,red,image\na.png,train,1,b.png\n", "column 'image' appears twice in the header"),
        ("image,split,red,split\na.png,train,1,test\n", "column 'split' appears twice in the header"),
        ("image, red,red \na.png,1,0\n", "class 'red' appears twice in the header"),  # equal once stripped
        ("image,Split,red\na.png,train,1\n", "column 'Split' in the header: write it 'split'"),
        ("Image,split,red\na.png,train,1\n", "column 'Image' in the header: write it 'image'"),
        (
            "image;split;red\na.png;train;1\n",
            "no 'image' column (the header must start with image[,split],class...); the header is separated by ';'",
        ),
        ("image\tsplit\tred\na.png\ttrain\t1\n", "separated by '\\t'"),
        ("", "empty file"),
    ],
)
def test_header_problems_are_named(tmp_path: Path, text: str, message: str) -> None:
    assert message in error_of(write(tmp_path / "observed.csv", text))


def test_rows_longer_than_the_header_are_refused_not_shifted(tmp_path: Path) -> None:
    # pandas would take the first column for an index when every row has one cell more than the header
    path = write(tmp_path / "observed.csv", "image,split,cat\na.png,train,1,\nb.png,train,0,\n")
    assert "line 2 has 4 cells but the header has 3 (a trailing comma" in error_of(path)
    path = write(tmp_path / "observed.csv", "image,split,cat\n\na.png,train,1\n\nb.png,train,0,1\n")
    assert "line 5 has 4 cells but the header has 3" in error_of(path)


def test_short_rows_leave_their_last_cells_empty(tmp_path: Path) -> None:
    path = write(tmp_path / "observed.csv", "image,split,cat,dog\na.png,train,1\nb.png,train,0,1\n")
    np.testing.assert_array_equal(read_label_csv(path).store.to_dense(), [[1, U], [0, 1]])
    with pytest.raises(WsmlError, match="line 2 .*column 'dog': '' is not 1 or 0"):
        read_label_csv(path, complete=True)


def test_byte_order_mark_and_crlf_are_read(tmp_path: Path) -> None:
    path = tmp_path / "observed.csv"
    path.write_bytes(b"\xef\xbb\xbfimage,split,cat\r\na.png,train,1\r\n\r\nb.png,train,x\r\n")
    with pytest.raises(WsmlError, match=r"line 4 \(image b.png\), column 'cat'"):
        read_label_csv(path)
    path.write_bytes(b"\xef\xbb\xbfimage,split,cat\r\na.png,train,1\r\n")
    assert read_label_csv(path).classes == ["cat"]
    (tmp_path / "classes.txt").write_bytes(b"\xef\xbb\xbfcat\r\ndog\r\n")
    write(path, "image,split,positives\na.png,train,cat\n")
    assert read_label_csv(path).classes == ["cat", "dog"]


def test_text_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "observed.csv"
    path.write_bytes("image,split,café\na.png,train,1\n".encode("latin-1"))
    assert "line 1 is not UTF-8 text; save the file as UTF-8" in error_of(path)
    path.write_bytes(b"image,split,cat\n" + b"a.png,train,1\n" * 3 + "é.png,train,1\n".encode("latin-1"))
    assert "line 5 is not UTF-8 text" in error_of(path)


def test_compact_form_refuses_other_columns(tmp_path: Path) -> None:
    write(tmp_path / "classes.txt", "cat\ndog\n")
    path = write(tmp_path / "observed.csv", "image,split,positives,source\na.png,train,cat,web\n")
    assert "column 'source' next to positives/negatives; the compact form has only" in error_of(path)
    path = write(tmp_path / "observed.csv", "image,split,positives,dog\na.png,train,cat,1\n")
    assert "column 'dog' next to positives/negatives" in error_of(path)
    path = write(tmp_path / "observed.csv", "image,split,positives,positives\na.png,train,cat,dog\n")
    assert "column 'positives' appears twice" in error_of(path)


def test_negatives_alone_is_the_compact_form(tmp_path: Path) -> None:
    write(tmp_path / "classes.txt", "cat\ndog\n")
    path = write(tmp_path / "observed.csv", "image,split,negatives\na.png,train,dog\n")
    table = read_label_csv(path)
    assert table.classes == ["cat", "dog"]
    np.testing.assert_array_equal(table.store.to_dense(), [[U, 0]])


def test_truth_csv_header_is_checked_too(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    write(tmp_path / "observed.csv", "image,split,cat,dog\na.png,train,1,\nb.png,valid,,1\n")
    write(tmp_path / "truth.csv", "image,split,cat,dog,\na.png,train,1,0,\nb.png,valid,0,1,\n")
    with pytest.raises(WsmlError, match=r"truth.csv: empty column name in the header \(the last column"):
        load_table(from_folder(tmp_path))


def test_a_header_only_observed_csv_is_named_itself_not_its_truth(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    write(tmp_path / "observed.csv", "image,split,cat\n")
    write(tmp_path / "truth.csv", "image,split,cat\na.png,train,1\n")
    with pytest.raises(WsmlError) as error:
        load_table(from_folder(tmp_path))
    assert str(error.value) == f"{tmp_path / 'observed.csv'}: no rows after the header; list one image a line"


def test_a_compact_class_holding_the_separator_is_refused_at_its_line(tmp_path: Path) -> None:
    write(tmp_path / "classes.txt", "red\n\nred|green\ngreen\n")
    path = write(tmp_path / "observed.csv", "image,split,positives\na.png,train,red|green\n")
    with pytest.raises(WsmlError) as error:
        read_label_csv(path)
    assert str(error.value) == (
        f"{tmp_path / 'classes.txt'}: line 3: class 'red|green' holds '|', which separates the classes of a cell in "
        "the compact form; rename the class"
    )


# ---------------------------------------------------------------- errors name the file line


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("\n\nimage,split,cat\n\na.png,train,1\n\n\nb.png,train,2\n", "line 8 (image b.png), column 'cat': '2'"),
        ("image,split,cat\n   \n\t\na.png,train,1\nb.png,train,2\n", "line 5 (image b.png), column 'cat'"),
        ('image,split,cat\n"a\nb.png",train,1\n\nc.png,train,2\n', "line 5 (image c.png), column 'cat'"),
        ("image,split,cat\n\na.png,train,1\n\nb.png,holdout,1\n", "line 5 (image b.png) has split 'holdout'"),
        ("image,split,cat\n\na.png,train,1\n\n,train,1\n", "line 5 has an empty 'image' cell"),
        ("image,split,cat\n\na.png,train,1\n\n\na.png,test,1\n", "image 'a.png' appears on lines 3 and 6"),
    ],
)
def test_errors_name_the_file_line_past_blank_lines(tmp_path: Path, text: str, message: str) -> None:
    assert message in error_of(write(tmp_path / "observed.csv", text))


def test_compact_errors_name_the_file_line(tmp_path: Path) -> None:
    write(tmp_path / "classes.txt", "cat\ndog\n")
    path = write(tmp_path / "observed.csv", "image,split,positives,negatives\n\na.png,train,cat,\n\nb.png,train,cow,\n")
    assert "line 5 (image b.png), column 'positives': class 'cow' is not in classes.txt" in error_of(path)
    path = write(tmp_path / "observed.csv", "image,split,positives,negatives\n\n\na.png,train,cat,cat\n")
    assert "line 4 (image a.png) lists a class as both positive and negative" in error_of(path)


# ---------------------------------------------------------------- 16-bit and float images


def png16(arr: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG (PIL writes only grayscale ones): color type 0 gray, 2 RGB, 4 gray+alpha, 6 RGBA."""
    height, width = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_png16_writer_is_a_real_png() -> None:
    image = Image.open(io.BytesIO(png16(np.zeros((2, 3, 3), np.uint16), 2)))
    assert image.format == "PNG" and image.size == (3, 2)


VALUES = np.array([[0, 255, 256, 0x1234, 0x8000, 0xFFFF]], dtype=np.uint16)
TOP_BYTES = (VALUES >> 8).astype(np.uint8)


def test_16bit_grayscale_png_keeps_its_top_byte(tmp_path: Path) -> None:
    path = tmp_path / "gray16.png"
    Image.fromarray(VALUES).save(path)
    assert Image.open(path).mode == "I;16"
    pixels = load_rgb(path)
    assert pixels.dtype == np.uint8 and pixels.shape == (1, 6, 3)
    np.testing.assert_array_equal(pixels, np.repeat(TOP_BYTES[:, :, None], 3, axis=2))


@pytest.mark.parametrize(("fmt", "array", "mode"), [("TIFF", VALUES.astype(">u2"), "I;16B"), ("PPM", VALUES, "I")])
def test_other_16bit_grayscale_modes(tmp_path: Path, fmt: str, array: np.ndarray, mode: str) -> None:
    path = tmp_path / f"gray16.{fmt.lower()}"
    Image.fromarray(array).save(path, fmt)
    assert Image.open(path).mode == mode
    np.testing.assert_array_equal(load_rgb(path)[:, :, 0], TOP_BYTES)


@pytest.mark.parametrize(("color_type", "channels"), [(2, 3), (4, 2), (6, 4)])
def test_16bit_color_and_alpha_pngs(tmp_path: Path, color_type: int, channels: int) -> None:
    path = tmp_path / "color16.png"
    path.write_bytes(png16(np.repeat(VALUES[:, :, None], channels, axis=2), color_type))
    pixels = load_rgb(path)
    assert pixels.shape == (1, 6, 3)
    np.testing.assert_array_equal(pixels, np.repeat(TOP_BYTES[:, :, None], 3, axis=2))


def test_float_images_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(root / "f.tif")
    with pytest.raises(WsmlError, match=r"f.tif: 32-bit float pixels \(mode F\)"):
        load_rgb(root / "f.tif")
    with pytest.raises(WsmlError, match=r"1 of 1 listed images have 32-bit float pixels .*convert them"):
        check_images(root, ["f.tif"], tmp_path / "observed.csv")


# ---------------------------------------------------------------- images larger than PIL decodes


def test_too_large_images_get_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (20, 20)).save(root / "big.png")  # 400 pixels
    Image.new("RGB", (12, 12)).save(root / "warned.jpg")  # 144 pixels: PIL only warns
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL refuses above 2 x 100
    with pytest.raises(WsmlError, match=r"1 of 2 listed images have more pixels than PIL decodes \(200\) .*big.png"):
        check_images(root, ["warned.jpg", "big.png"], tmp_path / "observed.csv")
    with pytest.raises(WsmlError, match=r"big.png: more pixels than PIL decodes \(200\); downscale it"):
        load_rgb(root / "big.png")
    with pytest.warns(Image.DecompressionBombWarning):
        assert load_rgb(root / "warned.jpg", 4).shape[2] == 3


# ---------------------------------------------------------------- notes: paths outside the root, unseen classes


def test_paths_outside_the_image_root_are_read_and_counted(tmp_path: Path) -> None:
    root = tmp_path / "data" / "images"
    rows = "a.png,train,1\nsub/../b.png,train,0\n../c.png,train,1\nsub/../../d.png,valid,0\n/abs/e.png,test,1\n"
    csv = write(tmp_path / "data" / "observed.csv", "image,split,cat\n" + rows)
    root.mkdir()
    table = load_table(from_csv(csv, root))
    assert table.images[4] == "/abs/e.png"
    notes = [n for n in table.notes if "outside the image folder" in n]
    assert notes == [
        f"image paths outside the image folder: 1 are absolute (first: /abs/e.png) and 2 leave {root} through "
        "'..' (first: ../c.png); they are read as written"
    ]
    inside = write(tmp_path / "inside.csv", "image,split,cat\na.png,train,1\nsub/../b.png,valid,0\n")
    assert not any("outside" in n for n in load_table(from_csv(inside, root)).notes)


def test_prepare_copy_refuses_paths_outside_the_root(tmp_path: Path) -> None:
    pics = tmp_path / "pics"
    for name in ("a.png", "b.png"):
        write(pics / name, "x")
    write(tmp_path / "c.png", "x")
    path = write(tmp_path / "mine.csv", "image,split,red\na.png,train,1\nb.png,test,0\n../c.png,test,1\n")
    with pytest.raises(WsmlError, match=r"--copy: 1 image paths are absolute or leave .*first: ../c.png"):
        prepare_dataset("csv", path, tmp_path / "out", image_root=pics, copy_images=True, log=print)
    assert not (tmp_path / "out").exists()
    messages: list[str] = []
    prepare_dataset("csv", path, tmp_path / "out", image_root=pics, log=messages.append)
    assert any("1 leave" in m and "through '..' (first: ../c.png)" in m for m in messages)


def test_classes_without_an_observed_positive_in_train_are_noted(tmp_path: Path) -> None:
    rows = "a.png,train,1,,0,\nb.png,train,1,0,,\nc.png,valid,0,1,1,\nd.png,test,1,1,1,1\n"
    csv = write(tmp_path / "observed.csv", "image,split,cat,dog,bird,fish\n" + rows)
    (tmp_path / "images").mkdir()
    notes = load_table(from_csv(csv, tmp_path / "images")).notes
    assert (
        "3 classes have no observed positive in train (first: dog, bird, fish); they can only be learned as negatives"
        in notes
    )
    write(csv, "image,split,cat,dog\na.png,train,1,\nb.png,train,1,1\nc.png,valid,0,1\n")
    assert not any("no observed positive" in n for n in load_table(from_csv(csv, tmp_path / "images")).notes)
    write(csv, "image,split,cat,dog\na.png,train,1,\nb.png,valid,0,1\n")
    assert "1 class has no observed positive in train (first: dog); it can only be learned as negative" in (
        load_table(from_csv(csv, tmp_path / "images")).notes
    )


# ---------------------------------------------------------------- batches of one image with batch norm


@pytest.fixture(scope="module")
def bn_body() -> torch.nn.Module:
    import timm

    return timm.create_model("test_efficientnet", pretrained=False, num_classes=0)


def test_a_single_image_batch_really_breaks_batch_norm(bn_body: torch.nn.Module) -> None:
    bn_body.train()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        bn_body(torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize(("n_train", "bs", "message"), [(10, 1, "--bs 1: "), (1, 32, "the train split holds 1 image")])
def test_single_image_batches_are_refused_with_batch_norm(
    bn_body: torch.nn.Module, n_train: int, bs: int, message: str
) -> None:
    with pytest.raises(WsmlError, match="breaks the model's batch-norm layers") as error:
        check_train_batches(bn_body, n_train, bs)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize(("n_train", "bs"), [(2, 32), (33, 32), (64, 2), (0, 1)])
def test_batches_of_two_or_more_pass(bn_body: torch.nn.Module, n_train: int, bs: int) -> None:
    check_train_batches(bn_body, n_train, bs)  # 33 with bs 32: the incomplete last batch (1 image) is dropped


def test_models_without_batch_norm_may_train_on_one_image() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    check_train_batches(model, 1, 32)
    check_train_batches(model, 10, 1)


def test_a_recipe_value_of_the_wrong_type_is_one_line_naming_the_file_the_setting_and_the_type(
    tmp_path: Path,
) -> None:
    recipe = write(tmp_path / "r.yaml", "epochs: many\nlr: 1e-3\n")  # YAML reads 1e-3 as text: taken as a number
    assert invoke_error("train", "--recipe", recipe) == f"error: recipe:{recipe}: epochs: 'many' is not an integer"
    write(recipe, "lr: fast\n")
    assert invoke_error("train", "--recipe", recipe).endswith("lr: 'fast' is not a number")


def test_an_image_name_longer_than_the_file_system_allows_is_one_line(
    demo_folder: Path, trained_run: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(demo_folder, data, symlinks=True)
    long = "a" * 300 + ".png"
    for name in ("observed.csv", "truth.csv"):
        (data / name).write_text((data / name).read_text().replace("train/00000.png", f"train/{long}"))
    message = invoke_error("train", "--data", data, "--out", tmp_path / "run")
    assert "1 of 80 listed images have a name longer than the file system allows" in message
    message = invoke_error("predict", trained_run, data / "images" / long, "--out", tmp_path / "p.csv")
    assert message.endswith("cannot be read (File name too long)")


def test_a_damaged_feature_cache_is_rebuilt_and_an_unwritable_one_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extracted = torch.arange(12.0).reshape(4, 3)
    monkeypatch.setattr(features_module, "extract_features", lambda *args: extracted.clone())
    model, said = SimpleNamespace(body=SimpleNamespace(num_features=3)), []

    def features() -> torch.Tensor:
        return features_module.cached_features(model, [0] * 4, "key", 2, 0, "fp32", torch.device("cpu"), said.append)

    monkeypatch.setenv("WSML_HOME", str(tmp_path / "home"))
    features()
    cache = features_module.feature_cache_dir() / "key.pt"
    cache.write_bytes(cache.read_bytes()[:100])  # cut short
    assert torch.equal(features(), extracted) and "is damaged (cut short?)" in said[-2]
    assert torch.equal(torch.load(cache), extracted) and "from cache" in (features(), said[-1])[1]
    monkeypatch.setenv("WSML_HOME", str(tmp_path / "blocked"))
    write(tmp_path / "blocked" / "cache", "a file where the cache folder would be")
    assert torch.equal(features(), extracted) and said[-1].startswith("note: features not cached")


def test_prepare_into_a_folder_that_cannot_be_written_is_one_line(demo_folder: Path, tmp_path: Path) -> None:
    write(tmp_path / "file", "")
    out = tmp_path / "file" / "prepared"
    message = invoke_error("prepare", "csv", "--root", demo_folder / "truth.csv", "--out", out)
    assert message == f"error: --out {out}: {tmp_path / 'file'} is not a folder; choose a folder you can write to"
