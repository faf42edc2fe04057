// SmartEdit's browser editor: one page, no build step, nothing loaded from elsewhere. It talks to the
// gateway it is served by (relative URLs, so it also works under an Ingress path prefix):
//   GET  info                what the server offers: samplers, defaults, the photo size limits
//   POST segment             clicks / a box -> the object's mask (Segment Anything)
//   POST edit/inpaint/stream the edit as Server-Sent Events: progress, previews, checkpoints, the result
//   POST edit/resume/stream  a checkpoint (painted on) continued: the same events
//
// Seeds are strings from the form to the download's name: they are 64-bit, and a JavaScript number
// holds integers exactly only up to 2^53 (7899758643369034638 would become 7899758643369035000).
//
// The mask is painted on a canvas of the displayed size, not the photo's: on a 24 MP photo every
// stroke would otherwise redraw and re-read 96 MB. It is scaled to the photo's size once, when sent.
"use strict";

const $ = (id) => document.getElementById(id);
const stage = $("stage");
const stageContext = stage.getContext("2d");
const mask = document.createElement("canvas"); // the stage's size; painted = white and opaque, else transparent
const maskContext = mask.getContext("2d", { willReadFrequently: true }); // read back for counts and undo
const tint = document.createElement("canvas"); // scratch for the coloured overlay
const tintContext = tint.getContext("2d");

const DISPLAY_SIDE = 1024; // the painting canvas's longest side, at most
const UNDO_DEPTH = 30;
const INT64_MAX = 9223372036854775807n; // the seed's wire type (a BigInt: no number holds a seed)
const ACCEPTED = "a PNG, JPEG or WebP image";
// The fields laid out by hand (index.html); every other parameter the server declares (GET info) gets an
// input of its own under "More settings" (moreFields), so a parameter added to the contract shows here.
const EDIT_FIELDS = ["pipeline", "task", "prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "strength",
                     "scheduler", "seed", "mask_grow", "mask_blur", "preview_every", "checkpoint_every"];
// How each edit reports, not what it does: not recorded in its PNG, not reloaded, not sent with a resume's fields.
const STREAM_FIELDS = new Set(["preview_every", "checkpoint_every"]);

const TASKS = {
  inpaint: {
    hint: "Paint the area to repaint, then describe what should be there.",
    placeholder: "what to paint in the area",
    overlay: "repaint",
  },
  remove: {
    hint: "Paint over the object to remove; the prompt may stay empty.",
    placeholder: "optional: what should be behind it",
    overlay: "repaint",
  },
  replace_background: {
    hint: "Paint the subject to keep (green); everything else is replaced by what the prompt describes.",
    placeholder: "the new background, e.g. a sunny beach",
    overlay: "keep",
  },
  instruct: {
    hint: "Say what to change, as an instruction. Paint an area to change only that, or paint nothing to edit the whole photo.",
    placeholder: "an instruction, e.g. make it winter",
    overlay: "repaint",
  },
  text_edit: {
    hint: "Say what the photo shows (Source prompt, under More settings) and what it should show. Paint an area to change only that, or paint nothing to edit the whole photo.",
    placeholder: "what the photo should show, e.g. a room at sunset",
    overlay: "repaint",
  },
};
// The tasks that edit the whole photo when nothing is painted (the server's smartedit.edit.tasks.MASK_OPTIONAL).
const MASK_OPTIONAL = new Set(["instruct", "text_edit"]);
// Fields of one task only (the server refuses them with another): shown and sent with that task alone.
const TASK_FIELDS = { source_prompt: "text_edit" };

const state = {
  info: null, // GET info, or null while unknown
  photo: null, // {blob, name, width, height, view: ImageBitmap at the stage's size}
  result: null, // history entry shown as the result
  view: "empty", // "mask": painting on the photo; "result": before / after
  tool: "paint",
  stroke: null, // the last point of the stroke being painted, in stage pixels
  clicks: [], // [x, y, label] in the photo's pixels
  box: null, // [x0, y0, x1, y1] in the photo's pixels
  boxStart: null,
  exactMask: null, // a photo-sized PNG to send as it is (a segmentation's, a reloaded edit's) until the mask changes
  undo: [],
  redo: [],
  running: null, // the AbortController of the edit in progress
  history: [],
  split: 0.5, // the before / after divider, as a fraction of the width
  touchUp: null, // {checkpoint, sent, fields, stroke}: the checkpoint being painted on
  controlImage: null, // {blob, name}: the conditioning image chosen for a ControlNet pipeline, or null
};

// ---------------------------------------------------------------- messages

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function labelOf(field) {
  const input = formField(field);
  const label = input && input.closest("label");
  return label ? label.firstChild.textContent.trim() : field;
}

// The server names the field its message is about ("num_inference_steps: must be ..."): say it as
// the form does ("Steps: must be ...") and mark the input.
function readable(error) {
  const field = error.field;
  if (field && formField(field)) {
    formField(field).setAttribute("aria-invalid", "true");
    if (error.message.startsWith(`${field}: `)) return `${labelOf(field)}: ${error.message.slice(field.length + 2)}`;
  }
  return error.message;
}

function clearInvalid() {
  for (const input of document.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
}

class RequestError extends Error {
  constructor(message, field = null) {
    super(message);
    this.field = field;
  }
}

async function responseError(response) {
  // The gateway answers {"field", "message"}; a proxy in front of it may answer HTML or text.
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && typeof body.message === "string") return new RequestError(body.message, body.field || null);
  } catch {
    // not JSON: said below
  }
  return new RequestError(`the gateway answered ${response.status} ${response.statusText}`.trim());
}

function networkError(error) {
  // fetch rejects with a TypeError when nothing answers at all
  if (error instanceof TypeError) return new RequestError("cannot reach the SmartEdit gateway: is it running, and is this page still connected?");
  return error;
}

// ---------------------------------------------------------------- what the server offers

function defaultOf(name) {
  const parameter = state.info && state.info.parameters && state.info.parameters[name];
  return parameter ? parameter.default : undefined;
}

