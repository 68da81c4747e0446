"""Tests for vibbench.data.corruptions: contracts, determinism, severity ordering, exact behaviour.

All images are synthetic digit-like strokes on a black 28x28 canvas (no real MNIST), with a
zero border of 5 pixels so that translations up to 5 pixels lose nothing.
"""

from __future__ import annotations

import math

import pytest
import torch

from vibbench.data import corruptions as C
from vibbench.data.corruptions import CORRUPTIONS, PARAMETERS, RANDOMIZED, SEVERITIES, corrupt
from vibbench.core.errors import VibbenchError

NAMES = list(CORRUPTIONS)
BORDER = 5


def _strokes(n: int = 24, size: int = 28, seed: int = 1) -> torch.Tensor:
    """Digit-like images: 2-3 bars / boxes / diagonals of intensity 0.6..1 inside the border."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, size, size)
    lo, hi = BORDER, size - BORDER  # drawable rows/cols: [lo, hi)
    ys = torch.arange(size).view(size, 1).float()
    xs = torch.arange(size).view(1, size).float()
    for i in range(n):
        for _ in range(int(torch.randint(2, 4, (1,), generator=g))):
            kind = int(torch.randint(0, 3, (1,), generator=g))
            value = 0.6 + 0.4 * float(torch.rand((), generator=g))
            a, b = sorted(torch.randint(lo, hi, (2,), generator=g).tolist())
            c = int(torch.randint(lo, hi - 2, (1,), generator=g))
            canvas = images[i, 0]
            if kind == 0:  # vertical bar, 2 px wide
                canvas[a : max(b, a + 4), c : c + 2] = value
            elif kind == 1:  # horizontal bar, 2 px wide
                canvas[c : c + 2, a : max(b, a + 4)] = value
            else:  # diagonal stroke, ~1.5 px wide, kept inside the border
                inside = (ys >= lo) & (ys < hi) & (xs >= lo) & (xs < hi)
                line = ((ys - xs - (a - b) / 2).abs() <= 0.75) & inside
                canvas[line] = torch.maximum(canvas[line], torch.tensor(value))
    return images


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add barrier waits (5x slower on a busy box)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return _strokes()


def test_tables_are_consistent():
    """The tables agree: the same corruptions everywhere, parameters for every severity, names that are their keys."""
    assert SEVERITIES == tuple(range(1, len(SEVERITIES) + 1))  # 1..max: 0 is the clean images
    for required in ("rotation", "shot_noise", "impulse_noise", "gaussian_blur", "translation", "scale",
                     "brightness", "contrast", "motion_blur", "shear"):
        assert required in CORRUPTIONS
    assert set(PARAMETERS) == set(CORRUPTIONS)
    for name, (description, values) in PARAMETERS.items():
        assert description and len(values) == len(SEVERITIES), name
    assert RANDOMIZED <= set(CORRUPTIONS)
    assert all(callable(fn) for fn in CORRUPTIONS.values())
    # the module's documented table: the same corruptions, in the same order, with the same values
    import re

    lines = C.__doc__.splitlines()
    rules = [i for i, line in enumerate(lines) if line.startswith("=====") and "  =====" in line]
    assert len(rules) == 3, "the module docstring's table of corruptions is missing"
    value_column = lines[rules[0]].rindex(" =") + 1
    rows = [line for line in lines[rules[1] + 1 : rules[2]] if line.strip()]
    assert [row.split()[0] for row in rows] == list(CORRUPTIONS)
    for row in rows:
        name = row.split()[0]
        documented = [float(v) for v in re.findall(r"\d*\.?\d+", row[value_column:])]
        flat = [float(v) for value in PARAMETERS[name][1] for v in (value if isinstance(value, tuple) else (value,))]
        assert documented == flat, name


@pytest.mark.parametrize("name", NAMES)
def test_contract_every_severity(images, name):
    for severity in SEVERITIES:
        out = corrupt(images, name, severity, seed=3)
        assert out.shape == images.shape and out.dtype == images.dtype
        assert torch.isfinite(out).all()
        assert out.min() >= 0 and out.max() <= 1
        assert not torch.equal(out, images), (name, severity)
    assert torch.equal(images, _strokes())  # the input is never modified


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_given_seed(images, name):
    a = corrupt(images, name, 3, seed=7)
    b = corrupt(images.clone(), name, 3, seed=7)
    assert torch.equal(a, b)
    other = corrupt(images, name, 3, seed=8)
    if name in RANDOMIZED:
        assert not torch.equal(a, other)
    else:
        assert torch.equal(a, other)


@pytest.mark.parametrize("name", NAMES)
def test_prefix_stable_across_blocks(images, name, monkeypatch):
    """corrupt(x)[:m] == corrupt(x[:m]), also when the batch spans several blocks."""
    assert torch.equal(corrupt(images, name, 4)[:5], corrupt(images[:5], name, 4))
    monkeypatch.setattr(C, "BLOCK", 8)
    whole = corrupt(images, name, 4)  # 3 blocks of 8, in one chunk
    assert torch.equal(whole[:13], corrupt(images[:13], name, 4))
    for chunk_blocks in (1, 2):  # the chunk size does not matter
        monkeypatch.setattr(C, "CHUNK_BLOCKS", chunk_blocks)
        assert torch.equal(corrupt(images, name, 4), whole)
    # a corruption function called directly with one generator per block agrees
    gens = [C._generator(0, name, b) for b in range(3)]
    assert torch.equal(CORRUPTIONS[name](images, 4, gens).clamp(0, 1), whole)


def test_different_corruptions_do_not_share_noise():
    gray = torch.full((4, 1, 28, 28), 0.5)
    g1 = C._generator(0, "impulse_noise", 0)
    g2 = C._generator(0, "gaussian_noise", 0)
    assert not torch.equal(torch.rand(10, generator=g1), torch.rand(10, generator=g2))
    assert not torch.equal(corrupt(gray, "impulse_noise", 1) != 0.5, corrupt(gray, "dotted_line", 1) != 0.5)


@pytest.mark.parametrize("name", NAMES)
def test_strength_increases_with_severity(images, name):
    diffs = [(corrupt(images, name, s, seed=0) - images).abs().mean().item() for s in (0, *SEVERITIES)]
    assert diffs[0] == 0.0 and diffs[1] > 0.0
    if name == "scale":
        # Shrinking saturates this measure: L1 ~ mass(x) (1 + s^2) - 2 overlap, and once the shrunken
        # strokes hardly overlap the original, a smaller s LOWERS it (these thin synthetic strokes
        # do at s = 0.5; real MNIST does not). The strength of a shrink is its spatial extent instead.
        diffs = diffs[:-1]
        spread = [_radius_of_gyration(corrupt(images, "scale", s)) for s in (0, *SEVERITIES)]
        assert all(later < earlier for earlier, later in zip(spread, spread[1:])), spread
    assert all(later >= earlier for earlier, later in zip(diffs, diffs[1:])), (name, diffs)


def _radius_of_gyration(images: torch.Tensor) -> float:
    """Mean over images of the intensity-weighted RMS distance from the image centre, in pixels."""
    h, w = images.shape[-2:]
    ys = torch.arange(h).view(h, 1) - (h - 1) / 2
    xs = torch.arange(w).view(1, w) - (w - 1) / 2
    r2 = ys**2 + xs**2
    return (((images * r2).sum(dim=(1, 2, 3)) / images.sum(dim=(1, 2, 3))).sqrt()).mean().item()


def test_severity_zero_is_an_unchanged_copy(images):
    out = corrupt(images, "rotation", 0)
    assert torch.equal(out, images) and out is not images


def test_other_dtypes_and_sizes():
    x = _strokes(6)
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        for name in NAMES:
            out = corrupt(x.to(dtype), name, 2)
            assert out.dtype == dtype and out.shape == x.shape
            assert torch.isfinite(out.float()).all() and out.min() >= 0 and out.max() <= 1
    big = torch.nn.functional.pad(x, (2, 2, 6, 6))  # 40 x 32, not square
    for name in NAMES:
        out = corrupt(big, name, 3)
        assert out.shape == big.shape and out.min() >= 0 and out.max() <= 1
    empty = torch.zeros(0, 1, 28, 28)
    assert corrupt(empty, "rotation", 1).shape == (0, 1, 28, 28)


# --------------------------------------------------------------------------- geometry


def _blob(row: float, col: float, size: int = 28, sigma: float = 0.8) -> torch.Tensor:
    ys = torch.arange(size).view(size, 1).float()
    xs = torch.arange(size).view(1, size).float()
    return torch.exp(-((ys - row) ** 2 + (xs - col) ** 2) / (2 * sigma**2)).view(1, 1, size, size)


def _centroid(image: torch.Tensor) -> tuple[float, float]:
    """(x, y) intensity-weighted centre of one (1, 1, H, W) image."""
    h, w = image.shape[-2:]
    mass = image.sum()
    y = (image.sum(dim=-1).flatten() * torch.arange(h)).sum() / mass
    x = (image.sum(dim=-2).flatten() * torch.arange(w)).sum() / mass
    return x.item(), y.item()


def _rotated_position(x: float, y: float, degrees: float, size: int = 28) -> tuple[float, float]:
    c = (size - 1) / 2
    t = math.radians(degrees)  # counter-clockwise on screen, y pointing down
    dx, dy = x - c, y - c
    return c + math.cos(t) * dx + math.sin(t) * dy, c - math.sin(t) * dx + math.cos(t) * dy


@pytest.mark.parametrize("degrees", [10.0, -30.0, 45.0, 60.0, 90.0])
def test_rotate_moves_a_bright_spot_where_the_rotation_matrix_says(degrees):
    x, y = 20.0, 9.0
    out = C.rotate(_blob(y, x), torch.tensor([degrees]))
    ex, ey = _rotated_position(x, y, degrees)
    cx, cy = _centroid(out)
    assert abs(cx - ex) < 0.2 and abs(cy - ey) < 0.2, ((cx, cy), (ex, ey))


def test_rotate_by_90_degrees_is_rot90(images):
    out = C.rotate(images, torch.full((images.shape[0],), 90.0))
    assert torch.allclose(out, torch.rot90(images, 1, dims=(-2, -1)), atol=1e-4)


def test_rotation_corruption_uses_a_random_sign_per_image(images):
    for severity in SEVERITIES:
        deg = PARAMETERS["rotation"][1][severity - 1]
        n = images.shape[0]
        plus = C.rotate(images, torch.full((n,), deg))
        minus = C.rotate(images, torch.full((n,), -deg))
        out = corrupt(images, "rotation", severity, seed=0)
        is_plus = (out - plus).abs().amax(dim=(1, 2, 3)) < 1e-6
        is_minus = (out - minus).abs().amax(dim=(1, 2, 3)) < 1e-6
        assert (is_plus | is_minus).all()
        assert is_plus.any() and is_minus.any()


def test_translate_equals_roll_on_a_zero_border(images):
    n = images.shape[0]
    out = C.translate(images, torch.full((n,), 2), torch.full((n,), -3))
    assert torch.equal(out, torch.roll(images, shifts=(-3, 2), dims=(-2, -1)))


def test_affine_warp_shift_agrees_with_integer_translate(images):
    n = images.shape[0]
    identity = torch.eye(2).expand(n, 2, 2)
    shifted = C.affine_warp(images, identity, torch.tensor([[2.0, -3.0]]).expand(n, 2))
    assert torch.allclose(shifted, C.translate(images, torch.full((n,), 2), torch.full((n,), -3)), atol=1e-5)


def test_translation_corruption_is_an_exact_shift_by_k_pixels(images):
    for severity in SEVERITIES:
        k = PARAMETERS["translation"][1][severity - 1]
        out = corrupt(images, "translation", severity, seed=0)
        seen = set()
        for i in range(images.shape[0]):
            matches = [
                (sy, sx)
                for sy in (-k, k)
                for sx in (-k, k)
                if torch.equal(out[i], torch.roll(images[i], shifts=(sy, sx), dims=(-2, -1)))
            ]
            assert len(matches) == 1, (severity, i)
            seen.add(matches[0])
        assert len(seen) >= 3  # the directions vary from image to image


def test_shear_slants_a_vertical_bar():
    bar = torch.zeros(1, 1, 28, 28)
    bar[0, 0, 6:22, 13:15] = 1.0
    for severity in SEVERITIES:
        m = PARAMETERS["shear"][1][severity - 1]
        out = corrupt(bar, "shear", severity, seed=0)
        rows = range(8, 20)
        centres = [(out[0, 0, r] * torch.arange(28)).sum().item() / out[0, 0, r].sum().item() for r in rows]
        ok = [all(abs(cx - (13.5 + sign * m * (r - 13.5))) < 0.05 for cx, r in zip(centres, rows)) for sign in (1, -1)]
        assert any(ok), (severity, centres)


def test_scale_shrinks_about_the_centre():
    blob = _blob(13.5, 13.5, sigma=3.0)  # smooth, so resampling sums are accurate
    for severity in SEVERITIES:
        s = PARAMETERS["scale"][1][severity - 1]
        out = corrupt(blob, "scale", severity)
        assert out.sum().item() == pytest.approx(blob.sum().item() * s * s, rel=0.02)
        cx, cy = _centroid(out)
        assert abs(cx - 13.5) < 1e-3 and abs(cy - 13.5) < 1e-3


# --------------------------------------------------------------------------- photometric


def test_brightness_adds_an_offset(images):
    for severity in SEVERITIES:
        c = PARAMETERS["brightness"][1][severity - 1]
        out = corrupt(images, "brightness", severity)
        assert out.mean() > images.mean()
        assert torch.allclose(out, (images + c).clamp(max=1.0))


def test_contrast_reduces_std_by_its_factor(images):
    before = images.std(dim=(1, 2, 3))
    for severity in SEVERITIES:
        c = PARAMETERS["contrast"][1][severity - 1]
        out = corrupt(images, "contrast", severity)
        assert (out.std(dim=(1, 2, 3)) < before).all()
        assert torch.allclose(out.std(dim=(1, 2, 3)), c * before, rtol=1e-4)
        assert torch.allclose(out.mean(dim=(1, 2, 3)), images.mean(dim=(1, 2, 3)), atol=1e-6)


def test_fog_blends_toward_a_haze_in_0_1(images):
    for severity in SEVERITIES:
        a = PARAMETERS["fog"][1][severity - 1]
        haze = corrupt(images, "fog", severity) - (1 - a) * images
        assert haze.min() >= -1e-6 and haze.max() <= a + 1e-6
        assert haze.amax(dim=(1, 2, 3)).min() > 0.9 * a  # the haze reaches 1 in every image


# --------------------------------------------------------------------------- blur


def test_gaussian_and_motion_blur_conserve_mass_away_from_the_border():
    blob = torch.zeros(2, 1, 28, 28)
    blob[:, :, 11:17, 12:16] = 0.9
    for name in ("gaussian_blur", "motion_blur"):
        for severity in SEVERITIES:
            out = corrupt(blob, name, severity, seed=severity)
            assert torch.allclose(out.sum(dim=(1, 2, 3)), blob.sum(dim=(1, 2, 3)), rtol=1e-5), (name, severity)
            assert not torch.equal(out, blob)


def test_gaussian_blur_equals_conv2d():
    x = torch.rand(3, 1, 28, 28)
    sigma = PARAMETERS["gaussian_blur"][1][2]
    kernel = C.gaussian_kernel1d(sigma)
    r = kernel.numel() // 2
    ref = torch.nn.functional.conv2d(x, kernel.view(1, 1, 1, -1), padding=(0, r))
    ref = torch.nn.functional.conv2d(ref, kernel.view(1, 1, -1, 1), padding=(r, 0))
    assert torch.allclose(corrupt(x, "gaussian_blur", 3), ref.clamp(0, 1), atol=1e-6)


def test_per_image_conv_equals_conv2d_image_by_image():
    """The shifted multiply-adds are torch's convolution (cross-correlation, zero padding)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 28, 28, generator=g)
    kernels = torch.rand(5, 13, 13, generator=g)
    out = C._per_image_conv(x, kernels)
    for i in range(5):
        ref = torch.nn.functional.conv2d(x[i : i + 1], kernels[i].view(1, 1, 13, 13), padding=6)
        assert torch.allclose(out[i : i + 1], ref, atol=1e-5), i
    # one image alone gets exactly the pixels it gets inside the batch
    assert torch.equal(C._per_image_conv(x[2:3], kernels[2:3]), out[2:3])


