"""Image loading for detection: EXIF orientation, colour modes, bad files, size limits, source expansion, drawing.

No model is needed here: these are the parts of ``ssdtool.detect`` (and ``ssdtool.annotate``) that run before
and after the engine.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssdtool.annotate import annotate, drawing_sizes, output_name, save_image
from ssdtool.detections import Detection
from ssdtool.errors import ImageError, InputError, UsageError
from ssdtool.imaging import DEFAULT_MAX_PIXELS, load_image
from ssdtool.inputs import find_images
from ssdtool.labels import COCO_CATEGORY_IDS, COCO_NAMES, coco_category_map, is_coco_labels

# A 4x2 image with eight distinct colours, so any rotation or flip is visible.
STORED = np.array([
    [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]],
    [[0, 255, 255], [255, 0, 255], [10, 20, 30], [200, 100, 50]],
], dtype=np.uint8)


def _png_with_orientation(path: Path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(STORED).save(path, format="PNG", exif=exif.tobytes())


@pytest.mark.parametrize(("orientation", "expected"), [
    (1, STORED),
    (3, np.rot90(STORED, 2)),
    (6, np.rot90(STORED, -1)),  # "rotate 90 CW to display"
    (8, np.rot90(STORED, 1)),
    (2, STORED[:, ::-1]),
])
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, expected: np.ndarray) -> None:
    path = tmp_path / "oriented.png"
    _png_with_orientation(path, orientation)
    assert np.array_equal(load_image(path), expected)


def test_exif_orientation_of_a_jpeg_changes_the_reported_size(tmp_path: Path) -> None:
    path = tmp_path / "portrait.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (64, 48), (120, 130, 140)).save(path, exif=exif.tobytes())
    assert load_image(path).shape == (64, 48, 3)  # stored landscape, displayed portrait


def test_exif_orientation_of_a_pil_image(tmp_path: Path) -> None:
    path = tmp_path / "oriented.png"
    _png_with_orientation(path, 6)
    with Image.open(path) as image:
        assert np.array_equal(load_image(image), np.rot90(STORED, -1))


def test_grayscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    gray = np.array([[0, 128, 255]], dtype=np.uint8)
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    rgb = load_image(tmp_path / "gray.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 3, 3)
    assert np.array_equal(rgb, np.repeat(gray[..., None], 3, axis=2))


def test_one_bit_image(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 255]], dtype=np.uint8)).convert("1").save(tmp_path / "bits.png")
    assert load_image(tmp_path / "bits.png").tolist() == [[[0, 0, 0], [255, 255, 255]]]


def test_palette_with_transparency_converts_without_warnings(tmp_path: Path) -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 1
    image.save(tmp_path / "palette.png", transparency=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb = load_image(tmp_path / "palette.png")
    assert rgb.tolist() == [[[255, 0, 0], [0, 0, 255]]]  # alpha dropped, colours kept


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_dropped(tmp_path: Path, mode: str) -> None:
    if mode == "RGBA":
        pixels = np.array([[[10, 20, 30, 0], [40, 50, 60, 255]]], dtype=np.uint8)
        expected = [[[10, 20, 30], [40, 50, 60]]]
    else:
        pixels = np.array([[[10, 0], [200, 255]]], dtype=np.uint8)
        expected = [[[10, 10, 10], [200, 200, 200]]]
    Image.fromarray(pixels, mode=mode).save(tmp_path / "alpha.png")
    assert load_image(tmp_path / "alpha.png").tolist() == expected


def test_cmyk_becomes_rgb(tmp_path: Path) -> None:
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255]]], dtype=np.uint8)
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "cmyk.tiff")
    assert load_image(tmp_path / "cmyk.tiff").tolist() == [[[255, 255, 255], [0, 255, 255], [0, 0, 0]]]
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    decoded = load_image(tmp_path / "cmyk.jpg")
    assert decoded.shape == (1, 3, 3) and decoded.dtype == np.uint8


def test_sixteen_bit_gray_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 100, 65535, 1000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as opened:
        assert opened.mode.startswith("I")
    rgb = load_image(tmp_path / "deep.png")
    assert rgb[..., 0].tolist() == [[0, 100, 255, 4]]
    assert np.array_equal(rgb[..., 0], rgb[..., 2])


def test_thirty_two_bit_integer_mode(tmp_path: Path) -> None:
    image = Image.fromarray(np.array([[0, 65535]], dtype=np.int32), mode="I")
    image.save(tmp_path / "int.tiff")
    assert load_image(tmp_path / "int.tiff")[..., 1].tolist() == [[0, 255]]


def test_truncated_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cut.jpg"
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert "cut.jpg: truncated or corrupt image data" in info.value.message
    assert info.value.hint == "re-export or re-download the file"
    assert isinstance(info.value, InputError) and info.value.exit_code == 30


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("shopping list")
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert info.value.message == (f"{path}: not an image Pillow can read (13 bytes of text); "
                                  "expected JPEG, PNG, BMP, GIF, TIFF, WebP or another format Pillow supports")
    path.write_bytes(b"\x89\x01\x02\xff binary")
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert info.value.message.startswith(f"{path}: not an image Pillow can read (11 bytes); expected JPEG")


def test_a_file_that_is_not_an_image_never_has_its_content_printed(tmp_path: Path) -> None:
    """A link named like an image to a file that is no image (a secret the run can read, as root can) is refused
    without a byte of it in the message: only its size and whether it is text."""
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$s3cr3t-hash:19000:0:99999:7:::\n")
    secret.chmod(0o600)
    link = tmp_path / "holiday.jpg"
    link.symlink_to(secret)
    with pytest.raises(ImageError) as info:
        load_image(link)
    assert info.value.message == (f"{link}: not an image Pillow can read (39 bytes of text); expected JPEG, PNG, BMP, "
                                  "GIF, TIFF, WebP or another format Pillow supports")
    assert "s3cr3t" not in str(info.value) and "$6$" not in str(info.value)


def test_fifos_and_devices_are_named_for_what_they_are(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # nobody writes to it: opening it for reading would block, and it is never opened
    with pytest.raises(ImageError) as info:
        load_image(fifo)
    assert info.value.message == f"{fifo}: it is a FIFO (named pipe), not an image file"
    zero = tmp_path / "zero.jpg"
    zero.symlink_to("/dev/zero")
    with pytest.raises(ImageError) as info:
        load_image(zero)
    assert info.value.message == (f"{zero}: it is a character device (through the link {zero} -> /dev/zero), "
                                  "not an image file")
    with pytest.raises(ImageError) as info:
        load_image("/dev/null")
    assert info.value.message == "/dev/null: it is a character device, not an image file"


def test_empty_missing_and_folder(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.png: empty file \(0 bytes\), expected an image"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(ImageError, match=r"nothere\.png: no such file"):
        load_image(tmp_path / "nothere.png")
    with pytest.raises(ImageError, match="is a folder, expected an image file"):
        load_image(tmp_path)


def test_unreadable_file(tmp_path: Path) -> None:
    import os

    path = tmp_path / "secret.png"
    Image.new("RGB", (4, 4)).save(path)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):  # running as root: permissions do not apply
            pytest.skip("file permissions are not enforced for this user")
        with pytest.raises(ImageError, match=r"secret\.png: cannot read"):
            load_image(path)
    finally:
        path.chmod(0o644)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (the pixel data is a stub and is never decoded)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def test_pixel_limit_is_checked_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    path.write_bytes(_png_header_only(20000, 5000))  # 100 M pixels declared in a ~60 byte file
    # Between Pillow's limit and twice it, Pillow itself only warns (ssdtool's CLI lifts Pillow's limit, so only
    # this check speaks there); the library leaves Pillow's global settings alone.
    with pytest.raises(ImageError) as info, pytest.warns(Image.DecompressionBombWarning):
        load_image(path)
    assert info.value.message == (f"{path}: 20000x5000 = 100,000,000 pixels is over the limit of 89,478,485 "
                                  "(a guard against decompression bombs)")
    assert "--max-pixels" in (info.value.hint or "")
    with pytest.raises(ImageError, match="over the limit of 1,000"):
        load_image(np.zeros((40, 40, 3), np.uint8), max_pixels=1000)


def test_pillow_decompression_bomb_error_becomes_an_image_error(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(30000, 30000))  # over twice Pillow's limit: Pillow itself refuses it
    with pytest.raises(ImageError, match=r"bomb\.png: too large to decode safely"):
        load_image(path, max_pixels=None)
    assert DEFAULT_MAX_PIXELS == Image.MAX_IMAGE_PIXELS  # our documented default is Pillow's


def test_arrays_in_either_channel_order() -> None:
    rgb = np.array([[[1, 2, 3], [4, 5, 6]]], dtype=np.uint8)
    assert np.array_equal(load_image(rgb), rgb)
    assert np.array_equal(load_image(rgb[..., ::-1], channel_order="BGR"), rgb)
    rgba = np.concatenate([rgb, np.full((1, 2, 1), 7, np.uint8)], axis=2)
    assert np.array_equal(load_image(rgba), rgb)
    assert load_image(np.array([[9, 10]], np.uint8)).tolist() == [[[9, 9, 9], [10, 10, 10]]]
    assert load_image(np.array([[0, 65535]], np.uint16))[..., 0].tolist() == [[0, 255]]


def test_bad_arrays() -> None:
    with pytest.raises(ImageError, match="the image has no pixels"):
        load_image(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(ImageError, match="expected a uint8"):
        load_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ImageError, match="got shape"):
        load_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(UsageError, match="channel_order"):
        load_image(np.zeros((4, 4, 3), np.uint8), channel_order="RBG")
    with pytest.raises(ImageError, match="expected a path, a PIL image or a numpy array"):
        load_image(42)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------- sources
def _touch_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (2, 2)).save(path)


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("b.jpg", "a.png", "sub/c.jpg", "sub/deeper/d.webp", ".hidden/e.jpg", "sub/.f.jpg"):
        _touch_image(tmp_path / "photos" / name)
    (tmp_path / "photos" / "readme.txt").write_text("not an image")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_folder_lists_its_images_sorted(tree: Path) -> None:
    files, notes = find_images(["photos"])
    assert [f.path for f in files] == ["photos/a.png", "photos/b.jpg"]
    assert [f.relative for f in files] == ["a.png", "b.jpg"]
    assert notes == []


def test_folder_recursion_skips_hidden_entries(tree: Path) -> None:
    files, _ = find_images(["photos"], recursive=True)
    assert [f.path for f in files] == ["photos/a.png", "photos/b.jpg", "photos/sub/c.jpg",
                                       "photos/sub/deeper/d.webp"]
    assert [f.relative for f in files] == ["a.png", "b.jpg", "sub/c.jpg", "sub/deeper/d.webp"]


def test_globs_named_files_and_duplicates(tree: Path) -> None:
    files, notes = find_images(["photos/*.jpg", "photos/b.jpg", "photos/readme.txt", "missing.jpg",
                                "nothing/*.png"])
    assert [f.path for f in files] == ["photos/b.jpg", "photos/readme.txt", "missing.jpg"]
    assert notes == ["no image files match nothing/*.png"]
    files, _ = find_images(["photos/**/*.jpg"], recursive=True)
    assert [f.path for f in files] == ["photos/b.jpg", "photos/sub/c.jpg"]


def test_empty_folder_note_and_exclusion(tree: Path) -> None:
    (tree / "empty").mkdir()
    files, notes = find_images(["empty"])
    assert files == [] and notes == ["no image files in folder empty (use --recursive to search its subfolders)"]
    files, _ = find_images(["photos"], recursive=True, exclude=["photos/sub"])
    assert [f.path for f in files] == ["photos/a.png", "photos/b.jpg"]


# ------------------------------------------------------------------------------------------------- labels
def test_coco_category_map_has_the_documented_gaps() -> None:
    assert len(COCO_CATEGORY_IDS) == 80 and len(set(COCO_CATEGORY_IDS)) == 80
    missing = sorted(set(range(1, 91)) - set(COCO_CATEGORY_IDS))
    assert missing == [12, 26, 29, 30, 45, 66, 68, 69, 71, 83]
    names = ("__background__", *COCO_NAMES)
    assert is_coco_labels(names) and not is_coco_labels(names[:-1])
    mapping = coco_category_map(names)
    assert mapping[1] == 1 and mapping[12] == 13 and mapping[80] == 90
    assert coco_category_map(("bg", "cat")) == {}


# ------------------------------------------------------------------------------------------------- drawing
@pytest.mark.parametrize(("size", "expected"), [
    ((640, 480), (2, 16)), ((33, 1000), (3, 16)), ((4000, 3000), (13, 100)), ((20, 20), (1, 10)),
])
def test_drawing_scales_with_the_image(size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert drawing_sizes(*size) == expected


def test_annotate_draws_in_place_of_a_copy(tmp_path: Path) -> None:
    rgb = np.full((120, 160, 3), 255, np.uint8)
    detection = Detection(1, "person", 0.9, (10.0, 40.0, 100.0, 110.0), 1)
    drawn = annotate(rgb, [detection])
    assert drawn.size == (160, 120) and drawn.mode == "RGB"
    pixels = np.asarray(drawn)
    assert (pixels[60, 10] != 255).any()  # the box's left edge
    assert (pixels[20:40, 10:60] != 255).any()  # the label tag above the box
    assert (pixels[80, 50] == 255).all()  # the inside of the box is untouched
    assert (rgb == 255).all()  # the input array is not modified
    save_image(drawn, tmp_path / "out" / "x.jpg")
    with Image.open(tmp_path / "out" / "x.jpg") as saved:
        assert saved.format == "JPEG" and saved.size == (160, 120)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["x.jpg"]  # no temporary left behind
    assert output_name("a/b.gif") == "a/b.png" and output_name("c.JPG") == "c.JPG"


# ------------------------------------------------------------------------------------------------------------------
# Memory of large decodes (issue 11): a lean path with the same pixels, and a budget across decode threads


def _image_in_mode(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    if mode == "P+transparency":
        image = rgb.convert("P")
        image.info["transparency"] = 3
        return image
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (size[1], size[0]), dtype=np.uint16))
    return rgb.convert(mode)


@pytest.mark.parametrize("mode", ["1", "L", "P", "P+transparency", "RGB", "RGBA", "LA", "CMYK", "YCbCr", "I;16"])
@pytest.mark.parametrize("size", [(640, 480), (300, 300), (31, 517)])
def test_lean_network_resize_gives_the_same_pixels(mode: str, size: tuple[int, int]) -> None:
    from ssdtool.imaging import pil_to_rgb as _pil_to_rgb
    from ssdtool.imaging import resize_rgb, resized_for_network
    from ssdtool.registry import load_registry

    spec = load_registry().model("ssd-resnet34-300-synthetic-tiny").input
    image = _image_in_mode(mode, size, seed=size[0])
    lean = resized_for_network(image, spec)
    expected = resize_rgb(_pil_to_rgb(image), spec)
    if mode == "I;16":
        assert lean is None  # numpy's own scaling: the caller takes the usual path
    else:
        assert lean is not None and lean.dtype == np.uint8 and np.array_equal(lean, expected)


@pytest.mark.parametrize("mode", ["1", "L", "P", "P+transparency", "RGB", "RGBA", "LA", "CMYK", "YCbCr", "I;16"])
def test_whole_image_for_the_image_input_ir_gives_the_same_pixels(mode: str) -> None:
    """The image-input IR's tensor straight from Pillow's buffer (BGR) equals the one built from load_image."""
    from ssdtool.imaging import pil_to_rgb as _pil_to_rgb
    from ssdtool.imaging import preprocess, whole_for_network
    from ssdtool.registry import load_registry

    entry = load_registry().model("ssd-resnet34-300-synthetic-tiny")
    image = _image_in_mode(mode, (31, 517), seed=7)
    lean = whole_for_network(image, entry.convert.color_order)
    expected = preprocess(_pil_to_rgb(image), entry, form="image")
    assert expected.shape == (1, 517, 31, 3) and expected.dtype == np.uint8
    if mode == "I;16":
        assert lean is None  # numpy's own scaling: the caller takes the usual path
    else:
        assert lean is not None and lean.dtype == np.uint8 and np.array_equal(lean, expected)


def test_decode_budget_runs_an_oversized_decode_alone() -> None:
    import threading
    import time

    from ssdtool.imaging import DecodeBudget

    budget = DecodeBudget(capacity=100)
    inside = 0
    most = 0
    lock = threading.Lock()

    def decode(cost: int) -> None:
        nonlocal inside, most
        with budget.hold(cost):
            with lock:
                inside += 1
                most = max(most, inside)
            time.sleep(0.01)
            with lock:
                inside -= 1

    threads = [threading.Thread(target=decode, args=(500,)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == 1 and budget.peak_holders == 1
    small = DecodeBudget(capacity=100)
    with small.hold(40), small.hold(40):  # two that fit are held at once, without waiting
        assert small.peak_holders == 2


def test_decode_cost_grows_with_pixels_and_kept_images() -> None:
    from ssdtool.imaging import decode_cost

    assert decode_cost(9000, 9000, "1", keep_full_image=False) == 81_000_000 * 6
    assert decode_cost(100, 100, "RGB", keep_full_image=True) == 10_000 * (8 + 4 + 7)
