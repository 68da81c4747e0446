"""Image corruptions for distribution-shift evaluation, computed on the fly at 5 severities.

Each corruption turns a batch of clean grayscale test images (float in [0, 1], shape
``(N, 1, H, W)``; MNIST and Fashion-MNIST use 28x28) into corrupted ones, so that accuracy and
calibration (ECE) can be plotted against severity::

    from vibbench.data.corruptions import CORRUPTIONS, SEVERITIES, corrupt
    for name in CORRUPTIONS:
        for severity in SEVERITIES:
            shifted = corrupt(test_images, name, severity, seed=0)

Severity 0 is accepted and means "no corruption" (an unchanged copy of the input), so a
curve can start at the clean accuracy; `SEVERITIES` itself is ``(1, 2, 3, 4, 5)``.

Prior work, and where this module differs
------------------------------------------
* MNIST-C: N. Mu and J. Gilmer, "MNIST-C: A Robustness Benchmark for Computer Vision",
  ICML 2019 Workshop on Uncertainty and Robustness in Deep Learning, arXiv:1906.02337.
  15 corruptions (shot/impulse noise, glass/motion blur, shear, scale, rotate, brightness,
  translate, stripe, fog, spatter, dotted line, zigzag, canny edges), each released as a
  fixed, pre-computed copy of MNIST at ONE severity.
* ImageNet-C: D. Hendrycks and T. Dietterich, "Benchmarking Neural Network Robustness to
  Common Corruptions and Perturbations", ICLR 2019, arXiv:1903.12261. 15 corruptions at 5
  severities each; the noise and brightness tables below follow its values (contrast is
  ImageNet-C's (.4, .3, .2, .1, .05) made one step milder, as MNIST is already dark; shot
  noise keeps ImageNet-C's photon counts c and adds a background level b, see below).

Here, unlike MNIST-C, every corruption has 5 severities of increasing strength, and the
corrupted images are computed on the fly from whatever test set is given (MNIST or
Fashion-MNIST), in torch, vectorized over the batch, deterministic given a seed. The
parameters are our own (scaled to 28x28 images; see `PARAMETERS`), and the implementations are
not those of MNIST-C (no skimage/Wand/OpenCV), so numbers are NOT comparable with published
MNIST-C or ImageNet-C results. Not included from MNIST-C: stripe, spatter, zigzag, canny edges;
added: gaussian_noise, gaussian_blur and contrast (from ImageNet-C).

The corruptions and their parameters (severity 1..5)
----------------------------------------------------
===============  ==============================================  =====================================
name             parameter (unit)                                values for severities 1..5
===============  ==============================================  =====================================
rotation         angle, degrees; random sign per image            10, 20, 30, 45, 60
translation      shift per axis, pixels; random sign per axis      1, 2, 3, 4, 5
scale            shrink factor about the centre (anti-aliased)     0.9, 0.8, 0.7, 0.6, 0.5
shear            horizontal shear x += m*y; random sign per image  0.1, 0.2, 0.3, 0.45, 0.6
shot_noise       (photons c, background b): see shot noise below   (60,.2) (25,.2) (12,.2) (5,.2) (3,.2)
impulse_noise    salt-and-pepper probability p per pixel           0.03, 0.06, 0.09, 0.17, 0.27
gaussian_noise   additive noise std sigma                         0.08, 0.12, 0.18, 0.26, 0.38
gaussian_blur    blur std sigma, pixels                           0.5, 0.8, 1.1, 1.5, 2.0
motion_blur      line-kernel length, pixels; random angle/image    3, 5, 7, 9, 11
glass_blur       (max displacement d pixels, blur sigma pixels)    (1,.5) (1,.7) (2,.7) (2,.9) (3,1)
brightness       added offset c: x' = x + c                        0.1, 0.2, 0.3, 0.4, 0.5
contrast         factor c: x' = mean + c*(x - mean), per image     0.5, 0.4, 0.3, 0.2, 0.1
fog              haze weight a: x' = (1-a)*x + a*haze              0.2, 0.35, 0.5, 0.65, 0.8
dotted_line      number of random dotted lines (value 1)           1, 2, 3, 4, 5
===============  ==============================================  =====================================

Shot noise is photon noise on the image seen over a background (dark) level b: with c photons
per unit of intensity, a pixel of intensity x collects Poisson((x + b) c) photons and reads
x' = Poisson((x + b) c) / c - b, clipped to [0, 1]. Before clipping E[x'] = x and
Var[x'] = (x + b) / c. Without b (ImageNet-C's Poisson(c x) / c) a pixel at exactly 0 stays 0,
so MNIST's black background (about 80% of its pixels) never changed and even severity 5 cost a
small MLP about 1.5 points of accuracy. The severities keep ImageNet-C's c = 60, 25, 12, 5, 3
(shorter and shorter exposures) with one background level b = 0.2 of full scale: noise of
standard deviation sqrt(0.2 / c) = 0.06 ... 0.26 on the background (of which clipping keeps the
positive half: 26% to 45% of background pixels change), sqrt(1.2 / c) = 0.14 ... 0.63 on the
strokes. On MNIST that is mild at severity 1 and strong at 5: a 784-512-512-10 MLP trained for
two epochs (96.4% on the first 5,000 test images, seed 0) keeps 95.6, 94.7, 91.3, 77.3 and
59.4% at severities 1..5 (gaussian_noise: 95.5, 93.8, 85.9, 69.9, 51.7%); the mean absolute
change per pixel is 0.032, 0.048, 0.069, 0.099, 0.136 (gaussian_noise: 0.035 ... 0.160).

Details: geometric corruptions use ``affine_grid`` + ``grid_sample`` (bilinear, zero padding,
``align_corners=False``, about the image centre, x to the right and y down, positive angles
turn the content counter-clockwise on screen), except translation, whose shifts are whole
pixels and are done by exact integer indexing (what bilinear sampling would give, without
float round-off). Blurs are convolutions with normalized kernels and zero padding (so mass is
conserved away from the border): the separable Gaussian (radius ceil(3 sigma)) is computed as
the matrix product B_h X B_w^T, which equals the zero-padded ``conv2d`` and is ~10x faster on
CPU; motion blur is one grouped ``conv2d`` with an anti-aliased line segment centred on the
pixel, at a random angle per image; glass blur displaces every pixel by
a random whole-pixel offset in [-d, d]^2 (a gather, not ImageNet-C's swaps), between two blurs.
Fog blends toward a smooth random haze (two octaves of bilinearly upsampled uniform noise,
rescaled to [0, 1] per image) rather than ImageNet-C's plasma fractal. Every output is clipped
to [0, 1] and has the input's shape and dtype.

Randomness
----------
Random draws come from CPU ``torch.Generator`` s, one per block of `BLOCK` (1024) consecutive
images, each seeded from ``(seed, corruption name, block index)`` by SHA-256; every draw is
made for a full block, so the draws for a block never depend on how many images it holds.
(Images are processed `CHUNK_BLOCKS` blocks at a time to bound memory; the chunk size does
not change the result.) Hence:

* the same ``(images, name, severity, seed)`` gives bit-identical output (on a given device);
* different corruptions never share noise;
* results do not depend on how big the batch is beyond the images it contains:
  ``corrupt(x, ...)[:m]`` equals ``corrupt(x[:m], ...)`` (prefix stability) - but the
  corruption of image i does depend on its position i in the batch;
* the severity is NOT part of the seed: all severities of a corruption share their random
  numbers ("common random numbers"). An image turns the same way at every severity of
  rotation, the pixels hit by impulse noise at severity k are a subset of those at k+1, and so
  on; only the strength changes, which makes curves against severity smoother.
  (Shot noise is the exception: Poisson draws at different rates are not coupled.)
* random numbers are drawn on the CPU even for GPU input, so the noise is the same on any device.
"""