function taskDefault(task, name) {
  const defaults = state.info && state.info.task_defaults && state.info.task_defaults[task];
  return defaults ? defaults[name] : undefined;
}

async function loadInfo() {
  try {
    const response = await fetch("info");
    if (!response.ok) throw await responseError(response);
    state.server = await response.json();
    // Several pipelines (models) in one server: a selector; the defaults and ranges shown are the chosen one's.
    const names = Object.keys(state.server.pipelines || {});
    for (const name of names) {
      const pipeline = state.server.pipelines[name];
      $("pipeline").append(new Option(`${name} (${pipeline.family})`, name)); // its model: in the header
    }
    $("pipeline").value = state.server.pipeline || names[0] || "";
    $("pipeline-choice").hidden = names.length < 2;
    showPipeline();
  } catch (error) {
    $("server").textContent = `server not reachable: ${networkError(error).message}`;
  }
}

// The form's element of a field, by its name (generated inputs' ids are prefixed: no clash with the page's).
function formField(name) {
  return $("edit").elements.namedItem(name);
}

function editFieldNames() {
  return EDIT_FIELDS.concat(state.moreFields || []);
}

function readableName(name) {
  return name.charAt(0).toUpperCase() + name.slice(1).replaceAll("_", " ");
}

// An input for each parameter of GET info's that the form does not lay out: its type, range, choices and
// meaning as the server declares them; empty (or unticked) sends nothing, so the server's default holds.
function moreFields(parameters) {
  const added = [];
  for (const [name, parameter] of Object.entries(parameters)) {
    if (formField(name) || parameter.required) continue;
    let input;
    if (parameter.type === "BOOL") {
      input = document.createElement("input");
      input.type = "checkbox";
    } else if (parameter.choices && parameter.choices.length) {
      input = document.createElement("select");
      input.append(new Option("default", ""), ...parameter.choices.map((choice) => new Option(choice, choice)));
    } else {
      input = document.createElement("input");
      const numeric = parameter.type !== "BYTES";
      input.type = numeric ? "number" : "text";
      if (numeric && parameter.type.startsWith("FP")) input.step = "any";
      if (parameter.minimum !== undefined && parameter.minimum !== null) input.min = parameter.minimum;
      if (parameter.maximum !== undefined && parameter.maximum !== null) input.max = parameter.maximum;
      input.placeholder = parameter.default === undefined ? "default" : `default ${parameter.default}`;
    }
    input.id = `param-${name}`;
    input.name = name;
    input.title = parameter.meaning;
    const label = document.createElement("label");
    label.className = parameter.type === "BOOL" ? "check" : "";
    label.append(`${readableName(name)} `, input);
    $("more-fields").append(label);
    added.push(name);
  }
  $("more-settings").hidden = !added.length && !(state.moreFields || []).length;
  state.moreFields = (state.moreFields || []).concat(added);
}

function showPipeline() {
  const pipelines = state.server.pipelines || {};
  state.info = pipelines[$("pipeline").value] || state.server;
  $("server").textContent = `model ${state.info.model} · edits at ${state.info.working_resolution} px`;
  const chosen = $("scheduler").value;
  $("scheduler").replaceChildren(new Option("default", ""));
  for (const sampler of state.info.samplers) $("scheduler").append(new Option(sampler, sampler));
  if (state.info.samplers.includes(chosen)) $("scheduler").value = chosen;
  // Only the tasks this pipeline serves (an InstructPix2Pix pipeline: instruct; the others: the inpainting ones).
  const tasks = state.info.tasks || Object.keys(TASKS);
  for (const option of $("task").options) option.hidden = option.disabled = !tasks.includes(option.value);
  if (!tasks.includes($("task").value)) $("task").value = tasks[0];
  $("control-image-choice").hidden = !controlled();
  moreFields(state.info.parameters || {});
  // A field another pipeline declared (InstructPix2Pix's image_guidance_scale) is hidden and not sent here.
  for (const name of state.moreFields || []) formField(name).closest("label").hidden = !takesParameter(name);
  showTaskHint();
  maskChanged();
}

// Whether the chosen pipeline serves a ControlNet: its edits take a control_image.
function controlled() {
  return Boolean(state.info && state.info.controlnets && state.info.controlnets.length);
}

function useControlImage(chosen) {
  state.controlImage = chosen;
  $("control-image-name").textContent = chosen ? chosen.name : "none";
  $("control-image-clear").hidden = !chosen;
  $("control_image").removeAttribute("aria-invalid");
}

// The conditioning image to send with an edit: the chosen one, on a pipeline that takes one.
function controlImageToSend() {
  return controlled() ? state.controlImage : null;
}

function takesParameter(name) {
  return !state.info || !state.info.parameters || name in state.info.parameters;
}

// ---------------------------------------------------------------- opening a photo

async function sniffFormat(file) {
  const head = new Uint8Array(await file.slice(0, 12).arrayBuffer());
  const ascii = (from, to) => String.fromCharCode(...head.slice(from, to));
  if (head[0] === 0x89 && ascii(1, 4) === "PNG") return "PNG";
  if (head[0] === 0xff && head[1] === 0xd8 && head[2] === 0xff) return "JPEG";
  if (ascii(0, 4) === "RIFF" && ascii(8, 12) === "WEBP") return "WebP";
  return null;
}

// The photo's upright size, read without decoding its pixels (an <img> knows it from the header).
function imageOf(blob) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    const url = URL.createObjectURL(blob);
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("unreadable"));
    image.src = url;
  });
}

function megapixels(pixels) {
  return `${(pixels / 1e6).toFixed(1)} MP`;
}

// Why this server would refuse a photo of this size, from GET info's limits; null when it fits.
function sizeProblem(name, width, height) {
  const limits = (state.info && state.info.limits) || {};
  if (limits.max_image_pixels && width * height > limits.max_image_pixels) {
    return `“${name}” is ${width}×${height} = ${megapixels(width * height)}; this server takes photos up to ` +
      `${megapixels(limits.max_image_pixels)} (${limits.max_image_pixels} pixels). Scale it down and open it again.`;
  }
  if (limits.min_image_side && Math.min(width, height) < limits.min_image_side) {
    return `“${name}” is ${width}×${height}; each side must be at least ${limits.min_image_side} pixels.`;
  }
  return null;
}

