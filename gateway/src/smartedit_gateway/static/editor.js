// SmartEdit's browser editor: one page, no build step. It talks to the gateway it is served by
// (relative URLs, so it also works under an Ingress path prefix):
//   POST segment             clicks / a box -> the object's mask (Segment Anything)
//   POST edit/inpaint/stream the edit as Server-Sent Events: progress, previews, the result
//   GET  info                what the server offers (shown in the header)
"use strict";

const $ = (id) => document.getElementById(id);
const stage = $("stage");
const context = stage.getContext("2d");
const mask = document.createElement("canvas"); // the photo's size: white = repaint
const maskContext = mask.getContext("2d");

const state = {
  photo: null, // ImageBitmap
  photoBlob: null,
  tool: "paint",
  painting: false,
  clicks: [], // [x, y, label] in the photo's pixels
  boxStart: null,
  box: null,
  history: [],
};

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function scale() {
  return stage.width / state.photo.width;
}

function photoPoint(event) {
  const rect = stage.getBoundingClientRect();
  const x = ((event.clientX - rect.left) * stage.width) / rect.width / scale();
  const y = ((event.clientY - rect.top) * stage.height) / rect.height / scale();
  return [Math.max(0, Math.min(state.photo.width, x)), Math.max(0, Math.min(state.photo.height, y))];
}

function draw() {
  if (!state.photo) return;
  context.clearRect(0, 0, stage.width, stage.height);
  context.drawImage(state.photo, 0, 0, stage.width, stage.height);
  // The mask in translucent red: white pixels of the mask become red, black ones transparent.
  const overlay = document.createElement("canvas");
  overlay.width = mask.width;
  overlay.height = mask.height;
  const o = overlay.getContext("2d");
  const pixels = maskContext.getImageData(0, 0, mask.width, mask.height);
  const tinted = o.createImageData(mask.width, mask.height);
  for (let i = 0; i < pixels.data.length; i += 4) {
    const on = pixels.data[i] >= 128;
    tinted.data[i] = 230;
    tinted.data[i + 3] = on ? 110 : 0;
  }
  o.putImageData(tinted, 0, 0);
  context.drawImage(overlay, 0, 0, stage.width, stage.height);
  const s = scale();
  for (const [x, y, label] of state.clicks) {
    context.fillStyle = label ? "#0a0" : "#d00";
    context.beginPath();
    context.arc(x * s, y * s, 6, 0, 2 * Math.PI);
    context.fill();
  }
  if (state.box) {
    const [x0, y0, x1, y1] = state.box;
    context.strokeStyle = "#1a73e8";
    context.lineWidth = 2;
    context.strokeRect(x0 * s, y0 * s, (x1 - x0) * s, (y1 - y0) * s);
  }
}

function maskPixelCount() {
  const data = maskContext.getImageData(0, 0, mask.width, mask.height).data;
  let count = 0;
  for (let i = 0; i < data.length; i += 4) if (data[i] >= 128) count++;
  return count;
}

function maskChanged() {
  const count = maskPixelCount();
  stage.dataset.maskPixels = String(count);
  $("run").disabled = !state.photo || count === 0;
  draw();
}

function clearMask() {
  maskContext.fillStyle = "#000";
  maskContext.fillRect(0, 0, mask.width, mask.height);
  state.clicks = [];
  state.box = null;
  maskChanged();
}

async function openPhoto(file) {
  state.photoBlob = file;
  state.photo = await createImageBitmap(file, { imageOrientation: "from-image" });
  const fit = Math.min(1, 768 / state.photo.width);
  stage.width = Math.round(state.photo.width * fit);
  stage.height = Math.round(state.photo.height * fit);
  mask.width = state.photo.width;
  mask.height = state.photo.height;
  clearMask();
  stage.dataset.ready = "1";
  setStatus(`${state.photo.width}×${state.photo.height}: paint the area to edit, or click on an object.`);
}

function paintAt(event) {
  const [x, y] = photoPoint(event);
  maskContext.fillStyle = state.tool === "paint" ? "#fff" : "#000";
  maskContext.beginPath();
  maskContext.arc(x, y, Number($("brush").value) / 2 / scale(), 0, 2 * Math.PI);
  maskContext.fill();
  draw();
}