def test_motion_blur_smears_along_one_line():
    dot = _blob(13.5, 13.5, sigma=0.3)
    out = corrupt(dot, "motion_blur", 5, seed=0)[0, 0]
    ys, xs = torch.nonzero(out > 0.02 * out.max(), as_tuple=True)
    points = torch.stack([xs.float(), ys.float()], 1)
    spread = torch.linalg.svdvals(points - points.mean(0))
    assert spread[0] > 3 * spread[1]  # elongated: a line, not a disc


# --------------------------------------------------------------------------- noise


def test_impulse_noise_changes_about_p_of_the_pixels():
    gray = torch.full((64, 1, 28, 28), 0.5)
    for severity in SEVERITIES:
        p = PARAMETERS["impulse_noise"][1][severity - 1]
        out = corrupt(gray, "impulse_noise", severity)
        changed = out != 0.5
        assert changed.float().mean().item() == pytest.approx(p, abs=0.01)
        assert set(out[changed].unique().tolist()) <= {0.0, 1.0}
        assert (out[changed] == 1.0).float().mean().item() == pytest.approx(0.5, abs=0.05)


def test_impulse_noise_hits_nested_pixel_sets():
    gray = torch.full((8, 1, 28, 28), 0.5)
    hits = [corrupt(gray, "impulse_noise", s) != 0.5 for s in SEVERITIES]
    for low, high in zip(hits, hits[1:]):
        assert (high | ~low).all()  # low implies high


