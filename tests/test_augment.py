"""Train-time augmentations: blur, brightness/contrast, JPEG, rotation probability, the
deepfake corruptions (noise, down-up, colour shift), RandAugment, cutout, config."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from torchvision import tv_tensors
from torchvision.transforms import v2

from deepfake_detect.config.loading import validate
from deepfake_detect.config.schema import AugmentConfig
from deepfake_detect.data.augment import (
    RandomBrightnessContrast,
    RandomColorShift,
    RandomCutout,
    RandomDownUp,
    RandomGaussianNoise,
    RandomKernelGaussianBlur,
    opencv_sigma,
)
from deepfake_detect.data.transforms import (
    _pixel_augmentations,
    build_clip_transform,
    build_transform,
)
from deepfake_detect.errors import ConfigError

torch.set_num_threads(1)
S = 32
PRE = {"input_size": S, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
NO_FLIP = {"hflip": 0.0}  # the default flip would make outputs differ for other reasons


def noise_image(size: int = S, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def checkerboard(size: int = S) -> torch.Tensor:
    idx = torch.arange(size)
    board = ((idx[:, None] + idx[None, :]) % 2 * 255).to(torch.uint8)
    return tv_tensors.Image(board.expand(3, size, size).clone())


def grey(value: int = 128, size: int = 16) -> torch.Tensor:
    return tv_tensors.Image(torch.full((3, size, size), value, dtype=torch.uint8))


def high_freq_energy(img: torch.Tensor) -> float:
    x = img.float()
    dx = (x[..., 1:] - x[..., :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return float(dx + dy)


def run(aug: AugmentConfig, im: Image.Image, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return build_transform(PRE, aug)(im)


def names(aug: AugmentConfig) -> list[str]:
    return [type(t).__name__ for t in build_transform(PRE, aug).transforms]


# -- blur --------------------------------------------------------------------------------


def test_blur_draws_odd_kernels_with_opencv_sigma():
    blur = RandomKernelGaussianBlur((3, 7))
    torch.manual_seed(0)
    drawn = [blur.make_params([]) for _ in range(60)]
    assert {p["kernel_size"] for p in drawn} == {3, 5, 7}
    for p in drawn:
        assert p["sigma"] == pytest.approx(0.3 * ((p["kernel_size"] - 1) * 0.5 - 1) + 0.8)
    assert opencv_sigma(3) == pytest.approx(0.8) and opencv_sigma(7) == pytest.approx(1.4)
    fixed = RandomKernelGaussianBlur((5, 5))
    assert {fixed.make_params([])["kernel_size"] for _ in range(5)} == {5}
    with pytest.raises(ValueError, match="odd"):
        RandomKernelGaussianBlur((4, 6))


def test_blur_reduces_high_frequency_energy_and_keeps_type():
    board = checkerboard()
    torch.manual_seed(0)
    out = RandomKernelGaussianBlur((3, 7))(board)
    assert isinstance(out, tv_tensors.Image) and out.dtype == torch.uint8
    assert out.shape == board.shape
    assert high_freq_energy(out) < 0.5 * high_freq_energy(board)
    mask = tv_tensors.Mask(torch.ones(S, S, dtype=torch.uint8))
    assert torch.equal(RandomKernelGaussianBlur()(mask), mask)  # masks carry no pixels to blur


def test_blur_in_pipeline_applies_at_1_and_not_at_0():
    im = noise_image()
    base = run(AugmentConfig(**NO_FLIP), im)
    assert not torch.equal(run(AugmentConfig(**NO_FLIP, blur=1.0), im), base)
    assert torch.equal(run(AugmentConfig(**NO_FLIP, blur=0.0, blur_kernel=(9, 11)), im), base)
    assert names(AugmentConfig(**NO_FLIP, blur=0.0)) == names(AugmentConfig(**NO_FLIP))


# -- brightness / contrast ---------------------------------------------------------------


def test_brightness_shift_stays_within_limit():
    limit = 0.1
    bc = RandomBrightnessContrast(brightness_limit=limit, contrast_limit=0.0)
    shifts = []
    for seed in range(8):
        torch.manual_seed(seed)
        out = bc(grey(128))
        assert out.dtype == torch.uint8 and isinstance(out, tv_tensors.Image)
        assert out.unique().numel() == 1  # additive: a flat image stays flat
        shifts.append(abs(out.float().mean().item() - 128))
    assert max(shifts) <= limit * 255 + 1
    assert max(shifts) > 3  # some draws move it noticeably
    assert len(set(shifts)) > 1  # a fresh draw per call


def test_contrast_scales_and_clamps():
    bc = RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=0.5)
    values = set()
    for seed in range(8):
        torch.manual_seed(seed)
        values.add(bc(grey(100)).unique().item())
    assert all(50 <= v <= 150 for v in values) and len(values) > 2
    white = RandomBrightnessContrast(brightness_limit=0.5, contrast_limit=0.5)
    for seed in range(4):
        torch.manual_seed(seed)
        out = white(grey(250))
        assert out.dtype == torch.uint8 and 0 <= int(out.min()) and int(out.max()) <= 255
    with pytest.raises(TypeError, match="ToImage"):
        bc(Image.new("RGB", (4, 4)))


def test_brightness_in_pipeline_applies_at_1_and_not_at_0():
    im = Image.new("RGB", (S, S), (128, 128, 128))
    base = run(AugmentConfig(**NO_FLIP), im)
    changed = [
        not torch.equal(run(AugmentConfig(**NO_FLIP, brightness=1.0), im, seed), base)
        for seed in (1, 2, 3)  # seed 0 happens to draw a shift under half a grey level
    ]
    assert all(changed)
    off = AugmentConfig(**NO_FLIP, brightness=0.0, brightness_limit=0.5, contrast_limit=0.5)
    assert torch.equal(run(off, im), base)


# -- JPEG --------------------------------------------------------------------------------


def test_jpeg_changes_noise_and_keeps_shape_and_dtype():
    im = noise_image()
    aug = AugmentConfig(**NO_FLIP, jpeg=1.0, jpeg_quality=(40, 40))
    tf = build_transform(PRE, aug)
    assert [type(t).__name__ for t in tf.transforms][2] == "JPEG"
    uint8 = tf.transforms[1](tf.transforms[0](im))  # ToImage, Resize
    jpeg = tf.transforms[2](uint8)
    assert jpeg.shape == uint8.shape == (3, S, S) and jpeg.dtype == torch.uint8
    assert (jpeg.int() - uint8.int()).abs().float().mean() > 5  # q=40 on noise is lossy
    out = run(aug, im)
    assert out.shape == (3, S, S) and out.dtype == torch.float32
    base = run(AugmentConfig(**NO_FLIP), im)
    assert not torch.equal(out, base)
    assert torch.equal(run(AugmentConfig(**NO_FLIP, jpeg=0.0), im), base)


# -- probabilities -----------------------------------------------------------------------


def test_rotation_probability_wraps_only_below_one():
    assert "RandomRotation" in names(AugmentConfig(rotation=10))  # default rotation_p = 1
    assert "RandomRotation" not in names(AugmentConfig(rotation=10, rotation_p=0.0))
    tf = build_transform(PRE, AugmentConfig(**NO_FLIP, rotation=30, rotation_p=0.5))
    wrapper = tf.transforms[2]
    assert isinstance(wrapper, v2.RandomApply) and wrapper.p == 0.5
    assert isinstance(wrapper.transforms[0], v2.RandomRotation)


def test_partial_probability_sometimes_applies():
    im = noise_image()
    base = run(AugmentConfig(**NO_FLIP), im)
    aug = AugmentConfig(**NO_FLIP, blur=0.5)
    applied = [not torch.equal(run(aug, im, seed), base) for seed in range(12)]
    assert any(applied) and not all(applied)
    assert applied == [not torch.equal(run(aug, im, seed), base) for seed in range(12)]  # seeded


# -- config ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("blur_kernel", (4, 7)),
        ("blur_kernel", (1, 3)),
        ("blur_kernel", (7, 3)),
        ("jpeg_quality", (0, 50)),
        ("jpeg_quality", (90, 40)),
        ("jpeg_quality", (40, 101)),
        ("brightness_limit", 1.0),
        ("contrast_limit", -0.1),
        ("rotation_p", 1.5),
        ("noise", 1.5),
        ("noise_std", (0.0, 0.05)),
        ("noise_std", (0.2, 0.1)),
        ("noise_std", (0.1, 1.5)),
        ("downup", -0.1),
        ("downup_scale", (0.0, 0.5)),
        ("downup_scale", (0.8, 0.5)),
        ("color_shift", 2.0),
        ("color_shift_limit", 256),
        ("color_shift_limit", -1),
        ("randaugment", -1),
        ("randaugment_magnitude", 31),
        ("cutout", 1.5),
        ("cutout_size", 0.0),
        ("cutout_size", 1.5),
    ],
)
def test_invalid_augment_values_name_the_key(key, value):
    with pytest.raises(ValidationError, match=key):
        AugmentConfig(**{key: value})
    with pytest.raises(ConfigError, match=f"data.augment.{key}"):
        validate(AugmentConfig, {key: value}, prefix="data.augment")


def test_defaults_keep_the_previous_pipeline():
    aug = AugmentConfig(hflip=1.0, rotation=10, color_jitter=(0.2, 0.2, 0.2, 0.05))
    assert (aug.rotation_p, aug.blur, aug.brightness, aug.jpeg) == (1.0, 0.0, 0.0, 0.0)
    assert names(aug) == [
        "ToImage", "Resize", "RandomHorizontalFlip", "RandomRotation", "ColorJitter",
        "ToDtype", "Normalize", "ToPureTensor",
    ]


def _step_names(tf) -> list[str]:
    """Class names of a pipeline's steps, looking inside RandomApply wrappers."""
    return [
        type(t.transforms[0]).__name__ if isinstance(t, v2.RandomApply) else type(t).__name__
        for t in tf.transforms
    ]