from __future__ import annotations

import hashlib
import math
import operator
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from vibbench.core.errors import VibbenchError, unknown_name_message

__all__ = [
    "BLOCK",
    "CHUNK_BLOCKS",
    "CORRUPTIONS",
    "PARAMETERS",
    "RANDOMIZED",
    "SEVERITIES",
    "affine_warp",
    "corrupt",
    "gaussian_kernel1d",
    "rotate",
    "translate",
]

SEVERITIES = (1, 2, 3, 4, 5)
BLOCK = 1024  # images per random-number block (part of the reproducibility contract: keep it)
CHUNK_BLOCKS = 4  # blocks processed at once: 4096 images, tens of MB of temporaries at most

# name -> (parameter, with unit, values for severities 1..5). The functions read their values here.
PARAMETERS: dict[str, tuple[str, tuple]] = {
    "rotation": ("angle, degrees (random sign per image)", (10.0, 20.0, 30.0, 45.0, 60.0)),
    "translation": ("shift per axis, pixels (random sign per axis and image)", (1, 2, 3, 4, 5)),
    "scale": ("shrink factor about the centre, anti-aliased", (0.9, 0.8, 0.7, 0.6, 0.5)),
    "shear": ("horizontal shear m in x += m*y (random sign per image)", (0.1, 0.2, 0.3, 0.45, 0.6)),
    "shot_noise": (
        "(photons per unit intensity c; background level b), x' = Poisson((x+b)*c)/c - b",
        ((60.0, 0.2), (25.0, 0.2), (12.0, 0.2), (5.0, 0.2), (3.0, 0.2)),
    ),
    "impulse_noise": ("salt-and-pepper probability p per pixel", (0.03, 0.06, 0.09, 0.17, 0.27)),
    "gaussian_noise": ("additive Gaussian noise std sigma", (0.08, 0.12, 0.18, 0.26, 0.38)),
    "gaussian_blur": ("Gaussian blur std sigma, pixels", (0.5, 0.8, 1.1, 1.5, 2.0)),
    "motion_blur": ("line-kernel length, pixels (random angle per image)", (3, 5, 7, 9, 11)),
    "glass_blur": (
        "(max displacement d, pixels; blur sigma, pixels)",
        ((1, 0.5), (1, 0.7), (2, 0.7), (2, 0.9), (3, 1.0)),
    ),
    "brightness": ("added offset c, x' = x + c", (0.1, 0.2, 0.3, 0.4, 0.5)),
    "contrast": ("factor c, x' = mean + c*(x - mean) per image", (0.5, 0.4, 0.3, 0.2, 0.1)),
    "fog": ("haze weight a, x' = (1-a)*x + a*haze", (0.2, 0.35, 0.5, 0.65, 0.8)),
    "dotted_line": ("number of random dotted lines, value 1", (1, 2, 3, 4, 5)),
}

