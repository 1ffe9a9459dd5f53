"""The user-facing API: `FPSeg.from_checkpoint(...)`, `model.predict(image, classes=[...])`."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage

from .backends import Backend, create_backend, resolve_device
from .checkpoint import load_checkpoint
from .constants import FUSIONS, INPUT_MODES, MAX_CLASSES, Fusion, InputMode, require_choice
from .errors import PromptBankError
from .fast_labels import FastLabeler
from .fusion import fuse
from .modeling.build import FPSegConfig, build_fpseg
from .modeling.fpseg import FPSegModel
from .preprocess import ColorOrder, Geometry, postprocess_logits, preprocess, to_rgb
from .prompt_bank import PromptBank, decoder_fingerprint
from .weights import cached, lookup

STAGES = ("preprocess", "encoder", "decoder", "postprocess")


@dataclass
class Segmentation:
    """One segmented image: labels (H x W uint8, 1 + bank index, 0 = none), the classes asked for,
    per-stage wall times in milliseconds (keys: preprocess, encoder, decoder, postprocess, total) and, when
    asked for, the confidence image (H x W uint8, round(255 * probability of the winning class), 0 = none) and
    the encoder's image embedding ([1, 256, h, w] on the model's device) with the Geometry of the image in the
    encoder input, for more queries on the same encoder pass (e.g. region classification). `batch_size`: the
    images segmented together (`FPSeg.segment_batch`; 1 for `segment`)."""

    labels: np.ndarray
    classes: list[str]
    timings_ms: dict[str, float] = field(default_factory=dict)
    confidence: np.ndarray | None = None
    embedding: torch.Tensor | None = None
    geometry: Geometry | None = None
    batch_size: int = 1


@dataclass
class NetworkOutputs:
    """One image through the backend, on the pipeline's device: `embedding` [1, 256, S/16, S/16] (the
    encoder's), `low_res` [N, S/4, S/4] (the decoder's logits) and `logits` [N, H, W] (post-processed to the
    input size as published FPSeg does), for the N classes asked for, in their order."""

    embedding: torch.Tensor
    low_res: torch.Tensor
    logits: torch.Tensor


class _StageTimer:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.timings_ms: dict[str, float] = {}
        self._last = time.perf_counter()

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def lap(self, stage: str) -> None:
        """Record the time since the last lap (or restart) as `stage`."""
        now = self._now()
        self.timings_ms[stage] = (now - self._last) * 1e3
        self._last = now

    def restart(self) -> None:
        """Start the next lap now (after work that belongs to another timer)."""
        self._last = time.perf_counter()

    def finish(self) -> dict[str, float]:
        self.timings_ms["total"] = sum(self.timings_ms[s] for s in STAGES if s in self.timings_ms)
        return self.timings_ms


class FPSeg:
    """A loaded FPSeg network with its prompt bank.

    The encoder runs once per image; the decoder runs once for all requested classes (batched). Both run on
    a backend: `backend` is 'auto' (default), 'torch', 'onnxruntime' or 'tensorrt'; `engine_dir` is the
    folder of an `fpseg export-onnx` (and `fpseg build-engine`) run, needed by the latter two and by
    'auto' to pick them (without one, 'auto' runs torch; one it cannot use is an error). Graphs and engines
    must have been made from this model, for its image size and `input_mode`, and every bank must have
    their prompt size (ExportError otherwise, at construction and in `set_bank`). `device` is 'auto',
    'cpu', 'cuda', 'cuda:N' or 'mps' (one this machine lacks is an error; see `resolve_device`). `dtype`
    ('fp32', 'bf16', 'fp16') applies to the torch backend. The label image is computed without N
    full-resolution logit maps (`FastLabeler`); `segment_baseline` is the straightforward published
    computation, kept for comparison.
    """

    def __init__(
        self,
        model: FPSegModel,
        bank: PromptBank,
        device: str | torch.device = "cpu",
        input_mode: InputMode = "squash",
        fusion: Fusion = "argmax",
        threshold: float = 0.0,
        force_bank: bool = False,
        backend: str = "auto",
        engine_dir: str | Path | None = None,
        dtype: str = "fp32",
    ) -> None:
        require_choice("input_mode", input_mode, INPUT_MODES)
        require_choice("fusion", fusion, FUSIONS)
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.fingerprint = decoder_fingerprint(self.model.state_dict())
        self.input_mode: InputMode = input_mode
        self.fusion: Fusion = fusion
        self.threshold = float(threshold)
        self.backend = create_backend(backend, self.model, self.device, engine_dir, input_mode=input_mode,
                                      dtype=dtype)
        self.set_bank(bank, force=force_bank)
        self._labeler = FastLabeler()
        self.encoder_passes = 0  # images encoded since construction (`segment`, `class_logits`, baseline)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path,
        prompts: str | Path | PromptBank | None = None,
        encoder: str | None = None,
        force_prompts: bool = False,
        **kwargs,
    ) -> FPSeg:
        """Load a SAM / MobileSAM / FPSeg / project checkpoint, and optionally a prompt bank file.

        A SAM or MobileSAM checkpoint carries no trained prompts, so `prompts` is required for it.
        Remaining keyword arguments go to the constructor (device, input_mode, fusion, threshold, backend,
        engine_dir, dtype).
        """
        loaded = load_checkpoint(checkpoint, encoder=encoder)
        bank = PromptBank.load(prompts) if isinstance(prompts, (str, Path)) else prompts
        if bank is None:
            bank = loaded.bank
        if bank is None:
            raise PromptBankError(
                f"{checkpoint} is an official {loaded.config.encoder} checkpoint without trained prompts; "
                "pass prompts=<bank.safetensors> (train one with `fpseg train`)"
            )
        return cls(loaded.model, bank, force_bank=force_prompts, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        name: str,
        prompts: str | Path | PromptBank | None = None,
        home: str | Path | None = None,
        **kwargs,
    ) -> FPSeg:
        """Load published weights by name ('fpseg-mobilesam', 'mobilesam', 'sam-vit-b', ...; see
        fpseg_core.weights) from the cache (`home`, default $FPSEG_HOME or ~/.cache/fpseg).

        Nothing is downloaded: a name not in the cache is a WeightsError naming the `fpseg weights fetch NAME`
        command. Without `prompts`, the name's cached named bank is used (fpseg-mobilesam: its 33 Cityscapes
        entries). Remaining keyword arguments are those of `from_checkpoint` (less `encoder`: the name's).
        """
        entry = lookup(name)
        resolved = cached(entry, home)
        return cls.from_checkpoint(resolved.checkpoint, prompts=resolved.prompts if prompts is None else prompts,
                                   encoder=entry.encoder, **kwargs)

    @classmethod
    def random(cls, config: FPSegConfig, class_names: Sequence[str] | None = None, seed: int = 0,
               **kwargs) -> FPSeg:
        """Random weights, for smoke tests and timing only: its labels mean nothing (a warning says so)."""
        warnings.warn("FPSeg.random: random weights, the output is meaningless", UserWarning, stacklevel=2)
        torch.manual_seed(seed)
        model = build_fpseg(config)
        names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(config.n_classes)]
        bank = PromptBank(names, model.prompt_encoder.prompt_embeddings.detach().clone(), config.encoder,
                          decoder_fingerprint(model.state_dict()), source=f"random (seed {seed})")
        return cls(model, bank, **kwargs)

    @property
    def classes(self) -> list[str]:
        """Names of the bank's classes; label value i + 1 is classes[i]."""
        return list(self.bank.names)

    @property
    def img_size(self) -> int:
        return self.model.img_size

    @property
    def backend_name(self) -> str:
        """The backend that runs the network: 'torch', 'onnxruntime' or 'tensorrt'."""
        return self.backend.name

    def set_bank(self, bank: PromptBank, force: bool = False) -> None:
        """Swap in another prompt bank after checking it was tuned for this model's decoder (unless `force`)
        and that the backend takes its prompt size (always: an exported decoder takes one prompt size)."""
        bank.check_fits(self.fingerprint, force=force)
        if len(bank) > MAX_CLASSES:
            raise PromptBankError(f"a bank holds at most {MAX_CLASSES} classes (uint8 labels, 255 is vision_msgs' "
                                  f"'unlabeled'), this one has {len(bank)}")
        self.backend.check_prompt_size(bank.prompt_size)
        param = self.model.prompt_encoder.prompt_embeddings
        self._prompts = bank.embeddings.to(self.device, param.dtype)
        self.bank = bank

    def resolve_classes(self, classes: Sequence[str] | None) -> list[int]:
        """Bank rows of the requested class names (all classes when None), in request order."""
        if classes is None:
            return list(range(len(self.bank)))
        if isinstance(classes, str):
            raise TypeError("classes must be a list of names, e.g. ['road', 'person'], not one string")
        if not classes:
            raise ValueError(f"no classes requested; choose from: {', '.join(self.bank.names)}")
        ids = self.bank.indices(classes)
        if len(set(ids)) != len(ids):
            raise ValueError(f"a class is requested twice in {list(classes)}")
        return ids

    def _prepare(self, image: np.ndarray | torch.Tensor | PILImage.Image, color_order: ColorOrder):
        rgb = image if isinstance(image, torch.Tensor) else to_rgb(image, color_order)
        return preprocess(rgb, self.img_size, self.input_mode, self.device)

    def class_logits(self, image: np.ndarray, class_ids: Sequence[int], color_order: ColorOrder = "rgb"
                     ) -> torch.Tensor:
        """Per-class logits [N, H, W] at the input size, post-processed exactly as published FPSeg does."""
        return self.network_outputs(image, class_ids, color_order).logits

    @torch.inference_mode()
    def network_outputs(self, image: np.ndarray, class_ids: Sequence[int], color_order: ColorOrder = "rgb"
                        ) -> NetworkOutputs:
        """What the backend computes for one image and the bank rows `class_ids`, before any fusion: the
        embedding, the low-resolution logits and the logits at input size (see `NetworkOutputs`); for
        comparing backends and precisions (`fpseg compare-precision`)."""
        x, geometry = self._prepare(image, color_order)
        self.encoder_passes += 1
        embedding = self.backend.encode(x)
        low_res = self.backend.decode(embedding, self._prompts[list(class_ids)])
        return NetworkOutputs(embedding, low_res[0], postprocess_logits(low_res, geometry)[0])

    def segment(
        self,
        image: np.ndarray,
        classes: Sequence[str] | None = None,
        fusion: Fusion | None = None,
        threshold: float | None = None,
        color_order: ColorOrder = "rgb",
        confidence: bool = False,
        keep_embedding: bool = False,
    ) -> Segmentation:
        """Label image and per-stage timings for one image (see `predict`); with `confidence`, also the
        winning class's probability per pixel, from the same low-resolution pass (`Segmentation.confidence`);
        with `keep_embedding`, also the encoder's embedding and the image's Geometry (no extra work)."""
        (result,) = self._segment([image], [color_order], classes, fusion, threshold, baseline=False,
                                  confidence=confidence, keep_embedding=keep_embedding)
        return result

    def segment_batch(
        self,
        images: Sequence[np.ndarray],
        color_orders: Sequence[ColorOrder],
        classes: Sequence[str] | None = None,
        fusion: Fusion | None = None,
        threshold: float | None = None,
        confidence: bool = False,
        keep_embedding: bool = False,
    ) -> list[Segmentation]:
        """`segment` for several images (of any sizes) with the same classes, e.g. one frame of each camera.

        The images are encoded in one pass where the backend encodes batches (`batch_encoding`: the torch
        backend on CUDA), one after the other otherwise (on the CPU a batch gains nothing; exported graphs and
        engines take one image); decoding and
        post-processing are per image. Each result's `timings_ms` has its own preprocess, decoder and
        postprocess times and the encoder time of all the images (what the frame waited for); `batch_size` is
        the number of images segmented together. Labels equal `segment`'s for each image."""
        if len(images) != len(color_orders) or not images:
            raise ValueError(f"segment_batch needs one colour order per image and at least one image, got "
                             f"{len(images)} image(s) and {len(color_orders)} colour order(s)")
        return self._segment(images, color_orders, classes, fusion, threshold, baseline=False,
                             confidence=confidence, keep_embedding=keep_embedding)

    def segment_baseline(
        self,
        image: np.ndarray,
        classes: Sequence[str] | None = None,
        fusion: Fusion | None = None,
        threshold: float | None = None,
        color_order: ColorOrder = "rgb",
    ) -> Segmentation:
        """`segment` computed the straightforward, published way, in PyTorch whatever the backend: encoder,
        the plain decoder (`FPSegModel.decode`), all N logit maps upsampled to full resolution, then
        thresholded and fused. The reference for equality tests and `fpseg benchmark`."""
        (result,) = self._segment([image], [color_order], classes, fusion, threshold, baseline=True)
        return result

    @torch.inference_mode()
    def _segment(
        self,
        images: Sequence[np.ndarray],
        color_orders: Sequence[ColorOrder],
        classes: Sequence[str] | None,
        fusion: Fusion | None,
        threshold: float | None,
        baseline: bool,
        confidence: bool = False,
        keep_embedding: bool = False,
    ) -> list[Segmentation]:
        ids = self.resolve_classes(classes)
        fusion, threshold = self._fusion_options(fusion, threshold)
        network = self.model if baseline else self.backend
        timers, prepared = [], []
        for image, color_order in zip(images, color_orders, strict=True):
            timers.append(_StageTimer(self.device))
            prepared.append(self._prepare(image, color_order))
            timers[-1].lap("preprocess")
        encoder_timer = _StageTimer(self.device)
        embeddings = self._encode(network, [x for x, _ in prepared], batched=not baseline)
        encoder_timer.lap("encoder")
        results = []
        for timer, (_, geometry), embedding in zip(timers, prepared, embeddings, strict=True):
            timer.timings_ms["encoder"] = encoder_timer.timings_ms["encoder"]
            timer.restart()
            low_res = network.decode(embedding, self._prompts[ids])
            timer.lap("decoder")
            scores = None
            if baseline:
                labels = fuse(postprocess_logits(low_res, geometry)[0], ids, fusion, threshold)
            elif confidence:
                labels, scores = self._labeler.with_confidence(low_res[0].to(self.device), geometry, ids, fusion,
                                                               threshold)
            else:
                labels = self._labeler(low_res[0].to(self.device), geometry, ids, fusion, threshold)
            labels_np = labels.cpu().numpy()
            scores_np = scores.cpu().numpy() if scores is not None else None
            timer.lap("postprocess")
            kept = (embedding, geometry) if keep_embedding else (None, None)
            results.append(Segmentation(labels_np, [self.bank.names[i] for i in ids], timer.finish(), scores_np,
                                        *kept, batch_size=len(images)))
        return results

    def _encode(self, network: Backend | FPSegModel, inputs: list[torch.Tensor], batched: bool
                ) -> list[torch.Tensor]:
        """Each input's embedding [1, 256, h, w]: one pass over the stacked inputs where the backend encodes
        batches, one pass per input otherwise; `encoder_passes` counts images."""
        self.encoder_passes += len(inputs)
        if batched and len(inputs) > 1 and network.batch_encoding:
            return list(network.encode(torch.cat(inputs)).split(1))
        return [network.encode(x) for x in inputs]

    def _fusion_options(self, fusion: Fusion | None, threshold: float | None) -> tuple[Fusion, float]:
        fusion = fusion or self.fusion
        require_choice("fusion", fusion, FUSIONS)
        return fusion, self.threshold if threshold is None else float(threshold)

    def predict(
        self,
        image: np.ndarray,
        classes: Sequence[str] | None = None,
        fusion: Fusion | None = None,
        threshold: float | None = None,
        color_order: ColorOrder = "rgb",
    ) -> np.ndarray:
        """H x W uint8 label image: 1 + bank index of the winning requested class, 0 where none is present.

        `image`: uint8 H x W x 3 (RGB, or BGR with color_order='bgr'), H x W x 4 or grey. `classes`: names
        in priority order (default: all). `fusion`: 'argmax' (highest logit above `threshold`) or 'priority'
        (first class in the given order above `threshold`).
        """
        return self.segment(image, classes, fusion, threshold, color_order).labels

