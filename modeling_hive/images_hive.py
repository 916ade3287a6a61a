"""Images as HIVE's processor and pipelines take them: a PIL image, a path, a URL, base64 text, a dict holding one of
those, or an array or tensor in [0, 1] or [0, 255], channels first or last; each turned into one RGB PIL image (16-bit
and palette images converted, transparency flattened onto white), or refused with an error naming the input."""

import os

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from transformers.image_utils import load_image


IMAGE_SOURCE_KEYS = ("image", "url", "path", "base64")  # where a chat message's image block may hold its image
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def _float_to_uint8(array: np.ndarray, where: str) -> np.ndarray:
    if not np.isfinite(array).all():
        raise ValueError(f"{where}: the image holds NaN or infinite values.")
    low, high = float(array.min()), float(array.max())
    if low >= 0.0 and high <= 1.0:
        return np.round(array * 255.0).astype(np.uint8)
    if low >= 0.0 and high <= 255.0:
        return np.round(array).astype(np.uint8)
    raise ValueError(
        f"{where}: float image values must lie in [0, 1] or [0, 255], got the range [{low:g}, {high:g}]."
    )


def _to_uint8(array: np.ndarray, where: str) -> np.ndarray:
    """Bring one image array to uint8: floats in [0, 1] or [0, 255], 16-bit integers scaled by 1/257."""
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        return _float_to_uint8(array.astype(np.float64), where)
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0:
            raise ValueError(f"{where}: integer image values must not be negative, got a minimum of {low}.")
        if array.dtype == np.uint16 or high > 255:
            return np.round(np.clip(array, 0, 65535) / 257.0).astype(np.uint8)
        return array.astype(np.uint8)
    raise TypeError(f"{where}: unsupported image array dtype {array.dtype}.")


def _array_to_rgb(array: np.ndarray, channels_first: bool, where: str) -> PIL.Image.Image:
    """(H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4 -> RGB PIL image."""
    if array.ndim not in (2, 3):
        raise ValueError(
            f"{where}: expected one image of shape (H, W), (H, W, C) or (C, H, W), got shape {tuple(array.shape)}. "
            "Pass a batch as a list of images."
        )
    if array.size == 0:
        raise ValueError(f"{where}: the image is empty (shape {tuple(array.shape)}).")
    if array.ndim == 3:
        first, last = array.shape[0] in (1, 3, 4), array.shape[-1] in (1, 3, 4)
        if not (first or last):
            raise ValueError(
                f"{where}: cannot find the channel axis of shape {tuple(array.shape)}; it needs 1, 3 or 4 channels."
            )
        if first and (channels_first or not last):
            array = np.moveaxis(array, 0, -1)
        if array.shape[-1] == 1:
            array = array[..., 0]
    array = np.ascontiguousarray(_to_uint8(array, where))
    if array.ndim == 2:
        return PIL.Image.fromarray(array, mode="L").convert("RGB")
    if array.shape[-1] == 4:
        return _flatten_alpha(PIL.Image.fromarray(array, mode="RGBA"))
    return PIL.Image.fromarray(array, mode="RGB")


def _flatten_alpha(image: PIL.Image.Image) -> PIL.Image.Image:
    """Composite a transparent image over a white background."""
    image = image.convert("RGBA")
    background = PIL.Image.new("RGBA", image.size, (255, 255, 255, 255))
    return PIL.Image.alpha_composite(background, image).convert("RGB")


def _pil_to_rgb(image: PIL.Image.Image, where: str) -> PIL.Image.Image:
    if image.width == 0 or image.height == 0:
        raise ValueError(f"{where}: the image is empty ({image.width}x{image.height}).")
    if image.mode == "RGB":
        return image
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        return _flatten_alpha(image)
    if image.mode in _SIXTEEN_BIT_MODES:
        array = np.asarray(image).astype(np.int64)
        if array.min() < 0:
            raise ValueError(f"{where}: integer image values must not be negative, got a minimum of {array.min()}.")
        return _array_to_rgb(np.clip(array, 0, 65535).astype(np.uint16), channels_first=False, where=where)
    if image.mode == "F":
        return _array_to_rgb(np.asarray(image), channels_first=False, where=where)
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as error:
        raise ValueError(f"{where}: cannot convert an image of mode {image.mode!r} to RGB ({error}).") from error


def _open_image_file(path: str, where: str) -> PIL.Image.Image:
    if not os.path.isfile(path):
        raise ValueError(f"{where}: image file not found: {path!r}.")
    try:
        with PIL.Image.open(path) as opened:
            opened.load()
            return PIL.ImageOps.exif_transpose(opened)
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as error:
        raise ValueError(
            f"{where}: cannot read image file {path!r}; it is corrupt or not an image ({error})."
        ) from error


def load_rgb_image(image, where: str = "image") -> PIL.Image.Image:
    """
    Turn one image into an RGB PIL image.

    Args:
        image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, `str` or `os.PathLike`):
            A PIL image of any mode (RGBA, LA and transparent P are composited over white, 16-bit I;16/I are
            scaled by 1/257, CMYK/L/P/1 are converted), an array or tensor of shape (H, W), (H, W, C) or (C, H, W)
            (uint8, uint16, bool, or floats in [0, 1] or [0, 255]), a file path, or an http(s)/data URL.
        where (`str`, *optional*, defaults to `"image"`):
            Name of the input, used in error messages.

    Returns:
        `PIL.Image.Image` in mode RGB.

    Example:
        ```python
        >>> import numpy as np
        >>> load_rgb_image(np.zeros((3, 8, 8), dtype=np.float32)).size
        (8, 8)
        ```
    """
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if path.startswith(("http://", "https://", "data:image/")):
            try:
                image = load_image(path)
            except Exception as error:
                raise ValueError(f"{where}: cannot load the image at {path[:80]!r} ({error}).") from error
        else:
            image = _open_image_file(path, where)
    if isinstance(image, PIL.Image.Image):
        return _pil_to_rgb(image, where)
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.float()
        return _array_to_rgb(tensor.numpy(), channels_first=True, where=where)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, channels_first=False, where=where)
    raise TypeError(
        f"{where}: unsupported image type {type(image).__name__}. Pass a PIL image, a numpy array, a torch tensor "
        "or the path of an image file."
    )
