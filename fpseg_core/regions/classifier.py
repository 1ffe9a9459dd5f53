"""RegionClassifier: RoofSAM's region classification with point prompts, on SAM / MobileSAM embeddings.

K points are sampled inside each region (see `sampling`), given to SAM's prompt encoder as positive point
prompts, and the class decoder turns each point into class logits; the region's class is the majority vote
of its points. The image is encoded once for any number of regions, and an embedding the FPSeg pipeline
already computed can be passed in (`classify(regions=..., embedding=emb, geometry=geom)`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage
from torch import nn

from ..constants import INPUT_MODES, InputMode, require_choice
from ..preprocess import ColorOrder, Geometry, preprocess, to_rgb
from .loader import (
    decoder_class_names,
    load_decoder,
    read_sam_state,
    sam_image_encoder,
    sam_point_prompt_encoder,
)
from .network import RegionHead
from .sampling import Region, sample_points, to_encoder_frame

UNKNOWN = "unknown"  # the class of a region with nothing inside the image
REGIONS_PER_PASS = 32  # regions decoded together (bounds the decoder's memory: one image copy per region)


@dataclass
class RegionResult:
    """One region's class: the majority vote of its points.

    `confidence` is the share of points that voted for `class_name`; `votes` holds every point's class and
    `points` the points ([K, 2] (x, y) image pixels). A region with nothing inside the image has class
    "unknown", confidence 0 and no votes or points.
    """

    class_name: str
    confidence: float
    votes: list[str] = field(default_factory=list)
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))


def majority_vote(point_classes: Sequence[int] | np.ndarray) -> tuple[int, float]:
    """(most frequent class index, its share of the points); ties go to the lowest index."""
    counts = np.bincount(np.asarray(point_classes, dtype=np.int64))
    winner = int(counts.argmax())
    return winner, float(counts[winner] / counts.sum())


class RegionClassifier:
    """A frozen SAM / MobileSAM encoder and prompt encoder with a RoofSAM class decoder.

    `encoder` may be None for a classifier that only ever receives precomputed embeddings (training and
    evaluation on `fpseg precompute` output); `encode` then refuses.
    """

    def __init__(self, encoder: nn.Module | None, head: RegionHead, class_names: Sequence[str], img_size: int,
                 input_mode: InputMode = "squash", device: str | torch.device = "cpu") -> None:
        if len(class_names) != head.n_classes:
            raise ValueError(f"the decoder has {head.n_classes} classes but {len(class_names)} names were given")
        require_choice("input_mode", input_mode, INPUT_MODES)
        self.input_mode = input_mode
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device).eval() if encoder is not None else None
        self.head = head.to(self.device).eval()
        self.class_names: list[str] = list(class_names)
        self.img_size = img_size

    @classmethod
    def from_checkpoint(cls, sam_checkpoint: str | Path, decoder_checkpoint: str | Path,
                        class_names: Sequence[str] | None = None, device: str | torch.device = "cpu",
                        input_mode: InputMode = "squash") -> RegionClassifier:
        """An official SAM (vit_b/l/h) checkpoint plus a RoofSAM decoder file.

        MobileSAM checkpoints load too (same prompt encoder and mask decoder layout), but the published RoofSAM
        decoders were trained on SAM ViT-H embeddings and are untested with MobileSAM's. Class names: the
        `class_names` given, else the decoder's sidecar `<decoder stem>.classes.json`, else class_0, ...
        """
        sam_checkpoint = Path(sam_checkpoint)
        state = read_sam_state(sam_checkpoint)
        encoder, config = sam_image_encoder(state, sam_checkpoint)
        decoder = load_decoder(decoder_checkpoint)
        names = decoder_class_names(decoder_checkpoint, decoder.n_classes, class_names)
        head = RegionHead(sam_point_prompt_encoder(state, sam_checkpoint, config.img_size), decoder)
        return cls(encoder, head, names, config.img_size, input_mode, device)

    def geometry(self, height: int, width: int) -> Geometry:
        """Where an image of this size sits in the encoder input (this classifier's input mode)."""
        return Geometry.for_image(height, width, self.img_size, self.input_mode)

    @torch.inference_mode()
    def encode(self, image: np.ndarray | torch.Tensor | PILImage.Image, color_order: ColorOrder = "rgb"
               ) -> torch.Tensor:
        """The image embedding [1, 256, 64, 64], preprocessed as FPSeg does (`geometry` gives its Geometry)."""
        if self.encoder is None:
            raise ValueError("this RegionClassifier has no image encoder (made for precomputed embeddings); pass "
                             "embedding= and geometry=, or load it with RegionClassifier.from_checkpoint")
        rgb = image if isinstance(image, torch.Tensor) else to_rgb(image, color_order)
        x, _ = preprocess(rgb, self.img_size, self.input_mode, self.device)
        return self.encoder(x)

    def point_logits(self, embedding: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """embedding [1, 256, h, w], points [R, K, 2] ((x, y) in the encoder input frame) -> logits [R, C, K]."""
        return self.head(embedding.to(self.device), points.to(self.device, torch.float32))

    @torch.inference_mode()
    def classify(self, image: np.ndarray | torch.Tensor | PILImage.Image | None = None,
                 regions: Sequence[Region] = (), points_per_region: int = 4, seed: int = 0,
                 embedding: torch.Tensor | None = None, geometry: Geometry | None = None) -> list[RegionResult]:
        """The class of each region of one image, in order.

        regions: polygons (N x 2 (x, y) pixels), boxes (x0, y0, x1, y1) or bool H x W masks of the image;
        parts outside the image are clipped. Points are drawn with `seed` (same seed, same points). Give the
        image (encoded here, once), or an `embedding` [1, 256, h, w] of it with its `geometry` (e.g. the FPSeg
        pipeline's); with an embedding and an image, the geometry follows from the image's size.
        """
        embedding, geometry = self._embedding_and_geometry(image, embedding, geometry)
        rng = np.random.default_rng(seed)
        sampled = [sample_points(r, points_per_region, rng, geometry.width, geometry.height) for r in regions]
        results: list[RegionResult] = [RegionResult(UNKNOWN, 0.0) for _ in sampled]
        todo = [i for i, points in enumerate(sampled) if points is not None]
        for start in range(0, len(todo), REGIONS_PER_PASS):
            chunk = todo[start : start + REGIONS_PER_PASS]
            frame = np.stack([to_encoder_frame(sampled[i], geometry) for i in chunk])
            logits = self.point_logits(embedding, torch.from_numpy(frame))
            for i, point_classes in zip(chunk, logits.argmax(dim=1).cpu().numpy(), strict=True):
                winner, share = majority_vote(point_classes)
                results[i] = RegionResult(self.class_names[winner], share,
                                          [self.class_names[c] for c in point_classes], sampled[i])
        return results

    def _embedding_and_geometry(self, image: np.ndarray | torch.Tensor | PILImage.Image | None,
                                embedding: torch.Tensor | None, geometry: Geometry | None
                                ) -> tuple[torch.Tensor, Geometry]:
        if image is not None and geometry is None:
            height, width = (image.height, image.width) if isinstance(image, PILImage.Image) else image.shape[:2]
            geometry = self.geometry(int(height), int(width))
        if embedding is None:
            if image is None:
                raise ValueError("classify needs the image, or its embedding= and geometry=")
            embedding = self.encode(image)
        if geometry is None:
            raise ValueError("an embedding needs its geometry= (or the image) to place the regions' points")
        if geometry.img_size != self.img_size:
            raise ValueError(f"the geometry is for a {geometry.img_size}-pixel encoder input, this classifier's "
                             f"encoder takes {self.img_size}; pass the geometry the embedding was made with")
        return embedding, geometry
