"""Reference implementations the library is tested and benchmarked against; not the library.

Each one computes, the slow and plain way upstream does, what a fast path of `k400ft` computes:

- `ClipAugment`: one augmented train clip with PIL and timm, upstream's `_aug_frame` +
  `spatial_sampling` (with `apply_same_draw`, RandAugment's one draw for all frames). The
  training path (`k400ft.augment`: the same draws as parameters, applied with torch ops in the
  workers or on the device) is tested against it (tests/test_augment.py) and benchmarked
  against it (benchmarks/train_data.py).
- `naive_test_view`: one test view decoded on its own, as upstream makes each view; the
  single-decode `video.TestDataset` is tested (tests/test_video.py) and benchmarked
  (benchmarks/data_throughput.py) against it.
- `upstream_resize`: upstream's `resize_clip` (`functional.py`), OpenCV's bilinear resize frame
  by frame: the test views' and the validation clip's resize are tested against it, byte for
  byte (tests/test_video.py), and compared with it on K400-like footage
  (benchmarks/view_pixels.py).

They live here and not in scripts/k400ft/ because no stage runs them: the library holds what a
run executes, and a reference kept beside it would read as a second way to do the same thing.
Tests import this module by name (pytest puts tests/ on the path); benchmarks add tests/ to
`sys.path` as they add scripts/.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from k400ft import augment
from k400ft.augment import random_resized_crop_box
from k400ft.decoders import open_video
from k400ft.video import normalize, test_crop_offsets, test_frame_indices, test_view_starts

# upstream run_class_finetuning.py: --remode pixel, --recount 1 (random erasing, timm's
# RandomErasing in `ClipAugment`); not recipe knobs in the paper.
ERASE_MODE = "pixel"
ERASE_COUNT = 1


def apply_same_draw(
    transform: Callable[[Image.Image], Image.Image], images: Sequence[Image.Image]
) -> list[Image.Image]:
    """Apply a random image transform to every frame with the SAME random draw.

    timm's RandAugment draws everything from Python's `random` (op probability, magnitude,
    sign) and numpy's global RNG (which ops); none of the draws depends on the pixels. So
    restoring both states before each frame gives every frame exactly the draw the first
    frame got, which is what upstream's clip-aware copy of the same code does (it applies
    each chosen op to the whole list). The RNG streams end where one image would leave them.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    out = []
    for number, image in enumerate(images):
        if number:
            random.setstate(py_state)
            np.random.set_state(np_state)
        out.append(transform(image))
    return out


class ClipAugment:
    """One augmented train clip from decoded frames: upstream `_aug_frame` + `spatial_sampling`,
    with PIL, as upstream computes it. The reference that the training path (`augment`: the
    same draws, applied with torch ops, in the workers or on the device) is tested and
    benchmarked against; not used for training.

    Order and random sources as upstream: RandAugment (numpy + random), crop box (random),
    flip (numpy), erasing (random + torch). We crop and resize on the 0..255 scale and
    normalise after; normalisation is per-channel affine and bilinear resizing is a convex
    combination, so this equals upstream's normalise-then-resize up to float rounding.
    Erasing is timm's RandomErasing on the clip viewed as one [3*T, S, S] image: one box for
    all frames and channels, per-pixel noise drawn for each; upstream's cube variant does the
    same with 100 tries for a fitting box where timm makes 10 (a box fails to fit with
    probability < 1%, so 10 tries all fail with probability < 1e-20).
    """

    def __init__(self, data_cfg: dict[str, Any]):
        # imported here: `import timm` loads all its models (seconds), and `naive_test_view`
        # does not need it
        from timm.data.auto_augment import rand_augment_transform
        from timm.data.random_erasing import RandomErasing

        aug = data_cfg["augment"]
        self.size = int(data_cfg["input_size"])
        self.scale = tuple(aug["scale"])
        self.ratio = tuple(aug["ratio"])
        self.hflip = float(aug["hflip"])
        self.mean = torch.tensor(data_cfg["mean"], dtype=torch.float32)
        self.std = torch.tensor(data_cfg["std"], dtype=torch.float32)
        self.rand_augment = rand_augment_transform(
            aug["rand_augment"], augment.rand_augment_hparams(self.size)
        )
        self.erase = None
        if aug["reprob"] > 0:
            self.erase = RandomErasing(
                aug["reprob"],
                mode=ERASE_MODE,
                max_count=ERASE_COUNT,
                num_splits=ERASE_COUNT,
                device="cpu",
            )

    def augment_colours(self, frames: np.ndarray) -> np.ndarray:
        """RandAugment with one draw for the whole clip: [T, H, W, 3] uint8 -> same shape."""
        images = apply_same_draw(self.rand_augment, [Image.fromarray(f) for f in frames])
        return np.stack([np.asarray(image) for image in images])

    def crop_flip_erase(self, frames: np.ndarray) -> torch.Tensor:
        """Random resized crop, flip, normalisation, erasing: [T, H, W, 3] uint8 -> [3, T, S, S]."""
        height, width = frames.shape[1:3]
        top, left, h, w = random_resized_crop_box(height, width, self.scale, self.ratio)
        crop = torch.from_numpy(frames[:, top : top + h, left : left + w]).permute(0, 3, 1, 2)
        crop = crop.to(torch.float32).contiguous(memory_format=torch.channels_last)
        x = F.interpolate(crop, size=(self.size, self.size), mode="bilinear", align_corners=False)
        if np.random.uniform() < self.hflip:
            x = x.flip(-1)
        x = normalize(x, self.mean, self.std)
        if self.erase is not None:
            # one box for the whole clip, fresh noise per frame: erase [C*T, S, S] as one image
            self.erase(x.view(-1, self.size, self.size))
        return x

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        return self.crop_flip_erase(self.augment_colours(frames))


def naive_test_view(
    path: str, data_cfg: dict[str, Any], segment: int, crop: int, num_segments: int, num_crops: int
) -> torch.Tensor:
    """ONE test view the way upstream makes it: open and decode the video for this view
    alone, resize, slice. The reference our single-decode `TestDataset` is tested and
    benchmarked against; [3, T, s, s] float32."""
    reader = open_video(path)
    frames = reader.get_batch(
        test_frame_indices(len(reader), data_cfg["num_frames"], data_cfg["sampling_rate"]).tolist()
    ).asnumpy()
    size, length = int(data_cfg["short_side_size"]), int(data_cfg["num_frames"])
    x = torch.from_numpy(upstream_resize(frames, size)).permute(0, 3, 1, 2)
    start = test_view_starts(x.shape[0], length, num_segments)[segment]
    top, left = test_crop_offsets(x.shape[2], x.shape[3], size, num_crops)[crop]
    x = x[start : start + length, :, top : top + size, left : left + size]
    return normalize(x, torch.tensor(data_cfg["mean"]), torch.tensor(data_cfg["std"]))


def upstream_resize(frames: np.ndarray, size: int) -> np.ndarray:
    """[T, H, W, 3] uint8 -> short side `size`, as upstream's `resize_clip(clip, size,
    "bilinear")` with its `get_resize_sizes`: nothing when the short side already is `size`,
    else the long side int(size * long / short) and `cv2.resize(img, (w, h),
    interpolation=cv2.INTER_LINEAR)` on each frame."""
    height, width = frames.shape[1:3]
    if (width <= height and width == size) or (height <= width and height == size):
        return frames
    if width < height:
        new_h, new_w = int(size * height / width), size
    else:
        new_h, new_w = size, int(size * width / height)
    return np.stack(
        [cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR) for frame in frames]
    )
