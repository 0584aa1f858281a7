"""Preprocessing: reading every accepted format safely, finding the foreground, framing it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mpod123.config import PreprocessConfig
from mpod123.pipeline.preprocess import (
    InputImageError,
    connected_components,
    foreground,
    preprocess,
    read_image,
)
from tests.inputs import png_header_only

from ...conftest import SHARED_DATA


def _disk_rgba(size: int = 96, radius: float = 0.3, centre=(0.4, 0.55)) -> np.ndarray:
    """An orange disk with a blue square notch on transparency, off-centre."""
    y, x = np.mgrid[0:size, 0:size] / size
    inside = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 < radius**2
    rgba = np.zeros((size, size, 4), dtype=np.float32)
    rgba[inside] = (0.9, 0.5, 0.1, 1.0)
    rgba[(abs(x - centre[0]) < 0.08) & (abs(y - centre[1]) < 0.08)] = (0.1, 0.2, 0.8, 1.0)
    return rgba


def _save(rgba: np.ndarray, path, mode: str = "RGBA", **kw):
    Image.fromarray((rgba * 255 + 0.5).astype(np.uint8), "RGBA").convert(mode).save(path, **kw)
    return path


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_alpha_input_is_centred_with_the_zero123_margin(tmp_path):
    out = preprocess(_save(_disk_rgba(), tmp_path / "disk.png"), PreprocessConfig(size=64, border_ratio=0.2))
    assert out.method == "alpha" and out.rgba.shape == (64, 64, 4)
    ys, xs = np.nonzero(out.mask)
    extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    assert abs(extent - 64 * 0.6) <= 1.5, extent  # the object spans 1 - 2 x 0.2 of the frame
    assert abs((ys.min() + ys.max()) / 2 - 31.5) <= 1.0 and abs((xs.min() + xs.max()) / 2 - 31.5) <= 1.0
    # colours survive the resample (no halo of background colour), and the outside is white on the RGB
    assert np.allclose(out.rgba[32, 20, :3], (0.9, 0.5, 0.1), atol=0.03)
    assert np.allclose(out.rgb_on_white[0, 0], 1.0)


def test_plain_background_photo_is_matted_into_one_object(tmp_path):
    rgba = _disk_rgba(160)
    rng = np.random.default_rng(0)
    grey = np.full((160, 160, 3), 0.93, dtype=np.float32) + rng.normal(0, 0.01, (160, 160, 3)).astype(np.float32)
    photo = rgba[..., :3] * rgba[..., 3:] + grey * (1 - rgba[..., 3:])
    path = tmp_path / "photo.jpg"
    Image.fromarray((np.clip(photo, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path, quality=90)
    image, _ = read_image(path)
    alpha, method = foreground(image, PreprocessConfig())
    assert method == "plain-background"
    assert _iou(alpha >= 0.5, rgba[..., 3] >= 0.5) > 0.95
    assert connected_components(alpha >= 0.5)[1] == 1


def test_sixteen_bit_palette_and_webp_inputs(tmp_path):
    # 16-bit greyscale, no alpha: a bright disk on black, matted from the border
    y, x = np.mgrid[0:80, 0:80]
    disk = ((x - 40) ** 2 + (y - 40) ** 2 < 400).astype(np.uint16) * 60000
    Image.fromarray(disk.astype("<u2")).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    out = preprocess(tmp_path / "deep.png", PreprocessConfig(size=48))
    assert out.method == "plain-background" and out.mask.sum() > 100
    # a palette image with a transparent index, and a lossless WebP with alpha
    img = Image.fromarray((_disk_rgba() * 255).astype(np.uint8), "RGBA")
    pal = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    pal.save(tmp_path / "pal.png", transparency=pal.getpixel((0, 0)))
    assert preprocess(tmp_path / "pal.png").method == "alpha"
    img.save(tmp_path / "cut.webp", lossless=True)
    webp = preprocess(tmp_path / "cut.webp", PreprocessConfig(size=64))
    assert webp.method == "alpha" and _iou(webp.mask, preprocess(tmp_path / "pal.png", PreprocessConfig(size=64)).mask) > 0.9


def test_large_photos_are_reduced_fast(tmp_path):
    big = Image.new("RGB", (5000, 4000), (250, 250, 250))
    big.paste((200, 30, 30), (1500, 1000, 3500, 3000))
    big.save(tmp_path / "big.jpg", quality=85)
    image, size = read_image(tmp_path / "big.jpg")
    assert size == (5000, 4000) and max(image.shape[:2]) <= 2048
    out = preprocess(tmp_path / "big.jpg", PreprocessConfig(size=64))
    assert out.method == "plain-background" and out.source_size == (5000, 4000)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4), "not an image|corrupt"),
        (lambda p: png_header_only(p, 30000, 30000), "too large.*Downscale"),
        (lambda p: _save(np.zeros((32, 32, 4), np.float32), p), "alpha channel is empty|no object"),
        (lambda p: Image.new("RGB", (64, 64), (255, 255, 255)).save(p, format="PNG"), "no object"),
        (lambda p: Image.new("RGB", (8, 8)).save(p, format="GIF"), "GIF"),
    ],
    ids=["zero-bytes", "corrupt", "bomb-header", "empty-alpha", "all-background", "gif"],
)
def test_bad_inputs_get_clear_errors(tmp_path, make, message):
    path = tmp_path / "input.png"
    make(path)
    with pytest.raises(InputImageError, match=message):
        preprocess(path)


def test_noisy_background_without_rembg_says_what_to_supply(tmp_path):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "noise.png")
    try:
        import rembg  # noqa: F401
    except ImportError:
        with pytest.raises(InputImageError, match="alpha channel.*plain background.*rembg"):
            preprocess(tmp_path / "noise.png")
    else:
        pytest.skip("rembg is installed here, so the fallback would be used")


REALFUSION = SHARED_DATA / "images" / "realfusion15"
PRODUCTS = SHARED_DATA / "images" / "products"


@pytest.mark.skipif(not REALFUSION.is_dir(), reason="the shared test images are not beside this checkout")
def test_realfusion_cutouts_agree_with_their_masks():
    cfg = PreprocessConfig()
    for folder in sorted(p for p in REALFUSION.iterdir() if p.is_dir()):
        image, _ = read_image(folder / "image_rgba.png", cfg)
        alpha, method = foreground(image, cfg)
        gt = np.asarray(Image.open(folder / "mask.png").convert("L"), dtype=np.float32) / 255.0 >= 0.5
        assert method == "alpha"
        assert _iou(alpha >= 0.5, gt) >= 0.9, folder.name


@pytest.mark.skipif(not PRODUCTS.is_dir(), reason="the shared test images are not beside this checkout")
def test_product_photos_give_one_connected_object():
    for path in sorted(PRODUCTS.iterdir()):
        out = preprocess(path)
        assert connected_components(out.mask)[1] == 1, path.name
        assert out.mask.mean() > 0.05, path.name


# ------------------------------------------------------------ matting confidence
def _photo_on(background: np.ndarray, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The procedural object (a cut-out) composited on ``background``; (photo RGB, true mask)."""
    from mpod123.camera import orbit_cameras
    from mpod123.bench.synthetic import render_object

    rgba = render_object(orbit_cameras(90.0, 30.0, 2.5, 40.0, size, size))[0].numpy()
    a = rgba[..., 3:]
    return (rgba[..., :3] * a + background * (1 - a)).astype(np.float32), rgba[..., 3] >= 0.5