def test_full_pipeline_with_everything_on():
    aug = AugmentConfig(
        hflip=0.5, rotation=10, rotation_p=0.5, blur=0.5, blur_kernel=(3, 5), brightness=0.5,
        brightness_limit=0.2, contrast_limit=0.2, color_jitter=(0.2, 0.2, 0.2, 0.05), jpeg=0.5,
        jpeg_quality=(60, 95), random_erasing=0.5, scale=(0.6, 1.0),
    )
    tf = build_transform(PRE, aug)
    inner = _step_names(tf)
    assert inner == [
        "ToImage", "RandomResizedCrop", "RandomHorizontalFlip", "RandomRotation",
        "RandomKernelGaussianBlur", "RandomBrightnessContrast", "ColorJitter", "JPEG",
        "ToDtype", "Normalize", "RandomErasing", "ToPureTensor",
    ]
    im = noise_image(48)
    clone = pickle.loads(pickle.dumps(tf))  # spawned DataLoader workers pickle the transform
    for seed in range(4):
        torch.manual_seed(seed)
        out = tf(im)
        assert type(out) is torch.Tensor and out.shape == (3, S, S) and out.dtype == torch.float32
        assert torch.isfinite(out).all()
        torch.manual_seed(seed)
        assert torch.equal(clone(im), out)