def _unclipped_shot_noise(images, severity, seed=0):
    """The shot noise corruption before `corrupt` clips it to [0, 1], with the generators `corrupt` would use."""
    gens = [C._generator(seed, "shot_noise", b) for b in range(-(-images.shape[0] // C.BLOCK))]
    return CORRUPTIONS["shot_noise"](images, severity, gens)


def test_shot_noise_is_unbiased_with_poisson_variance_before_clipping():
    level = 0.3
    gray = torch.full((64, 1, 28, 28), level)
    for severity in SEVERITIES:
        c, b = PARAMETERS["shot_noise"][1][severity - 1]
        raw = _unclipped_shot_noise(gray, severity)
        assert raw.mean().item() == pytest.approx(level, abs=0.01)
        assert raw.var().item() == pytest.approx((level + b) / c, rel=0.1)
        assert torch.allclose((raw + b) * c, ((raw + b) * c).round(), atol=1e-3)  # photon counts / c - b
        # corrupt is that, clipped
        assert torch.equal(corrupt(gray, "shot_noise", severity), raw.clamp(0, 1))


def test_shot_noise_perturbs_a_black_background(images):
    """On digit-like strokes over an exactly black background (MNIST's case) every severity changes a good share of
    the background, more strongly at each severity; the output stays in [0, 1] and is fixed by the seed."""
    background = images == 0
    assert background.float().mean() > 0.7
    changed, strength = [], []
    for severity in SEVERITIES:
        out = corrupt(images, "shot_noise", severity, seed=4)
        assert out.min() >= 0 and out.max() <= 1
        assert torch.equal(out, corrupt(images.clone(), "shot_noise", severity, seed=4))
        assert not torch.equal(out, corrupt(images, "shot_noise", severity, seed=5))
        changed.append((out != images)[background].float().mean().item())
        strength.append((out - images).abs().mean().item())
    # the share changed is P(Poisson(b c) > b c): 26% to 45% for the table's (c, b)
    assert min(changed) > 0.2, changed
    assert all(later > earlier for earlier, later in zip(strength, strength[1:])), strength


def test_shot_noise_preserves_each_pixels_expected_value_before_clipping(images):
    """E[Poisson((x + b) c) / c - b] = x: the mean of 2,000 independent draws of each pixel of one digit-like image is
    within 5 standard errors, sqrt((x + b) / (c n)), of the pixel."""
    n = 2000
    image = images[:1]
    copies = image.expand(n, -1, -1, -1).contiguous()  # each copy gets its own draws
    for severity in SEVERITIES:
        c, b = PARAMETERS["shot_noise"][1][severity - 1]
        mean = _unclipped_shot_noise(copies, severity, seed=severity).mean(dim=0, keepdim=True)
        standard_error = ((image + b) / (c * n)).sqrt()
        assert ((mean - image).abs() <= 5 * standard_error).all(), severity
        assert (mean - image).abs().max() > 0  # they are draws, not the image itself


def test_gaussian_noise_has_the_table_std():
    gray = torch.full((64, 1, 28, 28), 0.5)
    sigma = PARAMETERS["gaussian_noise"][1][0]
    out = corrupt(gray, "gaussian_noise", 1)
    assert out.mean().item() == pytest.approx(0.5, abs=0.003)
    assert out.std().item() == pytest.approx(sigma, rel=0.03)


def test_dotted_line_only_adds_white_dots(images):
    lit = []
    for severity in SEVERITIES:
        out = corrupt(images, "dotted_line", severity)
        assert (out >= images).all()
        assert (out[out != images] == 1.0).all()
        lit.append((out == 1.0).sum().item())
    assert lit == sorted(lit) and lit[-1] > lit[0]


# --------------------------------------------------------------------------- bad input


def test_unknown_name_suggests_the_closest():
    with pytest.raises(VibbenchError, match=r"^unknown corruption 'rotate'\. Did you mean rotation\b.*\? Known: rotation, translation"):
        corrupt(_strokes(2), "rotate", 1)
    with pytest.raises(VibbenchError, match=r"^unknown corruption 'zzz'\. Known: "):
        corrupt(_strokes(2), "zzz", 1)
    with pytest.raises(VibbenchError, match="^unknown corruption None"):
        corrupt(_strokes(2), None, 1)
    with pytest.raises(VibbenchError, match="Did you mean shot_noise"):
        corrupt(_strokes(2), "Shot-Noise", 1)


@pytest.mark.parametrize("severity", [6, -1, 2.5, True, "3", None])
def test_bad_severity(severity):
    with pytest.raises(VibbenchError, match="Severity must be an integer from 1 to 5"):
        corrupt(_strokes(2), "rotation", severity)


def test_numpy_integer_severity_and_seed_are_accepted():
    np = pytest.importorskip("numpy")
    x = _strokes(2)
    assert torch.equal(corrupt(x, "rotation", np.int64(2), seed=np.int32(1)), corrupt(x, "rotation", 2, seed=1))
    with pytest.raises(VibbenchError, match="seed must be an integer"):
        corrupt(x, "rotation", 2, seed=1.5)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.zeros(4, 784), r"got \(4, 784\): reshape flat images with images.view\(-1, 1, 28, 28\)"),
        (torch.zeros(4, 28, 28), r"unsqueeze\(1\)"),
        (torch.zeros(4, 28, 28, 1), r"permute\(0, 3, 1, 2\)"),
        (torch.zeros(4, 3, 28, 28), "one grayscale channel"),
        (torch.zeros(4, 1, 28, 28, dtype=torch.uint8), r"images.float\(\) / 255"),
        (torch.full((4, 1, 28, 28), 255.0), r"values in \[0, 1\]; got min 255, max 255. Divide"),
        (torch.full((4, 1, 28, 28), -0.42), "corrupt BEFORE any mean/std normalization"),
        (torch.full((4, 1, 28, 28), float("nan")), "NaN or infinite"),
        ([[0.0]], "must be a torch.Tensor"),
    ],
)
def test_bad_images(bad, message):
    with pytest.raises(VibbenchError, match=message):
        corrupt(bad, "rotation", 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_matches_cpu(images, name):
    cpu = corrupt(images, name, 3, seed=5)
    gpu = corrupt(images.cuda(), name, 3, seed=5)
    assert gpu.device.type == "cuda"
    if name == "shot_noise" or name == "impulse_noise" or name == "translation" or name == "dotted_line":
        assert torch.equal(gpu.cpu(), cpu)  # the same random draws, no float arithmetic to differ
    else:
        assert torch.allclose(gpu.cpu(), cpu, atol=1e-4)