def _smooth_noise(size: int, seed: int, cells: int = 6) -> np.ndarray:
    """A blurred, natural-looking background: random colours on a coarse grid, bicubic-upsampled."""
    rng = np.random.default_rng(seed)
    coarse = (rng.random((cells, cells, 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255.0


@pytest.mark.parametrize("seed", range(4))
def test_unseen_photos_are_refused_or_matted_well(seed):
    from mpod123.pipeline.preprocess import find_foreground

    rng = np.random.default_rng(seed)
    plain = np.full((256, 256, 3), rng.uniform(0.6, 0.97), np.float32) + rng.normal(0, 0.008, (256, 256, 3)).astype(np.float32)
    base = rng.uniform(0.3, 0.9, 3).astype(np.float32)
    blurred = [base + amp * (_smooth_noise(256, seed, cells) - 0.5) * 2 for amp, cells in ((0.08, 5), (0.15, 5), (0.15, 40))]
    for background, must_accept in [(plain, True)] + [(b, False) for b in blurred]:
        photo, truth = _photo_on(np.clip(background, 0, 1))
        try:
            matte = find_foreground(photo, PreprocessConfig())
        except InputImageError as exc:
            assert not must_accept, f"a plain backdrop was refused: {exc}"
            assert "alpha channel" in str(exc)
            continue
        assert _iou(matte.alpha >= 0.5, truth) >= 0.85, (seed, matte.method, matte.confidence, matte.details)
        if must_accept:
            assert matte.confidence >= 0.5


@pytest.mark.skipif(not REALFUSION.is_dir(), reason="the shared test images are not beside this checkout")
def test_realfusion_photos_are_refused_or_matted_to_their_masks():
    """Each RealFusion15 photo (no alpha) is either refused with the fix-it message or matted to
    IoU >= 0.85 against its true mask, at the photo's own size."""
    from mpod123.pipeline.preprocess import find_foreground

    cfg = PreprocessConfig()
    for folder in sorted(p for p in REALFUSION.iterdir() if p.is_dir()):
        image, size = read_image(folder / "image.png", cfg)
        gt = np.asarray(Image.open(folder / "mask.png").convert("L"), dtype=np.float32) / 255.0 >= 0.5
        try:
            matte = find_foreground(image[..., :3], cfg)
        except InputImageError as exc:
            assert "alpha channel" in str(exc), folder.name
            continue
        alpha = Image.fromarray(matte.alpha).resize(size, Image.Resampling.BILINEAR)
        assert _iou(np.asarray(alpha) >= 0.5, gt) >= 0.85, (folder.name, matte.method, matte.details)


def test_matting_can_be_forced_and_the_refusal_says_how(tmp_path):
    from mpod123.pipeline.preprocess import find_foreground

    photo, truth = _photo_on(_smooth_noise(128, 3), 128)
    with pytest.raises(InputImageError, match="--matting alpha needs"):
        find_foreground(photo, PreprocessConfig(matting="alpha"))
    try:
        import rembg  # noqa: F401
    except ImportError:
        with pytest.raises(InputImageError, match="pip install rembg"):
            find_foreground(photo, PreprocessConfig(matting="model"))
    # an object cut by the image border is refused in auto and accepted when forced
    photo, _ = _photo_on(np.full((128, 128, 3), 0.9, np.float32), 128)
    photo = photo[:64]
    with pytest.raises(InputImageError, match="not confident.*touches the image border.*--matting plain"):
        find_foreground(photo, PreprocessConfig())
    forced = find_foreground(photo, PreprocessConfig(matting="plain"))
    assert forced.method == "plain-background" and forced.confidence < 0.5


# --------------------------------------------------------------- model mattes (issue 29, bug 3)
def _scene(kind: str, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(photo on white, the exact matte a segmentation model would return) for one scene: a clean object,
    a cropped one (running off the right edge), two separate objects, an object with a big hole."""
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size
    disk = lambda cx, cy, r: (x - cx) ** 2 + (y - cy) ** 2 < r**2  # noqa: E731
    shape = {
        "clean": disk(0.5, 0.5, 0.3),
        "cropped": disk(0.85, 0.5, 0.3),
        "two objects": disk(0.28, 0.5, 0.18) | disk(0.72, 0.5, 0.18),
        "holed": disk(0.5, 0.5, 0.32) & ~disk(0.5, 0.5, 0.2),
    }[kind]
    photo = np.ones((size, size, 3), np.float32)
    photo[shape] = (0.8, 0.3, 0.1)
    return photo, shape.astype(np.float32)


@pytest.mark.parametrize("kind", ["clean", "cropped", "two objects", "holed"])
def test_a_model_matte_is_judged_like_the_plain_background_one(kind):
    """The model matte's confidence sees cropping, several objects and holes: a cropped object and a
    two-object image are refused as the plain-background matte refuses them (the old 'decided fraction'
    gave them 1.0)."""
    from mpod123.pipeline.preprocess import model_matte, plain_background_matte

    cfg = PreprocessConfig()
    photo, alpha = _scene(kind)
    matte = model_matte(alpha, cfg)
    assert matte.method == "rembg" and matte.alpha is alpha
    plain = plain_background_matte(photo, cfg)
    plain_confidence = 0.0 if plain is None else plain[1]  # None: refused outright (the border is not plain)
    usable = matte.confidence >= cfg.min_confidence
    assert usable == (kind in ("clean",)), (kind, matte.confidence, matte.details)
    if kind in ("clean", "cropped", "two objects"):
        assert usable == (plain_confidence >= cfg.min_confidence), "the same verdict as the plain-background matte"
    if kind == "holed":
        assert matte.details["score_holes"] < cfg.min_confidence
    weakest = {"cropped": "contact", "two objects": "compact", "holed": "holes"}.get(kind)
    if weakest:
        assert matte.details[f"score_{weakest}"] == min(v for k, v in matte.details.items() if k.startswith("score_"))
        with pytest.raises(InputImageError, match="not confident"):
            model_matte(alpha, cfg, refuse=True)
    # a soft (antialiased) edge is still one clean cut: the clean disk blurred by one pixel
    if kind == "clean":
        soft = alpha.copy()
        soft[1:-1, 1:-1] = (alpha[:-2, 1:-1] + alpha[2:, 1:-1] + alpha[1:-1, :-2] + alpha[1:-1, 2:] + alpha[1:-1, 1:-1]) / 5
        assert model_matte(soft, cfg).confidence >= cfg.min_confidence
        assert model_matte(np.clip(alpha * 0.5 + 0.25, 0, 1), cfg).confidence < cfg.min_confidence, "a vague matte"