_SEED_TAG = "vibbench.corruptions.v1"  # a constant of the noise streams (not the module path): changing it changes every corruption


def _param(name: str, severity: int):
    return PARAMETERS[name][1][severity - 1]


# --------------------------------------------------------------------------- random draws


def _generator(seed: int, name: str, block: int) -> torch.Generator:
    digest = hashlib.sha256(f"{_SEED_TAG}|{seed}|{name}|{block}".encode()).digest()
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return generator


Generators = torch.Generator | Sequence[torch.Generator]  # one, or one per block of BLOCK images


def _generators(generator) -> list[torch.Generator]:
    return [generator] if isinstance(generator, torch.Generator) else list(generator)


def _uniform(generator: Generators, images: torch.Tensor, *shape: int) -> torch.Tensor:
    """Uniform [0, 1) draws of shape (n, *shape) for the n images given.

    ``generator`` is one generator, or one per block of `BLOCK` images (block b covers images
    b*BLOCK ... b*BLOCK + BLOCK - 1). Every generator draws for a full block (a single one for
    max(n, BLOCK) images) and the first n rows are kept, so that each generator's state after
    the call does not depend on n (prefix stability with several draws per block).
    """
    gens = _generators(generator)
    n = images.shape[0]
    if len(gens) == 1:
        draws = torch.rand((max(n, BLOCK), *shape), generator=gens[0], dtype=torch.float32)
    else:
        if n > len(gens) * BLOCK:
            raise ValueError(f"{len(gens)} generators cover {len(gens) * BLOCK} images, not {n}")
        draws = torch.cat([torch.rand((BLOCK, *shape), generator=g, dtype=torch.float32) for g in gens])
    return draws[:n].to(device=images.device, dtype=images.dtype)