function displaySize(width, height) {
  const fit = Math.min(1, DISPLAY_SIDE / Math.max(width, height));
  return [Math.max(1, Math.round(width * fit)), Math.max(1, Math.round(height * fit))];
}

async function openFile(file) {
  if (state.running) {
    setStatus("An edit is running: cancel it before opening another photo.", true);
    return false;
  }
  const name = file.name || "the pasted image";
  if (!(await sniffFormat(file))) {
    setStatus(`“${name}” is not ${ACCEPTED}${file.type ? ` (it is ${file.type})` : ""}: open a photo in one of those formats.`, true);
    return false;
  }
  let image;
  try {
    image = await imageOf(file);
  } catch {
    setStatus(`“${name}” could not be read as an image: it may be damaged or cut short.`, true);
    return false;
  }
  URL.revokeObjectURL(image.src);
  const problem = sizeProblem(name, image.naturalWidth, image.naturalHeight);
  if (problem) {
    setStatus(problem, true);
    return false;
  }
  await usePhoto(file, name, image);
  // A control image is the photo's size: another photo needs its own (continuing from a result keeps it).
  useControlImage(null);
  setStatus(`${name}: ${image.naturalWidth}×${image.naturalHeight}.`);
  return true;
}

async function usePhoto(blob, name, image) {
  const [width, height] = displaySize(image.naturalWidth, image.naturalHeight);
  const scaled = document.createElement("canvas");
  scaled.width = width;
  scaled.height = height;
  const context = scaled.getContext("2d");
  context.imageSmoothingQuality = "high";
  context.drawImage(image, 0, 0, width, height); // the one full decode; upright (EXIF orientation applied)
  const view = await createImageBitmap(scaled);
  state.photo = { blob, name, width: image.naturalWidth, height: image.naturalHeight, view };
  clearCheckpoints(); // they continue another photo's edit
  for (const canvas of [stage, mask, tint]) {
    canvas.width = width;
    canvas.height = height;
  }
  state.undo = [];
  state.redo = [];
  state.clicks = [];
  state.box = null;
  state.exactMask = null;
  clearResult();
  clearProgress();
  clearInvalid();
  state.view = "mask";
  stage.dataset.view = "mask"; // shown before it is measured
  stage.dataset.ready = "1";
  stage.dataset.photoSize = `${image.naturalWidth}x${image.naturalHeight}`;
  fitStage();
  maskChanged();
}

// The canvas as large as the frame allows (small photos are enlarged too), never past the screen.
function fitStage() {
  if (!state.photo) return;
  const frame = $("stage-frame");
  const room = frame.clientWidth - 2;
  const height = Math.max(240, window.innerHeight * 0.72);
  const scale = Math.min(room / stage.width, height / stage.height);
  stage.style.width = `${Math.floor(stage.width * scale)}px`;
  stage.style.height = `${Math.floor(stage.height * scale)}px`;
  showBrushSize();
}

// ---------------------------------------------------------------- drawing

function currentTask() {
  return $("task").value;
}

function render() {
  stage.dataset.view = state.view;
  stage.classList.toggle("brush-tool", state.tool === "paint" || state.tool === "erase");
  placeCompareMarks();
  if (!state.photo) return;
  stageContext.clearRect(0, 0, stage.width, stage.height);
  if (state.view === "result" && state.result) {
    renderComparison();
  } else {
    stageContext.drawImage(state.photo.view, 0, 0);
    renderOverlay();
    renderPrompts();
  }
}

function tinted(colour, inverse) {
  // The mask's painted pixels (or, inverse, its unpainted ones) in one colour.
  tintContext.globalCompositeOperation = "copy";
  if (inverse) {
    tintContext.fillStyle = colour;
    tintContext.fillRect(0, 0, tint.width, tint.height);
    tintContext.globalCompositeOperation = "destination-out";
    tintContext.drawImage(mask, 0, 0);
  } else {
    tintContext.drawImage(mask, 0, 0);
    tintContext.globalCompositeOperation = "source-in";
    tintContext.fillStyle = colour;
    tintContext.fillRect(0, 0, tint.width, tint.height);
  }
  tintContext.globalCompositeOperation = "source-over";
  return tint;
}

function renderOverlay() {
  // What the task does with the painted area: repainted (red), or kept (green) with the rest replaced (blue).
  const overlay = TASKS[currentTask()].overlay;
  stage.dataset.overlay = overlay;
  stageContext.globalAlpha = 0.45;
  if (overlay === "keep") {
    stageContext.drawImage(tinted("#1a73e8", true), 0, 0);
    stageContext.drawImage(tinted("#1e9e3a", false), 0, 0);
  } else {
    stageContext.drawImage(tinted("#e62020", false), 0, 0);
  }
  stageContext.globalAlpha = 1;
}

function renderPrompts() {
  const s = stage.width / state.photo.width;
  for (const [x, y, label] of state.clicks) {
    stageContext.fillStyle = label ? "#0a0" : "#d00";
    stageContext.strokeStyle = "#fff";
    stageContext.beginPath();
    stageContext.arc(x * s, y * s, 6, 0, 2 * Math.PI);
    stageContext.fill();
    stageContext.stroke();
  }
  if (state.box) {
    const [x0, y0, x1, y1] = state.box;
    stageContext.strokeStyle = "#1a73e8";
    stageContext.lineWidth = 2;
    stageContext.strokeRect(x0 * s, y0 * s, (x1 - x0) * s, (y1 - y0) * s);
  }
}

function renderComparison() {
  // Before on the left of the divider, after on the right.
  stageContext.drawImage(state.result.view, 0, 0);
  stageContext.save();
  stageContext.beginPath();
  stageContext.rect(0, 0, Math.round(state.split * stage.width), stage.height);
  stageContext.clip();
  stageContext.drawImage(state.photo.view, 0, 0);
  stageContext.restore();
}

