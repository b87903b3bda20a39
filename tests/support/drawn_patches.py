"""Drawn training patches for model tests: dark discs on pink, in the CellViT export layout."""

import cv2
import numpy as np

from sthelar_platform.model.cellvit.data import PatchRecord
from sthelar_platform.tiling.patches import save_npz

PINK, HEMATOXYLIN = (230, 160, 220), (70, 40, 120)


def drawn_patches(tmp_path, n=4, size=128, seed=0):
    """Drawn patches: dark discs (class 1 small, class 2 large) on pink, in the CellViT export layout."""
    rng = np.random.default_rng(seed)
    (tmp_path / "images").mkdir(parents=True, exist_ok=True)
    (tmp_path / "labels").mkdir(exist_ok=True)
    records = []
    for i in range(n):
        img = np.full((size, size, 3), PINK, np.uint8)
        inst = np.zeros((size, size), np.int32)
        types = np.zeros((size, size), np.int32)
        k = 0
        for _ in range(6):
            x, y = (int(v) for v in rng.integers(14, size - 14, 2))
            if inst[y, x]:
                continue
            k += 1
            big = bool(rng.integers(2))
            r = 11 if big else 6
            cv2.circle(img, (x, y), r, HEMATOXYLIN, -1)
            cv2.circle(inst, (x, y), r, k, -1)
            cv2.circle(types, (x, y), r, 2 if big else 1, -1)
        cv2.imwrite(str(tmp_path / "images" / f"p{i}.png"), img[..., ::-1])
        save_npz(tmp_path / "labels" / f"p{i}.npz", {"inst_map": inst, "type_map": types}, 1)
        records.append(PatchRecord(tmp_path / "images" / f"p{i}.png", tmp_path / "labels" / f"p{i}.npz", 0))
    return records
