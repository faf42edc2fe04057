"""``inpaint_stream``: the edit over a gRPC stream, with progress after every step and previews.

A decoupled model that clients call directly (``start_stream`` / ``async_stream_infer``). Each
stream runs on a thread of its own through the same stages as the ``inpaint`` ensemble, with the
same code, so the final image is the same bytes:

    reserve a place in denoise_engine → prepare_request (preprocess's own function)
      → the graph's components before the loop: text_encoder, vae_encoder (BLS)
      → denoise_engine (BLS, decoupled: a progress response per step, preview pixels every N steps)
      → the graph's components after it: vae_decoder (BLS) → finish_edit (postprocess's own function)
      → final response

The components and their tensors are the ensemble's own graph (``smartedit.serving.ensembles.edit_graph``),
walked here: the two entry points cannot drift apart.

Preprocess and postprocess run here, not through BLS, because an error's code does not survive
BLS in Triton 2.51: a bad field must reach the client as INVALID_ARGUMENT. When the client closes
the stream, this model sees it (its requests are the client's own, not an ensemble's) at the next
progress response, or through its watcher while the edit still waits for a slot, and marks the
edit on the cancel board, where the engine looks between steps.

Each stream is in the server's in-flight ledger from its first moment until its final response has
left, and is refused at once while the server drains (smartedit.ops.server_state). A model it calls
that loses its process fails the edit with UNAVAILABLE, "send again" (smartedit.ops.model_processes).
"""

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

from smartedit.serving.model_args import ModelArgs
from smartedit.serving import steps
from smartedit.serving.decoupled_calls import decoupled_responses, release_finished_calls
from smartedit.engine.cancellation import CancelBoard
from smartedit.errors import RequestError, ServiceInterrupted
from smartedit.ops.model_processes import Callees
from smartedit.ops.server_state import ServerState
from smartedit.edit.postprocessing import encode_png, finish_edit, to_pixels
from smartedit.edit.resume_request import check_resumable, checkpoint_header, record_reader, resume_image_pixels
from smartedit.edit.tasks import TEXT_EDIT
from smartedit.diffusion.resume import CLEAN
from smartedit.diffusion.resume_state import ResumeState
from smartedit.diffusion.spec import VAE_DECODER, VAE_ENCODER
from smartedit.diffusion.families import family_parameters, prompts_of
from smartedit.edit.parameters import resolve_parameters
from smartedit.edit.preprocessing import normalized, prepare_request
from smartedit.edit.provenance import PROVENANCE_FILENAME, Provenance
from smartedit.serving.request_metrics import RequestCounter, outcome_of
from smartedit.serving.settings import StreamSettings
from smartedit.serving.ensembles import component_steps
from smartedit.serving.structured_log import model_logger, timed_stage
from smartedit.serving.triton_io import (
    admission_call, call_model, code_name, error_as_tensors, error_of_response, optional_scalar, reason_of_response,
    request_deadline,
)
from smartedit_client import _contract as wire

log = model_logger("inpaint_stream")
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
# The engine's inputs for checkpoints and resuming, when the edit has them.
RESUMING = (steps.CHECKPOINT_EVERY, steps.CHECKPOINT_HEADER, steps.RESUME_STATE, steps.RESUME_DELTA)
# A state holds the latents twice, the sampler's history and its schedule: 146-467 KB at 512 px (README).
MAX_RESUME_STATE_BYTES = 64 << 20
WATCH_INTERVAL_S = 0.25  # how soon a client that left is noticed while its edit waits for a slot


class StreamClosed(Exception):
    """The client went away; the edit was stopped."""


class EngineError(Exception):
    """The engine ended the edit with an error; ``code`` is the TritonError code's name, ``reason`` why in a
    word (smartedit.serving.request_metrics)."""

    def __init__(self, error, reason: str = ""):
        super().__init__(error.message())
        self.code = code_name(error)
        self.reason = reason or "denoise"


# TritonError code names to the gRPC status names the stream's error_code carries.
_GRPC_STATUS = {"UNAVAILABLE": "UNAVAILABLE", "CANCELLED": "CANCELLED", "INVALID_ARG": "INVALID_ARGUMENT"}