# -- every transform: shape, dtype, range, clips ------------------------------------------

# One option at probability 1 per case, each giving exactly one uint8 step.
SINGLE_OPTIONS = {
    "hflip": {"hflip": 1.0},
    "rotation": {"rotation": 30},
    "blur": {"blur": 1.0},
    "brightness": {"brightness": 1.0, "brightness_limit": 0.3, "contrast_limit": 0.3},
    "color_jitter": {"color_jitter": (0.4, 0.4, 0.4, 0.1)},
    "jpeg": {"jpeg": 1.0, "jpeg_quality": (30, 60)},
    "color_shift": {"color_shift": 1.0, "color_shift_limit": 40},
    "randaugment": {"randaugment": 3, "randaugment_magnitude": 20},
    "noise": {"noise": 1.0, "noise_std": (0.05, 0.1)},
    "downup": {"downup": 1.0, "downup_scale": (0.25, 0.5)},
    "cutout": {"cutout": 1.0, "cutout_size": 0.4},
}
NEW_OPTIONS = ("color_shift", "randaugment", "noise", "downup", "cutout")
EVERYTHING = {
    "hflip": 0.5, "rotation": 10, "rotation_p": 0.5, "blur": 0.5, "brightness": 0.5,
    "brightness_limit": 0.2, "contrast_limit": 0.2, "color_jitter": (0.2, 0.2, 0.2, 0.05),
    "color_shift": 0.5, "randaugment": 2, "noise": 0.5, "downup": 0.5, "jpeg": 0.5,
    "jpeg_quality": (60, 95), "cutout": 0.5, "random_erasing": 0.5, "scale": (0.6, 1.0),
}