function placeCompareMarks() {
  const marks = $("compare-marks");
  marks.hidden = state.view !== "result" || !state.result;
  if (marks.hidden) return;
  marks.style.left = `${stage.offsetLeft}px`;
  marks.style.top = `${stage.offsetTop}px`;
  marks.style.width = `${stage.offsetWidth}px`;
  marks.style.height = `${stage.offsetHeight}px`;
  $("divider").style.left = `${state.split * 100}%`;
}

// ---------------------------------------------------------------- the mask

function maskPixelCount() {
  const data = maskContext.getImageData(0, 0, mask.width, mask.height).data;
  let count = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i] >= 128) count++;
  return count;
}

function maskChanged() {
  const count = maskPixelCount();
  stage.dataset.maskPixels = String(count);
  const needsMask = !MASK_OPTIONAL.has(currentTask());
  $("run").disabled = !state.photo || (needsMask && count === 0) || Boolean(state.running);
  $("undo").disabled = state.undo.length === 0;
  $("redo").disabled = state.redo.length === 0;
  $("clear").disabled = count === 0 && state.clicks.length === 0 && !state.box;
  render();
}

function snapshot() {
  return { pixels: maskContext.getImageData(0, 0, mask.width, mask.height), clicks: [...state.clicks],
           box: state.box, exactMask: state.exactMask };
}

function restore(saved) {
  maskContext.putImageData(saved.pixels, 0, 0);
  state.clicks = saved.clicks;
  state.box = saved.box;
  state.exactMask = saved.exactMask;
}

// Called before every change of the mask: what undo goes back to.
function rememberMask() {
  state.undo.push(snapshot());
  if (state.undo.length > UNDO_DEPTH) state.undo.shift();
  state.redo = [];
}

function undo() {
  if (!state.undo.length || state.running) return;
  state.redo.push(snapshot());
  restore(state.undo.pop());
  showMaskView();
  maskChanged();
}

function redo() {
  if (!state.redo.length || state.running) return;
  state.undo.push(snapshot());
  restore(state.redo.pop());
  showMaskView();
  maskChanged();
}

function clearMask() {
  rememberMask();
  maskContext.clearRect(0, 0, mask.width, mask.height);
  state.clicks = [];
  state.box = null;
  state.exactMask = null;
  maskChanged();
}

// A photo-sized mask PNG (white = the painted pixels), as the server takes it.
async function maskForSending() {
  if (state.exactMask) return state.exactMask;
  const full = document.createElement("canvas");
  full.width = state.photo.width;
  full.height = state.photo.height;
  const context = full.getContext("2d");
  context.fillStyle = "#000";
  context.fillRect(0, 0, full.width, full.height);
  context.imageSmoothingQuality = "high"; // smooth edges; the server repaints pixels >= 128
  context.drawImage(mask, 0, 0, full.width, full.height);
  return new Promise((resolve) => full.toBlob(resolve, "image/png"));
}

// A photo-sized mask (255 = on) drawn into the painting canvas as its painted pixels.
async function useMaskImage(blob) {
  const bitmap = await createImageBitmap(blob, { resizeWidth: mask.width, resizeHeight: mask.height, resizeQuality: "high" });
  maskContext.clearRect(0, 0, mask.width, mask.height);
  maskContext.drawImage(bitmap, 0, 0);
  const pixels = maskContext.getImageData(0, 0, mask.width, mask.height);
  const data = pixels.data;
  for (let i = 0; i < data.length; i += 4) {
    data[i + 3] = data[i]; // the grey level becomes how painted the pixel is
    data[i] = data[i + 1] = data[i + 2] = 255;
  }
  maskContext.putImageData(pixels, 0, 0);
}

// ---------------------------------------------------------------- pointer: painting, clicks, box, divider

function stagePoint(event) {
  const rect = stage.getBoundingClientRect();
  const x = ((event.clientX - rect.left) * stage.width) / rect.width;
  const y = ((event.clientY - rect.top) * stage.height) / rect.height;
  return [Math.max(0, Math.min(stage.width, x)), Math.max(0, Math.min(stage.height, y))];
}

function photoPoint(event) {
  const [x, y] = stagePoint(event);
  const s = state.photo.width / stage.width;
  return [x * s, y * s];
}

function brushWidth() {
  // The slider is in screen pixels (the cursor's size); the canvas may be shown larger or smaller.
  return (Number($("brush").value) * stage.width) / stage.getBoundingClientRect().width;
}

function paintTo(point) {
  maskContext.globalCompositeOperation = state.tool === "paint" ? "source-over" : "destination-out";
  maskContext.strokeStyle = maskContext.fillStyle = "#fff";
  maskContext.lineWidth = brushWidth();
  maskContext.lineCap = maskContext.lineJoin = "round";
  maskContext.beginPath();
  maskContext.moveTo(...state.stroke);
  maskContext.lineTo(...point);
  maskContext.stroke();
  maskContext.globalCompositeOperation = "source-over";
  state.stroke = point;
  render();
}

function moveCursor(event) {
  const cursor = $("cursor");
  const brush = state.view === "mask" && (state.tool === "paint" || state.tool === "erase");
  cursor.hidden = !brush;
  if (!brush) return;
  const size = Number($("brush").value);
  const frame = $("stage-frame").getBoundingClientRect();
  cursor.style.width = cursor.style.height = `${size}px`;
  cursor.style.left = `${event.clientX - frame.left - size / 2}px`;
  cursor.style.top = `${event.clientY - frame.top - size / 2}px`;
}

function moveDivider(event) {
  const rect = stage.getBoundingClientRect();
  state.split = Math.max(0, Math.min(1, (event.clientX - rect.left) / rect.width));
  $("split").value = String(Math.round(state.split * 100));
  render();
}

