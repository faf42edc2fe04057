"""``segment``: click-to-mask with Segment Anything (smartedit.segmentation.sam).

The photo is decoded as the edit's is (EXIF orientation applied, limits checked from the header),
prepared by ``SamProcessor``, and encoded by ``sam_image_encoder`` (BLS) -- unless its embedding is in
the cache, keyed by the content hash of the bytes sent, so that further clicks on one photo cost only
``sam_mask_decoder``. The prompt (clicks and/or a box) is mapped into the processor's frame, and the
decoder's low-resolution logits are post-processed by ``SamProcessor`` back to the photo's size.
While the server drains, a new request is refused (UNAVAILABLE); one in flight is waited for.
"""

import hashlib
import io
import threading
import uuid
from collections import OrderedDict

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from PIL import Image
from transformers import SamProcessor

from smartedit.serving.model_args import ModelArgs
from smartedit.errors import RequestError
from smartedit.ops.server_state import ServerState
from smartedit.serving.request_metrics import RequestCounter
from smartedit.edit.photos import decode_image
from smartedit.segmentation.sam import (
    PROCESSOR_FOLDER, SAM_DECODER, SAM_ENCODER, SAM_INFO_FILENAME, SamInfo, prompt_arrays,
)
from smartedit.serving.settings import SegmentSettings
from smartedit.serving.structured_log import model_logger, timed_stage
from smartedit.serving.triton_io import call_model, internal_error, invalid_argument, request_deadline, unavailable
from smartedit_client import _contract as wire

log = model_logger("segment")


def _input(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


class TritonPythonModel:
    def initialize(self, args):
        model = ModelArgs.of(args)
        self.settings = SegmentSettings.parse(model.parameters)
        self.info = SamInfo.load(model.folder / SAM_INFO_FILENAME)
        self.processor = SamProcessor.from_pretrained(model.folder / PROCESSOR_FOLDER)
        torch.set_num_threads(1)
        self._cache = OrderedDict()  # content hash -> (embeddings, original size, resized size), LRU
        self._lock = threading.Lock()
        self.state = ServerState.of_this_server()
        self.requests = RequestCounter("segment")

    def finalize(self):
        self.requests.close()

    def execute(self, requests):
        responses = []
        for request in requests:
            token = uuid.uuid4().hex
            counted = ("ok", "")
            try:
                with timed_stage(log, request.request_id(), "segment") as fields:
                    self.state.begin(token, request_deadline(request))  # before the drain is checked
                    refusal = self.state.refusal()
                    if refusal is not None:
                        counted = ("refused", "shutting_down")
                        fields.update(outcome="refused", error=refusal)
                        responses.append(unavailable(refusal))
                    else:
                        responses.append(self._segment(request, fields))
            except RequestError as error:
                counted = ("invalid", error.field)
                responses.append(invalid_argument(error))
            except Exception as error:  # logged by the stage; this request fails alone
                counted = ("failed", "segment")
                responses.append(internal_error(f"segmentation failed: {error}"))
            finally:
                self.state.end(token)
                self.requests.count(*counted)
        return responses

    def _segment(self, request, fields):
        data = _input(request, wire.SEGMENT_IMAGE.name)
        if data is None:
            raise RequestError(wire.SEGMENT_IMAGE.name, "is required")
        points, labels, box = self._prompt(request)
        image_bytes = bytes(data.reshape(-1)[0])
        image = decode_image(wire.SEGMENT_IMAGE.name, image_bytes, self.settings.image_limits()).convert("RGB")
        _check_inside(points, box, (image.height, image.width))  # before the encoder's work, not after
        embeddings, original, resized, cached = self._embeddings(hashlib.sha256(image_bytes).hexdigest(), image,
                                                                 request.request_id())
        coords, kinds = prompt_arrays(points, labels, box, original, resized)
        masks, iou = call_model(SAM_DECODER, {"image_embeddings": embeddings, "point_coords": coords[None],
                                              "point_labels": kinds[None]}, ["low_res_masks", "iou_scores"],
                                request_id=request.request_id())
        mask = self.processor.image_processor.post_process_masks(
            torch.from_numpy(masks[:, None]), [list(original)], [list(resized)])[0][0, 0].numpy()
        buffer = io.BytesIO()
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buffer, format="PNG")
        fields.update(width=original[1], height=original[0], points=0 if points is None else len(points),
                      box=box is not None, embedding_cached=cached, mask_fraction=round(float(mask.mean()), 4))
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor(wire.MASK.name, np.array([buffer.getvalue()], dtype=np.object_)),
            pb_utils.Tensor(wire.SCORE.name, np.asarray(iou, dtype=np.float32).reshape(1)),
        ])

    def _prompt(self, request):
        points, labels, box = (_input(request, t.name) for t in (wire.POINT_COORDS, wire.POINT_LABELS, wire.BOX))
        if points is None and box is None:
            raise RequestError(wire.POINT_COORDS.name, "or box is required: click on the object, or draw a box")
        if (points is None) != (labels is None):
            missing = wire.POINT_LABELS if labels is None else wire.POINT_COORDS
            raise RequestError(missing.name, "is required with " + (wire.POINT_COORDS if labels is None else
                                                                    wire.POINT_LABELS).name)
        if points is not None:
            if len(points) != len(labels):
                raise RequestError(wire.POINT_LABELS.name, f"has {len(labels)} labels for {len(points)} points")
            if len(points) > self.settings.max_points:
                raise RequestError(wire.POINT_COORDS.name, f"has {len(points)} points; the limit is "
                                                           f"{self.settings.max_points}")
            if not np.isfinite(points).all():
                raise RequestError(wire.POINT_COORDS.name, "must be finite numbers")
            bad = [int(label) for label in labels if label not in (0, 1)]
            if bad:
                raise RequestError(wire.POINT_LABELS.name, f"must be 1 (object) or 0 (background), got {bad[0]}")
        if box is not None:
            x0, y0, x1, y1 = (float(v) for v in box.reshape(-1))
            if not np.isfinite(box).all() or not (x0 < x1 and y0 < y1):
                raise RequestError(wire.BOX.name, f"must be x0, y0, x1, y1 with x0 < x1 and y0 < y1, got "
                                                  f"{[x0, y0, x1, y1]}")
        return points, labels, box

    def _embeddings(self, key, image, request_id):
        """(embeddings, (H, W), (resized H, W), whether they were cached) of ``image``."""
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                self._cache.move_to_end(key)
                return (*found, True)
        prepared = self.processor(images=image, return_tensors="np")
        (embeddings,) = call_model(SAM_ENCODER, {"pixel_values": prepared["pixel_values"].astype(np.float32)},
                                   ["image_embeddings"], request_id=request_id)
        entry = (embeddings, tuple(int(v) for v in prepared["original_sizes"][0]),
                 tuple(int(v) for v in prepared["reshaped_input_sizes"][0]))
        if self.settings.max_cached_images:
            with self._lock:
                self._cache[key] = entry
                while len(self._cache) > self.settings.max_cached_images:
                    self._cache.popitem(last=False)
        return (*entry, False)


def _check_inside(points, box, original):
    height, width = original
    for name, values in ((wire.POINT_COORDS.name, points), (wire.BOX.name, box)):
        if values is None:
            continue
        xy = np.asarray(values, dtype=np.float64).reshape(-1, 2)
        if (xy < 0).any() or (xy[:, 0] > width).any() or (xy[:, 1] > height).any():
            raise RequestError(name, f"must lie inside the {width}x{height} image, got {xy.tolist()}")
