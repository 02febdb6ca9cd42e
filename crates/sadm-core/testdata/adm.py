"""ADM's `center_crop_arr` (guided_diffusion/image_datasets.py), as DiT's train.py uses it: the one copy that sadm's
reference scripts and its PyTorch benchmark import. Needs only Pillow and numpy."""
import numpy as np
from PIL import Image


def center_crop_arr(pil_image, image_size):
    """ADM's (guided_diffusion/image_datasets.py), as DiT uses it."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size])