function pointerDown(event) {
  if (!state.photo || state.running) return;
  stage.setPointerCapture(event.pointerId);
  if (state.view === "result") {
    moveDivider(event);
  } else if (state.tool === "paint" || state.tool === "erase") {
    rememberMask();
    state.exactMask = null;
    state.stroke = stagePoint(event);
    paintTo(state.stroke);
  } else if (state.tool === "box") {
    rememberMask(); // undo takes back the box and the mask it finds
    state.boxStart = photoPoint(event);
  } else {
    rememberMask(); // undo takes back the click and the mask it finds
    const [x, y] = photoPoint(event);
    state.clicks.push([Math.round(x), Math.round(y), state.tool === "object" ? 1 : 0]);
    render();
    segment();
  }
}

function pointerMove(event) {
  moveCursor(event);
  if (!state.photo) return;
  if (state.view === "result" && event.buttons) moveDivider(event);
  if (state.stroke) paintTo(stagePoint(event));
  if (state.boxStart) {
    const [x, y] = photoPoint(event);
    const [x0, y0] = state.boxStart;
    state.box = [Math.min(x0, x), Math.min(y0, y), Math.max(x0, x), Math.max(y0, y)].map(Math.round);
    render();
  }
}

function pointerUp() {
  if (state.stroke) {
    state.stroke = null;
    maskChanged();
  }
  if (state.boxStart) {
    state.boxStart = null;
    if (state.box && state.box[2] > state.box[0] && state.box[3] > state.box[1]) segment();
  }
}

// ---------------------------------------------------------------- click-to-mask

let segmentation = 0; // the latest request: an older answer arriving late must not replace a newer mask

// The predicted IoU in words: a raw "-0.023" tells a person nothing.
function maskConfidence(score) {
  if (score >= 0.9) return "Mask ready.";
  if (score >= 0.7) return "Mask ready; check its edges, and click the background where it spills over.";
  return "Mask ready, but the model is unsure of it: click on more of the object, or on the background, to refine it.";
}

async function segment() {
  const ticket = ++segmentation;
  const form = new FormData();
  form.append("image", state.photo.blob);
  if (state.clicks.length) form.append("points", JSON.stringify(state.clicks));
  if (state.box) form.append("box", JSON.stringify(state.box));
  setStatus("Finding the object…");
  try {
    const response = await fetch("segment", { method: "POST", body: form });
    if (!response.ok) throw await responseError(response);
    const found = await response.blob();
    if (ticket !== segmentation) return;
    await useMaskImage(found);
    state.exactMask = found;
    const score = Number(response.headers.get("X-Score"));
    stage.dataset.score = String(score);
    setStatus(maskConfidence(score));
    maskChanged();
  } catch (error) {
    if (ticket === segmentation) setStatus(`Finding the object failed: ${networkError(error).message}`, true);
  }
}

// ---------------------------------------------------------------- the edit

function editFields() {
  const fields = {};
  for (const name of editFieldNames()) {
    const element = formField(name);
    if (name === "pipeline" && $("pipeline-choice").hidden) continue; // one pipeline: the plain entry points
    if ((state.moreFields || []).includes(name) && !takesParameter(name)) continue; // another pipeline's
    if (name in TASK_FIELDS && currentTask() !== TASK_FIELDS[name]) continue; // another task's
    if (name === "checkpoint_every" && (!checkpointsOffered() || Number(element.value) <= 0)) continue;
    if (element.type === "checkbox") {
      if (element.checked) fields[name] = "true";
      continue;
    }
    const value = element.value.trim();
    if (value !== "" || name === "prompt") fields[name] = value;
  }
  return fields;
}

function checkSeed(seed) {
  if (seed === undefined) return;
  if (!/^[0-9]{1,19}$/.test(seed) || BigInt(seed) > INT64_MAX) {
    throw new RequestError(`seed: must be a whole number from 0 to ${INT64_MAX}, or empty for a random one; got “${seed}”`, "seed");
  }
}

// "step 7 of 7 — strength 0.75 of 10 steps": with strength < 1 only about strength × steps run.
function progressText(step, total, fields) {
  const steps = Number(fields.num_inference_steps || defaultOf("num_inference_steps"));
  const strength = fields.strength || taskDefault(fields.task, "strength") || defaultOf("strength");
  const text = `step ${step} of ${total}`;
  return steps && total < steps ? `${text} — strength ${strength} of ${steps} steps` : text;
}

// Server-Sent Events over a POST: EventSource only does GET, so the stream is read here, line by line
// as the SSE format defines it (comments skipped, multi-line data joined, CRLF accepted).
async function* serverEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let pending = "";
  let kind = "message";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    pending += decoder.decode(value, { stream: true });
    const lines = pending.split(/\r?\n/);
    pending = lines.pop(); // an incomplete last line waits for the next chunk
    for (const line of lines) {
      if (line === "") {
        if (data.length) yield [kind, JSON.parse(data.join("\n"))];
        kind = "message";
        data = [];
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") kind = text;
        else if (field === "data") data.push(text);
      }
    }
  }
}

function pngBlob(base64, type = "image/png") {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type });
}