async function errorMessage(response) {
  // The gateway answers {"field", "message"}; a proxy in front of it may answer HTML or text.
  const text = await response.text();
  try {
    return JSON.parse(text).message;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

let segmentation = 0; // the latest request: an older answer arriving late must not replace a newer mask

async function segment() {
  const ticket = ++segmentation;
  const form = new FormData();
  form.append("image", state.photoBlob);
  if (state.clicks.length) form.append("points", JSON.stringify(state.clicks));
  if (state.box) form.append("box", JSON.stringify(state.box));
  setStatus("Finding the object…");
  try {
    const response = await fetch("segment", { method: "POST", body: form });
    if (!response.ok) throw new Error(await errorMessage(response));
    const found = await createImageBitmap(await response.blob());
    if (ticket !== segmentation) return;
    maskContext.drawImage(found, 0, 0, mask.width, mask.height);
    setStatus(`Mask ready (score ${Number(response.headers.get("X-Score")).toFixed(3)}).`);
    maskChanged();
  } catch (error) {
    if (ticket === segmentation) setStatus(`Segmentation failed: ${error.message}`, true);
  }
}

stage.addEventListener("pointerdown", (event) => {
  if (!state.photo) return;
  if (state.tool === "paint" || state.tool === "erase") {
    state.painting = true;
    paintAt(event);
  } else if (state.tool === "box") {
    state.boxStart = photoPoint(event);
  } else {
    const [x, y] = photoPoint(event);
    state.clicks.push([Math.round(x), Math.round(y), state.tool === "object" ? 1 : 0]);
    segment();
  }
});
stage.addEventListener("pointermove", (event) => {
  if (state.painting) paintAt(event);
  if (state.boxStart) {
    const [x, y] = photoPoint(event);
    const [x0, y0] = state.boxStart;
    state.box = [Math.min(x0, x), Math.min(y0, y), Math.max(x0, x), Math.max(y0, y)].map(Math.round);
    draw();
  }
});
window.addEventListener("pointerup", () => {
  if (state.painting) {
    state.painting = false;
    maskChanged();
  }
  if (state.boxStart) {
    state.boxStart = null;
    if (state.box && state.box[2] > state.box[0] && state.box[3] > state.box[1]) segment();
  }
});

for (const button of document.querySelectorAll(".tool")) {
  button.addEventListener("click", () => {
    state.tool = button.dataset.tool;
    document.querySelectorAll(".tool").forEach((b) => b.classList.toggle("active", b === button));
  });
}
$("clear").addEventListener("click", clearMask);
$("photo").addEventListener("change", (event) => event.target.files[0] && openPhoto(event.target.files[0]));
$("split").addEventListener("input", (event) => {
  $("after").style.clipPath = `inset(0 0 0 ${event.target.value}%)`;
});

const EDIT_FIELDS = ["task", "prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "strength",
                     "scheduler", "seed", "mask_grow", "mask_blur", "preview_every"];

function editFields() {
  const fields = {};
  for (const name of EDIT_FIELDS) {
    const value = $(name).value.trim();
    if (value !== "" || name === "prompt") fields[name] = value;
  }
  return fields;
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

function pngUrl(base64) {
  return `data:image/png;base64,${base64}`;
}

function showResult(entry) {
  $("before").src = entry.beforeUrl;
  $("after").src = entry.url;
  $("download").href = entry.url;
  $("download").download = `edited-${entry.seed}.png`;
  $("compare").hidden = false;
}

function addHistory(entry) {
  state.history.push(entry);
  const item = document.createElement("li");
  const p = entry.parameters;
  item.textContent = `${p.task} “${p.prompt}” · ${p.num_inference_steps} steps · seed ${entry.seed} `;
  const reload = document.createElement("button");
  reload.textContent = "Reload";
  reload.addEventListener("click", async () => {
    // The edit as it was: its photo, its mask, its parameters, its result.
    await openPhoto(entry.photoBlob);
    const used = new Image();
    used.src = entry.maskUrl;
    await used.decode();
    maskContext.drawImage(used, 0, 0, mask.width, mask.height);
    maskChanged();
    for (const name of EDIT_FIELDS) {
      if (p[name] !== undefined && name !== "preview_every") $(name).value = p[name];
    }
    showResult(entry);
  });
  item.append(reload);
  $("history").append(item);
}

$("edit").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("run").disabled = true;
  const form = new FormData();
  form.append("image", state.photoBlob);
  form.append("mask_image", await new Promise((resolve) => mask.toBlob(resolve, "image/png")));
  for (const [name, value] of Object.entries(editFields())) form.append(name, value);
  setStatus("Editing…");
  try {
    const response = await fetch("edit/inpaint/stream", { method: "POST", body: form });
    if (!response.ok) throw new Error(await errorMessage(response));
    let ended = false;
    for await (const [kind, data] of serverEvents(response)) {
      if (kind === "progress") {
        $("bar").max = data.total_steps;
        $("bar").value = data.step;
        $("step").textContent = `step ${data.step}/${data.total_steps}`;
      } else if (kind === "preview") {
        $("preview").src = pngUrl(data.png_base64);
        $("preview").hidden = false;
        $("preview").dataset.previews = String(Number($("preview").dataset.previews) + 1);
      } else if (kind === "result") {
        const image = data.images[0];
        const entry = { url: pngUrl(image.png_base64), beforeUrl: URL.createObjectURL(state.photoBlob),
                        photoBlob: state.photoBlob, maskUrl: mask.toDataURL("image/png"),
                        seed: image.seed, parameters: image.parameters ? image.parameters.parameters : editFields() };
        ended = true;
        showResult(entry);
        addHistory(entry);
        setStatus(`Done in ${data.elapsed_s} s (seed ${image.seed}).`);
      } else if (kind === "error") {
        throw new Error(data.message);
      }
    }
    if (!ended) throw new Error("the stream ended without a result");
  } catch (error) {
    setStatus(`Edit failed: ${error.message}`, true);
  } finally {
    $("run").disabled = false;
  }
});

// For tests and integrations: the current mask as a PNG data URL.
window.smartedit = { maskPng: () => mask.toDataURL("image/png") };

fetch("info").then((r) => (r.ok ? r.json() : null)).then((info) => {
  if (!info) return;
  $("server").textContent = `${info.model} · ${info.working_resolution} px`;
  for (const sampler of info.samplers) $("scheduler").append(new Option(sampler, sampler));
}).catch(() => {});