def _signs(generator: Generators, images: torch.Tensor, *shape: int) -> torch.Tensor:
    return torch.where(_uniform(generator, images, *shape) < 0.5, -1.0, 1.0).to(images.dtype)


def _standard_normal(generator: Generators, images: torch.Tensor, *shape: int) -> torch.Tensor:
    # Box-Muller from uniforms (torch.randn is not prefix-stable across sizes on CPU).
    u1 = 1.0 - _uniform(generator, images, *shape)  # in (0, 1]
    u2 = _uniform(generator, images, *shape)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)


# --------------------------------------------------------------------------- building blocks


def affine_warp(images: torch.Tensor, matrix: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
    """Move each image's content by ``p -> matrix @ (p - c) + c + shift`` (bilinear, zero padding).

    ``p`` is a pixel position (x to the right, y down, in pixels), ``c`` the image centre,
    ``matrix`` has shape (N, 2, 2) and ``shift`` (N, 2) in pixels. Vectorized over the batch.
    """
    n, _, h, w = images.shape
    matrix = matrix.to(device=images.device, dtype=images.dtype)
    inv = torch.linalg.inv(matrix)  # output position -> input position
    theta = torch.empty(n, 2, 3, device=images.device, dtype=images.dtype)
    # normalized coordinates (align_corners=False): u = 2 (x - c_x) / w, v = 2 (y - c_y) / h
    theta[:, 0, 0] = inv[:, 0, 0]
    theta[:, 0, 1] = inv[:, 0, 1] * (h / w)
    theta[:, 1, 0] = inv[:, 1, 0] * (w / h)
    theta[:, 1, 1] = inv[:, 1, 1]
    if shift is None:
        theta[:, :, 2] = 0.0
    else:
        back = -(inv @ shift.to(device=images.device, dtype=images.dtype).unsqueeze(-1)).squeeze(-1)
        theta[:, 0, 2] = back[:, 0] * (2.0 / w)
        theta[:, 1, 2] = back[:, 1] * (2.0 / h)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image about its centre by ``degrees[i]``, counter-clockwise on screen."""
    rad = torch.deg2rad(degrees.to(device=images.device, dtype=images.dtype))
    cos, sin = torch.cos(rad), torch.sin(rad)
    # y points down, so a counter-clockwise turn on screen is [[cos, sin], [-sin, cos]].
    matrix = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
    return affine_warp(images, matrix)


def translate(images: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Shift each image's content by whole pixels: ``dx[i]`` to the right, ``dy[i]`` down.

    Pixels shifted in from outside are 0. Exact: equals ``torch.roll`` when the border the
    content wraps around is zero.
    """
    n, c, h, w = images.shape
    device = images.device
    dx = dx.to(device=device, dtype=torch.long).view(n, 1)
    dy = dy.to(device=device, dtype=torch.long).view(n, 1)
    rows = torch.arange(h, device=device).view(1, h) - dy  # source row of each output row
    cols = torch.arange(w, device=device).view(1, w) - dx
    valid = ((rows >= 0) & (rows < h)).view(n, 1, h, 1) & ((cols >= 0) & (cols < w)).view(n, 1, 1, w)
    batch = torch.arange(n, device=device).view(n, 1, 1, 1)
    channel = torch.arange(c, device=device).view(1, c, 1, 1)
    gathered = images[batch, channel, rows.clamp(0, h - 1).view(n, 1, h, 1), cols.clamp(0, w - 1).view(n, 1, 1, w)]
    return torch.where(valid, gathered, torch.zeros((), dtype=images.dtype, device=device))


def gaussian_kernel1d(sigma: float, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Normalized 1-D Gaussian kernel of radius ceil(3 sigma)."""
    radius = max(1, math.ceil(3.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype=dtype, device=device)


def _blur_matrix(size: int, sigma: float, dtype: torch.dtype, device) -> torch.Tensor:
    """(size, size) matrix B with (B @ v)[i] = sum_j kernel[j - i + r] v[j]: 1-D zero-padded convolution."""
    kernel = gaussian_kernel1d(sigma, torch.float64)
    r = kernel.numel() // 2
    idx = torch.arange(size)
    offset = idx.view(1, -1) - idx.view(-1, 1) + r  # j - i + r
    inside = (offset >= 0) & (offset < kernel.numel())
    matrix = torch.where(inside, kernel[offset.clamp(0, kernel.numel() - 1)], torch.zeros((), dtype=torch.float64))
    return matrix.to(dtype=dtype, device=device)


def _gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with zero padding (a conv2d with a normalized kernel), as B_h X B_w^T."""
    if sigma <= 0:
        return images
    h, w = images.shape[-2:]
    rows = _blur_matrix(h, sigma, images.dtype, images.device)
    cols = _blur_matrix(w, sigma, images.dtype, images.device)
    return rows @ images @ cols.T


def _per_image_conv(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Convolve image i with kernels[i] (shape (N, K, K), K odd), zero padding (as conv2d does).

    Written as K*K shifted multiply-adds in a fixed order rather than one grouped conv2d:
    the grouped convolution's kernel is chosen by the number of groups (and the CPU), so its
    rounding depended on how many images were in the batch, and a prefix of a batch did not
    get exactly the pixels it gets on its own. Elementwise products and sums do not.
    """
    n, c, h, w = images.shape
    k = kernels.shape[-1]
    r = k // 2
    padded = F.pad(images, (r, r, r, r))
    weights = kernels.to(dtype=images.dtype, device=images.device).view(n, 1, k, k)
    out = torch.zeros_like(images)
    for i in range(k):
        for j in range(k):
            out = out + weights[:, :, i : i + 1, j : j + 1] * padded[:, :, i : i + h, j : j + w]
    return out


# --------------------------------------------------------------------------- the corruptions
# Each takes (images (n, 1, H, W) float32/64 in [0, 1], severity 1..5, generator) and returns
# the corrupted images, not yet clipped (`corrupt` clips). `generator` is one torch.Generator
# (for n <= BLOCK images) or a sequence of them, one per block of BLOCK images.


def _rotation(images, severity, generator):
    degrees = _param("rotation", severity) * _signs(generator, images)
    return rotate(images, degrees)


def _translation(images, severity, generator):
    k = _param("translation", severity)
    signs = _signs(generator, images, 2)
    return translate(images, k * signs[:, 0], k * signs[:, 1])


def _scale(images, severity, generator):
    s = _param("scale", severity)
    # anti-aliasing before subsampling, as skimage.transform.rescale does: sigma = (1/s - 1) / 2
    blurred = _gaussian_blur(images, (1.0 / s - 1.0) / 2.0)
    matrix = (s * torch.eye(2, dtype=images.dtype, device=images.device)).expand(images.shape[0], 2, 2)
    return affine_warp(blurred, matrix)


def _shear(images, severity, generator):
    m = _param("shear", severity) * _signs(generator, images)
    matrix = torch.zeros(images.shape[0], 2, 2, dtype=images.dtype, device=images.device)
    matrix[:, 0, 0] = 1.0
    matrix[:, 0, 1] = m
    matrix[:, 1, 1] = 1.0
    return affine_warp(images, matrix)


def _shot_noise(images, severity, generator):
    # photon noise over a background level b: unbiased before clipping, and it reaches a black background
    c, b = _param("shot_noise", severity)
    rates = ((images + b) * c).to(device="cpu", dtype=torch.float32)
    gens = _generators(generator)
    # One draw per block: torch.poisson is a serial CPU kernel, so prefixes are stable.
    if len(gens) == 1:
        counts = torch.poisson(rates, generator=gens[0])
    else:
        parts = [rates[b * BLOCK : (b + 1) * BLOCK] for b in range(len(gens))]
        counts = torch.cat([torch.poisson(part, generator=g) for part, g in zip(parts, gens) if len(part)])
    return counts.to(device=images.device, dtype=images.dtype) / c - b


def _impulse_noise(images, severity, generator):
    p = _param("impulse_noise", severity)
    hit = _uniform(generator, images, *images.shape[1:]) < p
    salt = _uniform(generator, images, *images.shape[1:]) < 0.5
    return torch.where(hit, salt.to(images.dtype), images)


def _gaussian_noise(images, severity, generator):
    sigma = _param("gaussian_noise", severity)
    return images + sigma * _standard_normal(generator, images, *images.shape[1:])


def _gaussian_blur_corruption(images, severity, generator):
    return _gaussian_blur(images, _param("gaussian_blur", severity))


_MOTION_RADIUS = (max(PARAMETERS["motion_blur"][1]) + 1) // 2  # kernel 13x13 for length 11


def _motion_blur(images, severity, generator):
    length = float(_param("motion_blur", severity))
    theta = math.pi * _uniform(generator, images)  # direction in [0, 180) degrees
    r = _MOTION_RADIUS
    offsets = torch.arange(-r, r + 1, dtype=images.dtype, device=images.device)
    ky, kx = torch.meshgrid(offsets, offsets, indexing="ij")  # (K, K)
    cos, sin = torch.cos(theta).view(-1, 1, 1), torch.sin(theta).view(-1, 1, 1)
    along = kx * cos + ky * sin
    across = (-kx * sin + ky * cos).abs()
    half = (length - 1.0) / 2.0
    # distance from each kernel cell to the segment [-half, half] along the direction
    dist = torch.sqrt(across**2 + (along.abs() - half).clamp(min=0.0) ** 2)
    kernels = (1.0 - dist).clamp(min=0.0)  # anti-aliased 1-pixel-wide line
    kernels = kernels / kernels.sum(dim=(-2, -1), keepdim=True)
    return _per_image_conv(images, kernels)


def _glass_blur(images, severity, generator):
    d, sigma = _param("glass_blur", severity)
    n, c, h, w = images.shape
    u = _uniform(generator, images, 2, h, w)
    # the same uniforms at every severity; whole-pixel offsets in [-d, d]
    offset = (u * (2 * d + 1)).floor().clamp(max=2 * d) - d
    rows = (torch.arange(h, device=images.device).view(1, h, 1) + offset[:, 1].long()).clamp_(0, h - 1)
    cols = (torch.arange(w, device=images.device).view(1, 1, w) + offset[:, 0].long()).clamp_(0, w - 1)
    source = (rows * w + cols).view(n, 1, h * w).expand(n, c, h * w)  # flat index of each source pixel
    # blur, displace, blur (ImageNet-C's order): displacing a smooth image scatters less
    blurred = _gaussian_blur(images, sigma)
    displaced = blurred.reshape(n, c, h * w).gather(2, source).view(n, c, h, w)
    return _gaussian_blur(displaced, sigma)


def _brightness(images, severity, generator):
    return images + _param("brightness", severity)


def _contrast(images, severity, generator):
    c = _param("contrast", severity)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return mean + c * (images - mean)


def _fog(images, severity, generator):
    a = _param("fog", severity)
    n, _, h, w = images.shape
    coarse = F.interpolate(_uniform(generator, images, 1, 3, 3), size=(h, w), mode="bilinear", align_corners=True)
    fine = F.interpolate(_uniform(generator, images, 1, 6, 6), size=(h, w), mode="bilinear", align_corners=True)
    haze = coarse + 0.5 * fine
    low = haze.amin(dim=(1, 2, 3), keepdim=True)
    high = haze.amax(dim=(1, 2, 3), keepdim=True)
    haze = (haze - low) / (high - low).clamp(min=1e-6)
    return (1.0 - a) * images + a * haze


_MAX_LINES = max(PARAMETERS["dotted_line"][1])
_DOT_PERIOD = 4.0  # pixels: 2 on, 2 off
_LINE_HALF_WIDTH = 0.6  # pixels


def _dotted_line(images, severity, generator):
    k = _param("dotted_line", severity)
    n, _, h, w = images.shape
    # always draw _MAX_LINES lines and keep the first k: severity k+1 adds a line to severity k
    u = _uniform(generator, images, _MAX_LINES, 4)[:, :k]  # (n, k, 4)
    x0 = (w - 1) / 2.0 + (u[..., 0] - 0.5) * (w / 2.0)  # a point in the central half
    y0 = (h - 1) / 2.0 + (u[..., 1] - 0.5) * (h / 2.0)
    theta = math.pi * u[..., 2]
    phase = u[..., 3]
    ys = torch.arange(h, dtype=images.dtype, device=images.device).view(1, h, 1)
    xs = torch.arange(w, dtype=images.dtype, device=images.device).view(1, 1, w)
    lines = torch.zeros(n, h, w, dtype=torch.bool, device=images.device)
    for i in range(k):  # one line at a time keeps the temporaries at (n, h, w)
        dx = xs - x0[:, i, None, None]  # (n, 1, w)
        dy = ys - y0[:, i, None, None]  # (n, h, 1)
        cos, sin = torch.cos(theta[:, i, None, None]), torch.sin(theta[:, i, None, None])
        near = (dx * sin - dy * cos).abs_() <= _LINE_HALF_WIDTH  # distance to the line
        position = (dx * cos / _DOT_PERIOD + phase[:, i, None, None] + 1000.0) + dy * sin / _DOT_PERIOD
        lines |= near & (torch.frac(position) < 0.5)  # dots: on for half of each period
    lines = lines.unsqueeze(1).to(images.dtype)
    return torch.maximum(images, lines)


CORRUPTIONS: dict[str, Callable[[torch.Tensor, int, Generators], torch.Tensor]] = {
    "rotation": _rotation,
    "translation": _translation,
    "scale": _scale,
    "shear": _shear,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "gaussian_noise": _gaussian_noise,
    "gaussian_blur": _gaussian_blur_corruption,
    "motion_blur": _motion_blur,
    "glass_blur": _glass_blur,
    "brightness": _brightness,
    "contrast": _contrast,
    "fog": _fog,
    "dotted_line": _dotted_line,
}
assert CORRUPTIONS.keys() == PARAMETERS.keys()

# Corruptions whose output depends on the seed (the others are deterministic functions).
RANDOMIZED = frozenset(CORRUPTIONS) - {"scale", "gaussian_blur", "brightness", "contrast"}


# --------------------------------------------------------------------------- entry point


def _check_name(name) -> None:
    if isinstance(name, str) and name in CORRUPTIONS:
        return
    raise VibbenchError(unknown_name_message("corruption", name, tuple(CORRUPTIONS)))


def _check_severity(severity) -> int:
    value = None
    if not isinstance(severity, bool):  # True/False are not severities
        try:
            value = operator.index(severity)
        except TypeError:
            value = None
    if value is None or not 0 <= value <= max(SEVERITIES):
        raise VibbenchError(
            f"Severity must be an integer from 1 to {max(SEVERITIES)} (or 0 for the clean images); "
            f"got {severity!r}."
        )
    return value


def _check_images(images) -> None:
    if not isinstance(images, torch.Tensor):
        raise VibbenchError(
            f"images must be a torch.Tensor of shape (N, 1, H, W) with values in [0, 1]; got "
            f"{type(images).__name__}. Convert with torch.as_tensor(...), e.g. "
            "torch.from_numpy(array).float().div(255).view(-1, 1, 28, 28) for uint8 pixels."
        )
    if not images.is_floating_point():
        raise VibbenchError(
            f"images must be floating point with values in [0, 1]; got dtype {images.dtype}. "
            "For uint8 pixels use images.float() / 255."
        )
    shape = tuple(images.shape)
    if images.dim() != 4 or shape[1] != 1:
        if images.dim() == 2 and math.isqrt(shape[1]) ** 2 == shape[1] and shape[1] > 0:
            side = math.isqrt(shape[1])
            fix = f"reshape flat images with images.view(-1, 1, {side}, {side})"
        elif images.dim() == 3:
            fix = "add the channel dimension with images.unsqueeze(1)"
        elif images.dim() == 4 and shape[-1] == 1 and shape[1] != 1:
            fix = "move channels first with images.permute(0, 3, 1, 2)"
        elif images.dim() == 4:
            fix = "convert to one grayscale channel first (e.g. images.mean(dim=1, keepdim=True))"
        else:
            fix = "pass a batch of grayscale images"
        raise VibbenchError(f"images must have shape (N, 1, H, W) (one grayscale channel); got {shape}: {fix}.")
    if images.numel() == 0:
        return
    low, high = images.aminmax()
    if not (torch.isfinite(low) and torch.isfinite(high)) or bool(torch.isnan(images).any()):
        raise VibbenchError("images contain NaN or infinite values; corrupt the clean test images (values in [0, 1]).")
    if low < 0 or high > 1:
        raise VibbenchError(
            f"images must have values in [0, 1]; got min {low.item():.4g}, max {high.item():.4g}. "
            "Divide uint8-range pixels by 255, and corrupt BEFORE any mean/std normalization."
        )


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """Return a corrupted copy of ``images`` (N, 1, H, W) in [0, 1]: same shape, dtype, device.

    ``name`` is one of `CORRUPTIONS`; ``severity`` is 1..5 (0 returns an unchanged copy);
    ``seed`` picks the random draws (the same arguments always give the same output).
    Raises `VibbenchError` for an unknown name, a bad severity or bad images.
    """
    _check_name(name)
    severity = _check_severity(severity)
    try:
        seed = operator.index(seed)
    except TypeError:
        raise VibbenchError(f"seed must be an integer; got {seed!r}.") from None
    _check_images(images)
    if severity == 0 or images.shape[0] == 0:
        return images.clone()
    work_dtype = images.dtype if images.dtype in (torch.float32, torch.float64) else torch.float32
    function = CORRUPTIONS[name]
    out = torch.empty(images.shape, dtype=images.dtype, device=images.device)  # contiguous
    with torch.no_grad():
        chunk_size = BLOCK * CHUNK_BLOCKS
        for start in range(0, images.shape[0], chunk_size):
            chunk = images[start : start + chunk_size].to(work_dtype).contiguous()  # layout-independent
            first = start // BLOCK
            gens = [_generator(seed, name, first + b) for b in range(-(-chunk.shape[0] // BLOCK))]
            result = function(chunk, severity, gens)
            result = torch.nan_to_num(result, nan=0.0).clamp_(0.0, 1.0)
            out[start : start + chunk_size] = result.to(images.dtype)
    return out