function newRequestId() {
  // crypto.randomUUID needs a secure context; a gateway on plain HTTP in a LAN is not one
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

function showProgress(text) {
  $("progress").hidden = false;
  $("step").textContent = text;
}

function clearProgress() {
  $("progress").hidden = true;
  $("bar").value = 0;
  $("step").textContent = "";
  $("preview").hidden = true;
  $("preview").removeAttribute("src");
}

function setRunning(controller) {
  state.running = controller;
  $("cancel").hidden = !controller;
  $("edit").setAttribute("aria-busy", String(Boolean(controller)));
  maskChanged();
}

async function runEdit(event) {
  event.preventDefault();
  if (!state.photo || state.running) return;
  clearInvalid();
  const fields = editFields();
  try {
    checkSeed(fields.seed);
  } catch (error) {
    setStatus(readable(error), true);
    return;
  }
  const photo = state.photo;
  clearCheckpoints();
  await streamEdit("edit/inpaint/stream", fields, async () => {
    // Nothing painted for a task that needs no mask: none sent, and the whole photo is edited.
    const unpainted = MASK_OPTIONAL.has(fields.task) && !state.exactMask && maskPixelCount() === 0;
    const maskBlob = unpainted ? null : await maskForSending();
    const controlImage = controlImageToSend();
    const form = new FormData();
    form.append("image", photo.blob, photo.name);
    if (maskBlob) form.append("mask_image", maskBlob, "mask.png");
    if (controlImage) form.append("control_image", controlImage.blob, controlImage.name);
    for (const [name, value] of Object.entries(fields)) form.append(name, value);
    return [form, { photo, maskBlob, controlImage }];
  });
}

// One streamed edit (a new one, or one resumed from a checkpoint): ``build`` makes the form and what was
// sent ({photo, maskBlob, controlImage}: kept with the result and its checkpoints).
async function streamEdit(url, fields, build) {
  const controller = new AbortController();
  const requestId = newRequestId();
  stage.dataset.requestId = requestId;
  clearResult();
  clearProgress();
  $("preview").dataset.previews = "0"; // previews of this edit
  setRunning(controller); // at once: a second click must not send the edit twice
  showProgress("waiting for the server…");
  setStatus("Editing…");
  try {
    const [form, sent] = await build();
    const response = await fetch(url, { method: "POST", body: form, signal: controller.signal,
                                        headers: { "X-Request-Id": requestId } });
    if (!response.ok) throw await responseError(response);
    const done = await followEdit(response, fields, { ...sent, requestId });
    if (!done) throw new RequestError("the edit's stream ended without a result");
  } catch (error) {
    if (controller.signal.aborted) {
      clearProgress();
      setStatus("Edit cancelled.");
    } else {
      editFailed(networkError(error));
    }
  } finally {
    setRunning(null);
  }
}

async function followEdit(response, fields, sent) {
  for await (const [kind, data] of serverEvents(response)) {
    if (kind === "progress" || kind === "preview") {
      $("bar").max = data.total_steps;
      $("bar").value = data.step;
      showProgress(progressText(data.step, data.total_steps, fields));
    }
    if (kind === "checkpoint") {
      addCheckpoint(data, fields, sent);
    } else if (kind === "preview") {
      $("preview").src = `data:image/png;base64,${data.png_base64}`;
      $("preview").hidden = false;
      $("preview").dataset.previews = String(Number($("preview").dataset.previews) + 1);
    } else if (kind === "result") {
      await editDone(data, fields, sent);
      return true;
    } else if (kind === "error") {
      throw new RequestError(data.message, data.field || null);
    }
  }
  return false;
}

async function editDone(data, fields, sent) {
  const image = data.images[0];
  const blob = pngBlob(image.png_base64);
  const record = image.parameters && image.parameters.parameters;
  const entry = { photo: sent.photo, maskBlob: sent.maskBlob, controlImage: sent.controlImage || null,
                  requestId: data.request_id || sent.requestId, blob,
                  url: URL.createObjectURL(blob), seed: image.seed,
                  // the PNG records what the server resolved, not which of its pipelines edited
                  parameters: record ? { ...record, pipeline: fields.pipeline } : fields };
  clearProgress();
  await showResult(entry);
  addHistory(entry);
  setStatus(`Done in ${data.elapsed_s} s · seed ${entry.seed}. Drag on the image to compare before and after.`);
}

function editFailed(error) {
  clearResult();
  clearProgress();
  render();
  setStatus(`Edit failed: ${readable(error)}`, true);
}

function cancelEdit() {
  if (state.running) state.running.abort(); // closes the stream: the gateway cancels the edit on the server
}

// ---------------------------------------------------------------- the result

async function showResult(entry) {
  entry.view = entry.view || await createImageBitmap(entry.blob, { resizeWidth: stage.width, resizeHeight: stage.height,
                                                                   resizeQuality: "high" });
  state.result = entry;
  state.view = "result";
  $("download").href = entry.url;
  $("download").download = `edited-${entry.seed}.png`;
  $("result-bar").hidden = false;
  $("toggle-view").textContent = "Edit the mask";
  render();
}

function clearResult() {
  state.result = null;
  $("result-bar").hidden = true;
  $("download").removeAttribute("href");
  if (state.photo) state.view = "mask";
}

function showMaskView() {
  if (state.view !== "result") return;
  state.view = "mask";
  $("toggle-view").textContent = "Show the result";
}

function toggleView() {
  if (!state.result) return;
  if (state.view === "result") {
    showMaskView();
  } else {
    state.view = "result";
    $("toggle-view").textContent = "Edit the mask";
  }
  render();
}

// The result becomes the photo being edited: its PNG is what the next edit sends.
async function continueFromResult() {
  const entry = state.result;
  if (!entry || state.running) return;
  const image = await imageOf(entry.blob);
  URL.revokeObjectURL(image.src);
  await usePhoto(entry.blob, `edited-${entry.seed}.png`, image);
  setStatus(`Editing the result (seed ${entry.seed}): paint the next area to change.`);
}

// ---------------------------------------------------------------- history

function describeEdit(entry) {
  const p = entry.parameters;
  const prompt = p.prompt ? ` “${p.prompt}”` : "";
  const several = state.server && Object.keys(state.server.pipelines || {}).length > 1;
  const pipeline = several && p.pipeline ? `${p.pipeline}: ` : "";
  return `${pipeline}${p.task || "inpaint"}${prompt} · ${p.num_inference_steps || "default"} steps · seed ${entry.seed}`;
}

function addHistory(entry) {
  state.history.push(entry);
  const item = document.createElement("li");
  const thumbnail = document.createElement("img");
  thumbnail.src = entry.url;
  thumbnail.alt = "";
  const text = document.createElement("span");
  text.textContent = describeEdit(entry);
  const reload = document.createElement("button");
  reload.type = "button";
  reload.textContent = "Reload";
  reload.addEventListener("click", () => reloadEdit(entry));
  item.append(thumbnail, text, reload);
  $("history").append(item);
  $("history-empty").hidden = true;
}

// The edit as it was: its photo, the very mask PNG it sent, its parameters as the server resolved
// them (seed included), and its result. Run again reproduces the PNG byte for byte.
async function reloadEdit(entry) {
  if (state.running) return;
  const image = await imageOf(entry.photo.blob);
  URL.revokeObjectURL(image.src);
  await usePhoto(entry.photo.blob, entry.photo.name, image);
  if (entry.maskBlob) await useMaskImage(entry.maskBlob);
  else maskContext.clearRect(0, 0, mask.width, mask.height); // a whole-photo edit: nothing painted
  state.exactMask = entry.maskBlob;
  useControlImage(entry.controlImage || null);
  for (const name of editFieldNames()) {
    const value = entry.parameters[name];
    const element = formField(name);
    if (element.type === "checkbox") element.checked = value === true || value === "true";
    else if (value !== undefined && value !== null && !STREAM_FIELDS.has(name)) element.value = String(value);
  }
  showTaskHint();
  if (state.server) showPipeline();
  maskChanged();
  entry.view = null; // the stage may have another size now
  await showResult(entry);
  setStatus(`Reloaded: ${describeEdit(entry)}. Run reproduces it.`);
}

// ---------------------------------------------------------------- checkpoints

// The server takes checkpoints of one image, and of every task but text_edit (its state would be the whole
// inversion's trajectory).
function checkpointsOffered() {
  const count = formField("num_images");
  return currentTask() !== "text_edit" && !(count && count.value.trim() !== "" && Number(count.value) > 1);
}

function showCheckpointChoice() {
  $("checkpoint-choice").hidden = !checkpointsOffered();
}

function clearCheckpoints() {
  $("checkpoint-list").replaceChildren();
  $("checkpoints").hidden = true;
  closeTouchUp();
}

// A checkpoint event: its image (the edited region at the edit's working size) with its step, and the action.
function addCheckpoint(data, fields, sent) {
  const checkpoint = { step: data.step, total: data.total_steps, png: data.png_base64, state: data.resume_state_base64 };
  const item = document.createElement("li");
  item.dataset.step = String(data.step);
  const image = document.createElement("img");
  image.src = `data:image/png;base64,${data.png_base64}`;
  image.alt = `the edit at step ${data.step}`;
  const button = document.createElement("button");
  button.type = "button";
  button.className = "continue-checkpoint";
  button.textContent = "Continue from here";
  button.addEventListener("click", () => openTouchUp(checkpoint, fields, sent));
  item.append(image, `step ${data.step} of ${data.total_steps}`, button);
  $("checkpoint-list").append(item);
  $("checkpoints").hidden = false;
}

// The checkpoint on a canvas of its own size, to paint on with a coloured brush.
async function openTouchUp(checkpoint, fields, sent) {
  if (state.running) return;
  const bitmap = await createImageBitmap(pngBlob(checkpoint.png));
  const canvas = $("touch-canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  canvas.getContext("2d").drawImage(bitmap, 0, 0);
  canvas.dataset.strokes = "0";
  state.touchUp = { checkpoint, fields, sent, bitmap, stroke: null };
  $("touch-up-title").textContent = `Touch up step ${checkpoint.step} of ${checkpoint.total}`;
  $("touch-up").hidden = false;
  $("touch-up").scrollIntoView({ block: "nearest" });
  setStatus("Paint on the checkpoint, then Continue the edit: it carries on from that step with your change.");
}

function closeTouchUp() {
  state.touchUp = null;
  $("touch-up").hidden = true;
}

function touchPoint(event) {
  const canvas = $("touch-canvas");
  const box = canvas.getBoundingClientRect();
  return [((event.clientX - box.left) * canvas.width) / box.width, ((event.clientY - box.top) * canvas.height) / box.height];
}

function touchPaint(point) {
  const touch = state.touchUp;
  const context = $("touch-canvas").getContext("2d");
  context.strokeStyle = context.fillStyle = $("touch-colour").value;
  context.lineWidth = Number($("touch-brush").value);
  context.lineCap = context.lineJoin = "round";
  context.beginPath();
  context.moveTo(...(touch.stroke || point));
  context.lineTo(...point);
  context.stroke();
  touch.stroke = point;
}

function touchDown(event) {
  if (!state.touchUp || event.button !== 0) return;
  $("touch-canvas").setPointerCapture(event.pointerId);
  state.touchUp.stroke = null;
  touchPaint(touchPoint(event));
}

function touchMove(event) {
  if (state.touchUp && state.touchUp.stroke) touchPaint(touchPoint(event));
}

function touchUp() {
  if (!state.touchUp || !state.touchUp.stroke) return;
  state.touchUp.stroke = null;
  const canvas = $("touch-canvas");
  canvas.dataset.strokes = String(Number(canvas.dataset.strokes) + 1);
}

function touchReset() {
  if (!state.touchUp) return;
  const canvas = $("touch-canvas");
  canvas.getContext("2d").drawImage(state.touchUp.bitmap, 0, 0);
  canvas.dataset.strokes = "0";
}

// The edit continued from the checkpoint: the first edit's photo and mask (the very bytes it sent), the
// state, and the painted canvas as resume_image; no parameter (the state holds them).
async function resumeEdit() {
  const touch = state.touchUp;
  if (!touch || state.running) return;
  const canvas = $("touch-canvas");
  const painted = Number(canvas.dataset.strokes) > 0;
  const resumeImage = painted ? await new Promise((resolve) => canvas.toBlob(resolve, "image/png")) : null;
  const fields = { ...touch.fields };
  const stream = {};
  for (const name of STREAM_FIELDS) {
    if (name in fields) stream[name] = fields[name];
    delete fields[name];
  }
  const every = formField("checkpoint_every");
  if (checkpointsOffered() && Number(every.value) > 0) stream.checkpoint_every = every.value.trim();
  else delete stream.checkpoint_every;
  if ($("preview_every").value.trim() !== "") stream.preview_every = $("preview_every").value.trim();
  closeTouchUp();
  clearCheckpoints();
  await streamEdit("edit/resume/stream", touch.fields, async () => {
    const form = new FormData();
    form.append("image", touch.sent.photo.blob, touch.sent.photo.name);
    if (touch.sent.maskBlob) form.append("mask_image", touch.sent.maskBlob, "mask.png");
    // the conditioning image the first edit sent, as its photo: the state holds the digests of both
    const control = touch.sent.controlImage;
    if (control) form.append("control_image", control.blob, control.name);
    form.append("resume_state", pngBlob(touch.checkpoint.state, "application/octet-stream"), "checkpoint.state");
    if (resumeImage) form.append("resume_image", resumeImage, "painted.png");
    if (fields.pipeline) form.append("pipeline", fields.pipeline);
    for (const [name, value] of Object.entries(stream)) form.append(name, value);
    return [form, { photo: touch.sent.photo, maskBlob: touch.sent.maskBlob, controlImage: touch.sent.controlImage }];
  });
}

// ---------------------------------------------------------------- controls

function showTaskHint() {
  const task = TASKS[currentTask()] || TASKS.inpaint;
  const tool = { object: " Click on the object to select it.", background: " Click on the background to take it out of the mask.",
                 box: " Drag a box around the object." }[state.tool] || "";
  $("hint").textContent = task.hint + tool;
  $("prompt").placeholder = task.placeholder;
  for (const [name, only] of Object.entries(TASK_FIELDS)) {
    const field = formField(name);
    if (!field) continue; // this server declares no such field
    const shown = takesParameter(name) && currentTask() === only;
    field.closest("label").hidden = !shown;
    if (shown) $("more-settings").open = true;
  }
  showCheckpointChoice();
  render();
}

function showBrushSize() {
  const size = Number($("brush").value);
  let text = `${size} px`;
  if (state.photo) {
    const onPhoto = Math.round((brushWidth() * state.photo.width) / stage.width);
    if (onPhoto !== size) text += ` (${onPhoto} px of the photo)`;
  }
  $("brush-size").value = text;
  $("brush-size").textContent = text;
}

function chooseTool(button) {
  state.tool = button.dataset.tool;
  document.querySelectorAll(".tool").forEach((b) => b.classList.toggle("active", b === button));
  showMaskView();
  showTaskHint();
}

function isTextEntry(element) {
  return element && (element.tagName === "TEXTAREA" || (element.tagName === "INPUT" && element.type !== "range"));
}

function onKey(event) {
  if (!(event.ctrlKey || event.metaKey) || isTextEntry(document.activeElement)) return; // inputs keep their own undo
  const key = event.key.toLowerCase();
  if (key === "z" && !event.shiftKey) undo();
  else if ((key === "z" && event.shiftKey) || key === "y") redo();
  else return;
  event.preventDefault();
}

function firstFile(transfer) {
  return transfer && transfer.files && transfer.files.length ? transfer.files[0] : null;
}

function onPaste(event) {
  const file = firstFile(event.clipboardData);
  if (!file) return; // text pasted into a field stays there
  event.preventDefault();
  openFile(file);
}

function setUpDropping() {
  const frame = $("stage-frame");
  const over = (event) => {
    event.preventDefault();
    frame.classList.add("dropping");
  };
  frame.addEventListener("dragenter", over);
  frame.addEventListener("dragover", over);
  frame.addEventListener("dragleave", () => frame.classList.remove("dropping"));
  // Anywhere on the page: a photo dropped beside the frame must not make the browser navigate to it.
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    frame.classList.remove("dropping");
    const file = firstFile(event.dataTransfer);
    if (file) openFile(file);
  });
}