def random_uint8(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)


def single_step(option: str):
    steps = _pixel_augmentations(AugmentConfig(**{**NO_FLIP, **SINGLE_OPTIONS[option]}))
    assert len(steps) == 1  # unwrapped at p = 1: it always runs
    return steps[0]


@pytest.mark.parametrize("option", list(SINGLE_OPTIONS))
def test_every_transform_keeps_shape_dtype_and_range(option):
    step = single_step(option)
    image = tv_tensors.Image(random_uint8((3, 40, 28)))
    video = tv_tensors.Video(random_uint8((4, 3, 24, 24), seed=1))
    for seed in range(3):
        for inpt in (image, video):
            torch.manual_seed(seed)
            out = step(inpt)
            assert type(out) is type(inpt), option
            assert out.shape == inpt.shape and out.dtype == torch.uint8, option
            assert 0 <= int(out.min()) and int(out.max()) <= 255
    assert torch.equal(image, tv_tensors.Image(random_uint8((3, 40, 28))))  # input untouched


@pytest.mark.parametrize(
    "transform",
    [
        RandomGaussianNoise((0.2, 0.3)), RandomDownUp((0.2, 0.4)), RandomColorShift(80),
        RandomCutout(0.5),
    ],
    ids=lambda t: type(t).__name__,
)
def test_new_transforms_keep_float_images_in_unit_range(transform):
    img = torch.rand(3, 20, 20, generator=torch.Generator().manual_seed(0))
    img[0, :2] = 1.0  # extremes that noise or a shift would push out of range
    img[1, :2] = 0.0
    for seed in range(4):
        torch.manual_seed(seed)
        out = transform(tv_tensors.Image(img))
        assert out.dtype == torch.float32 and out.shape == img.shape
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    mask = tv_tensors.Mask(torch.ones(20, 20, dtype=torch.uint8))
    assert torch.equal(transform(tv_tensors.Image(img), mask)[1], mask)  # masks pass through


@pytest.mark.parametrize("option", NEW_OPTIONS)
def test_each_new_option_changes_the_image_at_1_and_not_at_0(option):
    im = noise_image()
    base = run(AugmentConfig(**NO_FLIP), im)
    assert not torch.equal(run(AugmentConfig(**NO_FLIP, **SINGLE_OPTIONS[option]), im), base)
    off = {k: (0 if k == option else v) for k, v in SINGLE_OPTIONS[option].items()}
    assert names(AugmentConfig(**NO_FLIP, **off)) == names(AugmentConfig(**NO_FLIP))
    assert torch.equal(run(AugmentConfig(**NO_FLIP, **off), im), base)


@pytest.mark.parametrize("option", list(SINGLE_OPTIONS))
def test_a_clip_of_identical_frames_gets_one_draw(option):
    step = single_step(option)
    frame = random_uint8((3, 24, 24), seed=2)
    video = tv_tensors.Video(frame.expand(5, 3, 24, 24).clone())
    for seed in range(3):
        torch.manual_seed(seed)
        out = step(video)
        assert all(torch.equal(out[t], out[0]) for t in range(1, 5)), option


def test_clip_transform_with_everything_on_is_the_same_in_every_frame():
    frames = [noise_image(40, seed=3)] * 4
    always = {k: 1.0 for k in ("noise", "downup", "cutout", "color_shift", "jpeg")}
    everything = AugmentConfig(**{**EVERYTHING, **always})
    transform = build_clip_transform(PRE, everything)
    plain = build_clip_transform(PRE)(frames)
    for seed in range(3):
        torch.manual_seed(seed)
        clip = transform(frames)
        assert clip.shape == (4, 3, S, S) and clip.dtype == torch.float32
        assert all(torch.equal(clip[t], clip[0]) for t in range(1, 4))
        assert not torch.equal(clip, plain)