def _tensor(spec, value) -> "pb_utils.Tensor":
    return pb_utils.Tensor(spec.name, np.asarray(value))


def _failure(status: str, message: str):
    """The stream's final answer for a failed edit: the KServe stream has no per-response status, so it
    travels as the wire contract's error_code (a gRPC status name) and error_message tensors."""
    return error_as_tensors(status, message)


class TritonPythonModel:
    def initialize(self, args):
        model = ModelArgs.of(args)
        self.settings = StreamSettings.parse(model.parameters)
        self.info = model.pipeline_info()
        self.prompts = prompts_of(self.info)
        self.family_parameters = family_parameters(self.info)
        self.tokenizers = self.prompts.load_tokenizers(model.folder)
        self.provenance = Provenance.load(model.folder / PROVENANCE_FILENAME)
        self.cancel_board = CancelBoard.of_this_server()
        self.state = ServerState.of_this_server()
        self.callees = Callees(self.state)
        self.requests = RequestCounter("inpaint_stream", model.pipeline)
        self._open = threading.BoundedSemaphore(self.settings.max_open_streams)
        self._pool = ThreadPoolExecutor(self.settings.max_open_streams, thread_name_prefix="stream")
        # Streams whose edit is in the engine, by cancel token: a watcher marks those whose client has
        # gone, so that an edit still queued (it sends no progress yet) is dropped before its first step.
        self._watch_lock = threading.Lock()
        self._watched, self._closed_tokens = {}, set()
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch_streams, name="stream-watcher", daemon=True)
        self._watcher.start()

    def finalize(self):
        self._stopping.set()
        self._pool.shutdown(wait=True)
        release_finished_calls()
        self.cancel_board.remove_if_empty()
        self.requests.close()

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            if not self._open.acquire(blocking=False):
                sender.send(_failure("UNAVAILABLE", f"server at capacity: {self.settings.max_open_streams} "
                                                    f"streams open; retry later"), flags=FINAL)
                self.requests.count("refused", "at_capacity")
                continue
            self._pool.submit(self._serve, request, sender)
        return None

    def _serve(self, request, sender):
        request_id = request.request_id()
        # Recorded before the drain is checked: a drain either refuses this stream or waits for it.
        token = uuid.uuid4().hex
        counted = ("ok", "")
        try:
            with timed_stage(log, request_id, "stream") as fields:
                try:
                    self.state.begin(token, request_deadline(request))
                    refusal = self.state.refusal()
                    if refusal is not None:
                        raise ServiceInterrupted(refusal)
                    answer = self._edit(request, sender, request_id, fields, token)
                except ServiceInterrupted as error:  # shutting down, or a model process died: send it again
                    counted = ("refused", "shutting_down") if refusal else ("interrupted", "model_process_died")
                    fields.update(outcome=counted[0], error=str(error))
                    answer = _failure("UNAVAILABLE", str(error))
                except StreamClosed as error:  # the client's doing, not a fault
                    counted = ("cancelled", "client_cancelled")
                    fields.update(outcome="cancelled", error=str(error))
                    answer = _failure("CANCELLED", str(error))
                except EngineError as error:  # refused, past its deadline, or failed: the engine logged which
                    counted = (outcome_of(error.code, error.reason), error.reason)
                    fields.update(outcome=counted[0], error=str(error))
                    answer = _failure(_GRPC_STATUS.get(error.code, "INTERNAL"), str(error))
        except RequestError as error:  # logged by the stage, as the client's error
            counted = ("invalid", error.field)
            answer = _failure("INVALID_ARGUMENT", str(error))
        except Exception as error:  # logged by the stage, with its traceback
            counted = ("failed", "stream")
            answer = _failure("INTERNAL", f"the streamed edit failed: {error}")
        finally:
            self._open.release()
        self.requests.count(*counted)
        try:
            sender.send(answer, flags=FINAL)
        finally:
            self.state.end(token)

    def _edit(self, request, sender, request_id, fields, reservation):
        preview_every = optional_scalar(request, wire.PREVIEW_EVERY.name)
        preview_every = self.settings.default_preview_every if preview_every is None else int(preview_every)
        if preview_every < 0:
            raise RequestError(wire.PREVIEW_EVERY.name, f"must be >= 0 (0: no previews), got {preview_every}")
        read = lambda name: optional_scalar(request, name)  # noqa: E731
        saved = self._resume_state(read)
        if saved is not None:  # the parameters are the state's
            read = record_reader(saved, read)
        # The scalars first: cheap, checked first.
        params = resolve_parameters(read, self.settings.preprocess, self.family_parameters)
        checkpoint_every = self._checkpoint_every(read, params)
        # Before any decoding: a server at capacity refuses now, not after the work (as preprocess does).
        refusal = admission_call(self.settings.engine_model, steps.RESERVE, reservation, request_id,
                                 places=params.num_images, callees=self.callees)
        if refusal is not None:
            raise EngineError(refusal.error, refusal.reason)
        try:
            tensors, log_fields = prepare_request(read, self.tokenizers, self.info, self.settings.preprocess,
                                                  deadline=request_deadline(request), reservation=reservation,
                                                  params=params)
            painted = None
            if saved is not None and read(wire.RESUME_IMAGE.name) is not None:  # checked at the edit's working size
                height, width = (side * self.info.vae_scale_factor for side in tensors[steps.LATENT_MASK].shape[-2:])
                painted = resume_image_pixels(read(wire.RESUME_IMAGE.name), (width, height), self.settings.preprocess)
        except Exception:  # a bad field, or a fault: the places go back at once, not after their TTL
            admission_call(self.settings.engine_model, steps.RELEASE, reservation, request_id, callees=self.callees)
            raise
        fields.update(log_fields, preview_every=preview_every)
        # The edit's tensors by name, as the ensemble's graph names them (smartedit.serving.ensembles).
        edit = {spec.name: value for spec, value in tensors.items()}
        edit[steps.PREVIEW_EVERY.name] = np.array([preview_every], dtype=np.int32)
        if checkpoint_every:
            header = checkpoint_header(self.info, self.provenance, read(wire.IMAGE.name), read(wire.MASK_IMAGE.name),
                                       read(wire.CONTROL_IMAGE.name))
            edit[steps.CHECKPOINT_EVERY.name] = np.array([checkpoint_every], dtype=np.int32)
            edit[steps.CHECKPOINT_HEADER.name] = np.array([json.dumps(header).encode()], dtype=np.object_)
        self._run_components(component_steps(self.prompts, before_loop=True), edit, request_id)
        if saved is not None:
            edit[steps.RESUME_STATE.name] = np.array([read(wire.RESUME_STATE.name)], dtype=np.object_)
            if painted is not None:
                edit[steps.RESUME_DELTA.name] = self._painted_change(saved, painted, edit, request_id)
        edit[steps.LATENTS.name] = self._denoise(request, sender, request_id, edit)
        self._run_components(component_steps(self.prompts, before_loop=False), edit, request_id)
        pngs = finish_edit(edit[steps.DECODED_IMAGE.name], read(wire.IMAGE.name), read(wire.MASK_IMAGE.name),
                           edit[steps.EDIT_BOX.name], params, self.provenance)
        return pb_utils.InferenceResponse(output_tensors=[
            _tensor(wire.EDITED_IMAGE, np.array(pngs, dtype=np.object_)),
            _tensor(wire.SEED_USED, edit[steps.SEED_USED.name]),
        ])

    def _resume_state(self, read) -> ResumeState | None:
        """The state a resuming request sent, checked against this pipeline and the request's photo."""
        raw = read(wire.RESUME_STATE.name)
        if raw is None:
            if read(wire.RESUME_IMAGE.name) is not None:
                raise RequestError(wire.RESUME_IMAGE.name, "is taken only with resume_state (the checkpoint it "
                                                           "paints on)")
            return None
        if len(raw) > MAX_RESUME_STATE_BYTES:
            raise RequestError(wire.RESUME_STATE.name, f"is {len(raw)} bytes; the limit is {MAX_RESUME_STATE_BYTES}")
        image = read(wire.IMAGE.name)
        if image is None:
            raise RequestError(wire.IMAGE.name, "is required (the photo the checkpoint's edit was sent with)")
        saved = ResumeState.from_bytes(raw)
        check_resumable(saved, self.info, self.provenance, image, read(wire.MASK_IMAGE.name),
                        read(wire.CONTROL_IMAGE.name))
        return saved

    @staticmethod
    def _checkpoint_every(read, params) -> int:
        value = read(wire.CHECKPOINT_EVERY.name)
        every = 0 if value is None else int(value)
        if every < 0:
            raise RequestError(wire.CHECKPOINT_EVERY.name, f"must be >= 0 (0: no checkpoints), got {every}")
        if every and params.num_images != 1:
            raise RequestError(wire.CHECKPOINT_EVERY.name, f"{every} needs num_images 1 (a checkpoint continues one "
                                                           f"image), got num_images {params.num_images}")
        if every and params.task == TEXT_EDIT:
            raise RequestError(wire.CHECKPOINT_EVERY.name, f"{every}: a text edit cannot be checkpointed (its "
                                                           f"state holds the inversion's whole trajectory)")
        return every

    def _painted_change(self, saved: ResumeState, painted: np.ndarray, edit: dict, request_id: str) -> np.ndarray:
        """``E(painted) - E(checkpoint image)`` in the loop's (scaled) latents: the checkpoint image made
        again from the state's predicted clean latents, as it was sent, and both encoded (the latent
        distribution's mean, so that an unchanged image moves nothing)."""
        scaling = self.info.vae_scaling_factor
        clean = saved.tensor(CLEAN).numpy()
        expected = edit[steps.MASKED_IMAGE_MEAN.name].shape  # [1, latent channels, h, w]
        if clean.shape != expected:
            raise RequestError(wire.RESUME_STATE.name, f"its checkpoint latents are {clean.shape}; this edit's are "
                                                       f"{expected}")
        (decoded,) = self._call(self.settings.model(VAE_DECODER.name),
                                {VAE_DECODER.inputs[0].name: np.ascontiguousarray(clean / scaling, dtype=np.float32)},
                                [VAE_DECODER.outputs[0].name], request_id)
        shown = normalized(to_pixels(decoded))
        means = [self._call(self.settings.model(VAE_ENCODER.name), {VAE_ENCODER.inputs[0].name: pixels},
                            [VAE_ENCODER.outputs[0].name], request_id)[0] for pixels in (painted, shown)]
        return (scaling * (means[0] - means[1])).astype(np.float32)

    def _run_components(self, graph_steps, edit: dict, request_id: str) -> None:
        """The graph's component steps, each a BLS call to this pipeline's model, their outputs added to
        ``edit`` under the graph's names."""
        for step in graph_steps:
            outputs = self._call(self.settings.model(step.model),
                                 {tensor: edit[name] for tensor, name in step.input_map.items()},
                                 list(step.output_map), request_id)
            edit.update({step.output_map[tensor]: value for tensor, value in zip(step.output_map, outputs)})

    def _call(self, model, inputs, output_names, request_id):
        """A component's BLS call; its failure is ``ModelProcessDied`` when the component lost its process."""
        pids = self.callees.pids(model)
        try:
            return call_model(model, inputs, output_names, request_id=request_id)
        except Exception as error:
            raise self.callees.explain(model, pids, error) from error

    def _denoise(self, request, sender, request_id, edit) -> np.ndarray:
        """The engine's part, relaying its progress to the client; the latents when it is done."""
        if request.is_cancelled():
            raise StreamClosed("the client closed the stream before denoising began")
        token = self.cancel_board.new_token()
        inputs = [pb_utils.Tensor(spec.name, edit[spec.name]) for spec in steps.scheduler_inputs(self.prompts)]
        inputs += [pb_utils.Tensor(steps.PREVIEW_EVERY.name, edit[steps.PREVIEW_EVERY.name]),
                   pb_utils.Tensor(steps.CANCEL_TOKEN.name, np.array([token.encode()], dtype=np.object_))]
        inputs += [pb_utils.Tensor(spec.name, edit[spec.name]) for spec in RESUMING if spec.name in edit]
        engine_request = pb_utils.InferenceRequest(
            model_name=self.settings.engine_model, inputs=inputs, request_id=request_id,
            requested_output_names=[t.name for t in steps.ENGINE_OUTPUTS])
        outcome = {"latents": None, "error": None, "reason": "", "closed": False}

        def exchange():
            # Read to the end even once the client has gone: the engine answers a cancellation within a
            # step, and the token must outlive the edit.
            for response in decoupled_responses(engine_request):
                outcome["error"] = error_of_response(response) or outcome["error"]
                outcome["reason"] = reason_of_response(response) or outcome["reason"]
                found = pb_utils.get_output_tensor_by_name(response, steps.LATENTS.name)
                if found is not None:
                    outcome["latents"] = found.as_numpy()
                step = pb_utils.get_output_tensor_by_name(response, steps.STEP.name)
                if step is None or outcome["closed"]:
                    continue
                try:
                    if request.is_cancelled():
                        raise StreamClosed("the client closed the stream")
                    self._relay_progress(sender, response, step, request_id)
                except Exception as reason:  # the client left, or its stream broke: stop the edit
                    outcome["closed"] = True
                    self.cancel_board.cancel(token)
                    log.info("stopping the edit: %s", reason)

        self._watch(token, request)
        try:
            # Watched: an engine whose process dies never answers (smartedit.ops.model_processes).
            self.callees.wait(self.settings.engine_model, exchange,
                              failed=lambda _: outcome["latents"] is None and outcome["error"] is not None)
        finally:
            outcome["closed"] = self._unwatch(token) or outcome["closed"]
            self.cancel_board.forget(token)
        latents, error, closed = outcome["latents"], outcome["error"], outcome["closed"]
        if closed:
            raise StreamClosed("the client closed the stream")
        if error is not None:
            raise EngineError(error, outcome["reason"])
        if latents is None:
            raise RuntimeError("the denoising engine ended the edit without latents")
        return latents

    # --- noticing a client that left while its edit waits in the engine's queue (no progress yet) ---

    def _watch(self, token, request):
        with self._watch_lock:
            self._watched[token] = request

    def _unwatch(self, token) -> bool:
        """Stop watching; whether the watcher found the client gone."""
        with self._watch_lock:
            self._watched.pop(token, None)
            if token in self._closed_tokens:
                self._closed_tokens.discard(token)
                return True
            return False

    def _watch_streams(self):
        while not self._stopping.wait(WATCH_INTERVAL_S):
            with self._watch_lock:
                watched = list(self._watched.items())
            for token, request in watched:
                if request.is_cancelled():
                    with self._watch_lock:  # marked under the lock: never after its edit forgot the token
                        if self._watched.pop(token, None) is None:
                            continue  # its edit ended meanwhile
                        self._closed_tokens.add(token)
                        self.cancel_board.cancel(token)

    def _relay_progress(self, sender, response, step, request_id):
        total = pb_utils.get_output_tensor_by_name(response, steps.TOTAL_STEPS.name)
        outputs = [_tensor(wire.STEP, step.as_numpy()), _tensor(wire.TOTAL_STEPS, total.as_numpy())]
        pixels = pb_utils.get_output_tensor_by_name(response, steps.PREVIEW_PIXELS.name)
        if pixels is not None:
            outputs.append(_tensor(wire.PREVIEW_IMAGE, np.array([encode_png(pixels.as_numpy())], dtype=np.object_)))
        state = pb_utils.get_output_tensor_by_name(response, steps.CHECKPOINT_STATE.name)
        if state is not None:  # the checkpoint image: the predicted clean latents, decoded
            clean = pb_utils.get_output_tensor_by_name(response, steps.CHECKPOINT_LATENTS.name).as_numpy()
            (decoded,) = self._call(self.settings.model(VAE_DECODER.name), {VAE_DECODER.inputs[0].name: clean},
                                    [VAE_DECODER.outputs[0].name], request_id)
            outputs += [_tensor(wire.CHECKPOINT_IMAGE, np.array([encode_png(to_pixels(decoded))], dtype=np.object_)),
                        _tensor(wire.CHECKPOINT_STATE, state.as_numpy())]
        sender.send(pb_utils.InferenceResponse(output_tensors=outputs))