function setUp() {
  stage.addEventListener("pointerdown", pointerDown);
  stage.addEventListener("pointermove", pointerMove);
  stage.addEventListener("pointerup", pointerUp);
  stage.addEventListener("pointercancel", pointerUp);
  stage.addEventListener("pointerleave", () => { $("cursor").hidden = true; });
  for (const button of document.querySelectorAll(".tool")) button.addEventListener("click", () => chooseTool(button));
  $("brush").addEventListener("input", showBrushSize);
  $("undo").addEventListener("click", undo);
  $("redo").addEventListener("click", redo);
  $("clear").addEventListener("click", clearMask);
  $("photo").addEventListener("change", (event) => {
    const file = event.target.files[0];
    event.target.value = ""; // choosing the same file again opens it again
    if (file) openFile(file);
  });
  $("control_image").addEventListener("change", (event) => {
    const file = event.target.files[0];
    event.target.value = ""; // the chosen file is kept in the state; choosing it again replaces it
    if (file) useControlImage({ blob: file, name: file.name });
  });
  $("control-image-clear").addEventListener("click", () => useControlImage(null));
  $("task").addEventListener("change", () => {
    showTaskHint();
    maskChanged();
  });
  $("edit").addEventListener("input", showCheckpointChoice);
  $("touch-canvas").addEventListener("pointerdown", touchDown);
  $("touch-canvas").addEventListener("pointermove", touchMove);
  $("touch-canvas").addEventListener("pointerup", touchUp);
  $("touch-canvas").addEventListener("pointercancel", touchUp);
  $("touch-reset").addEventListener("click", touchReset);
  $("touch-close").addEventListener("click", closeTouchUp);
  $("resume").addEventListener("click", resumeEdit);
  $("pipeline").addEventListener("change", showPipeline);
  $("split").addEventListener("input", (event) => {
    state.split = Number(event.target.value) / 100;
    render();
  });
  $("toggle-view").addEventListener("click", toggleView);
  $("continue").addEventListener("click", continueFromResult);
  $("edit").addEventListener("submit", runEdit);
  $("cancel").addEventListener("click", cancelEdit);
  $("edit").addEventListener("input", (event) => event.target.removeAttribute("aria-invalid"));
  document.addEventListener("keydown", onKey);
  document.addEventListener("paste", onPaste);
  window.addEventListener("resize", () => {
    fitStage();
    render();
  });
  setUpDropping();
  showTaskHint();
  showBrushSize();
  loadInfo();
}

// For tests and integrations: the mask as it would be sent (a photo-sized PNG), as a data URL.
window.smartedit = {
  maskPng: async () => {
    const blob = await maskForSending();
    return new Promise((resolve) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.readAsDataURL(blob);
    });
  },
  paintingSize: () => [mask.width, mask.height],
};

setUp();