def test_full_pipeline_order_and_determinism_with_every_option():
    aug = AugmentConfig(**EVERYTHING)
    tf = build_transform(PRE, aug)
    inner = _step_names(tf)
    assert inner == [
        "ToImage", "RandomResizedCrop", "RandomHorizontalFlip", "RandomRotation",
        "RandomKernelGaussianBlur", "RandomBrightnessContrast", "ColorJitter", "RandomColorShift",
        "RandAugment", "RandomGaussianNoise", "RandomDownUp", "JPEG", "RandomCutout",
        "ToDtype", "Normalize", "RandomErasing", "ToPureTensor",
    ]
    im = noise_image(48)
    clone = pickle.loads(pickle.dumps(tf))  # spawned DataLoader workers pickle the transform
    outs = []
    for seed in range(4):
        torch.manual_seed(seed)
        out = tf(im)
        assert type(out) is torch.Tensor and out.shape == (3, S, S) and out.dtype == torch.float32
        torch.manual_seed(seed)
        assert torch.equal(tf(im), out)  # same seed, same view
        torch.manual_seed(seed)
        assert torch.equal(clone(im), out)
        outs.append(out)
    assert all(not torch.equal(outs[0], o) for o in outs[1:])  # another seed, another view


# -- the new transforms' own behaviour ---------------------------------------------------


def test_noise_std_follows_its_range():
    grey_img = grey(128, size=64)
    for seed in range(4):
        torch.manual_seed(seed)
        out = RandomGaussianNoise((0.04, 0.04))(grey_img)
        std = (out.float() - 128).std().item()
        assert 0.035 * 255 < std < 0.045 * 255  # 0.04 of 255 is about 10 grey levels
    with pytest.raises(ValueError, match="std_range"):
        RandomGaussianNoise((0.0, 0.1))


def test_downup_smooths_detail_and_draws_modes_and_scales():
    board = checkerboard(32)
    smoothed = []
    modes, sizes = set(), set()
    t = RandomDownUp((0.25, 0.5))
    for seed in range(12):
        torch.manual_seed(seed)
        params = t.make_params([board])
        modes.add(params["interpolation"])
        sizes.add(params["small"][0])
        torch.manual_seed(seed)
        out = t(board)
        assert out.shape == board.shape
        smoothed.append(high_freq_energy(out) < 0.9 * high_freq_energy(board))
    assert len(modes) == 3 and min(sizes) >= 8 and max(sizes) <= 16
    assert all(smoothed)  # an alternating pattern never survives a 2x or more shrink


def test_color_shift_moves_channels_independently_within_limit():
    shifts = set()
    for seed in range(6):
        torch.manual_seed(seed)
        out = RandomColorShift(20)(grey(100))
        per_channel = [int(out[c].unique().item()) - 100 for c in range(3)]  # flat stays flat
        assert all(abs(d) <= 20 for d in per_channel)
        shifts.add(tuple(per_channel))
    assert len(shifts) == 6 and any(len(set(d)) > 1 for d in shifts)


def test_cutout_blacks_out_one_square_inside_the_image():
    img = grey(200, size=40)
    corners = set()
    for seed in range(6):
        torch.manual_seed(seed)
        out = RandomCutout(0.25)(img)
        ys, xs = torch.nonzero(out[0] == 0, as_tuple=True)
        assert len(ys) == 10 * 10 and int(ys.max() - ys.min()) == 9 == int(xs.max() - xs.min())
        assert torch.equal(out[1] == 0, out[0] == 0)  # all channels
        corners.add((int(ys.min()), int(xs.min())))
    assert len(corners) > 1
    assert int(img.min()) == 200  # the input is not written into


def test_randaugment_uses_the_configured_ops_and_magnitude():
    steps = _pixel_augmentations(AugmentConfig(**NO_FLIP, randaugment=3, randaugment_magnitude=12))
    assert isinstance(steps[0], v2.RandAugment)
    assert steps[0].num_ops == 3 and steps[0].magnitude == 12
    assert _pixel_augmentations(AugmentConfig(**NO_FLIP, randaugment=0)) == []
