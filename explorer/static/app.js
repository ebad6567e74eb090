// The latent explorer: a client of the inference API (through the explorer's same-origin proxy, /api/...).
// Each control keeps at most one request in flight; a newer pointer position replaces a waiting one (stale
// positions are dropped, never queued). The pad and the sliders decode in the page (local.js) while they move;
// the server's decode answers for the point once it rests or is released: its class probabilities, its image
// beside the page's, and the largest difference between the two. No build step; the one dependency, ONNX Runtime
// Web, is served by the explorer itself.
"use strict";

const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22", "#17becf"];
const SLIDERS = 6;       // most active dimensions offered as sliders
const STRIP_STEPS = 8;   // images in the interpolation strip
const SAMPLES = 8;
const CHECK_AFTER_MS = 150;  // the server decodes the point once the pointer or a slider has rested this long
const $ = (id) => document.getElementById(id);

// For bench/explorer.py and the tests: the time of each decode that drew the pad's image (ms; in the page or the
// server's round trip, as ``path`` says), per control the arguments dropped as stale, and the server's checks of
// in-page images ({z, ms, diff: largest pixel difference in [0, 1], backend}).
window.explorerStats = { decodes: [], path: "server", dropped: {}, checks: [] };

const state = {
  spaces: {},    // from /api/spaces: per model, its routes, latent size, classes, scatter, directions
  space: null,
  origin: null,  // the plane: origin + u * dx + v * dy
  dx: null,
  dy: null,
  range: 3,      // the pad shows [-range, range]^2 in plane coordinates
  projected: [], // scatter points in plane coordinates
  uv: null,      // the pointer's plane coordinates
  offsets: [],   // slider offsets along the most active dimensions
  ends: [],      // clicked interpolation endpoints (latents)
  encoded: null, // plane coordinates of the last drawn image's encoding
  decoder: null, // the current space's in-page decoder, once loaded and checked
  shown: null,   // the last in-page image: {key, pixels}
  checked: null, // the key of the last point the server decoded
  checkTimer: null,
};

class ApiError extends Error {
  constructor(status, body) {
    super(`HTTP ${status}: ${body.message || JSON.stringify(body)}`);
    this.status = status;
  }
}

async function api(operation, body) {
  const route = state.space.routes[operation];
  const started = performance.now();
  const response = await fetch(`api/predictions/${route}`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const text = await response.text();
  const ms = performance.now() - started;
  let data;
  try { data = JSON.parse(text); } catch { data = { message: text }; }
  if (!response.ok) throw new ApiError(response.status, data);
  const where = data.backend ? `${data.backend} on ${data.device}` : "";
  setStatus(`${route}: ${where}, ${ms.toFixed(1)} ms`, false);
  return { data, ms };
}

function setStatus(text, error) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", error);
}

// One control's requests: at most one in flight; while it runs, only the newest argument waits.
function latest(name, send) {
  let busy = false;
  let waiting = null;
  return (arg) => {
    if (waiting !== null) {
      const dropped = window.explorerStats.dropped;
      dropped[name] = (dropped[name] || 0) + 1;
    }
    waiting = arg;
    if (busy) return;
    busy = true;
    (async () => {
      while (waiting !== null) {
        const next = waiting;
        waiting = null;
        try { await send(next); } catch (e) { setStatus(String(e.message || e), true); }
      }
      busy = false;
    })();
  };
}

const png = (b64) => `data:image/png;base64,${b64}`;

// ---- latent arithmetic -------------------------------------------------------------------------------------
const add = (a, b, s = 1) => a.map((x, i) => x + s * b[i]);
const dot = (a, b) => a.reduce((acc, x, i) => acc + x * b[i], 0);
const unit = (dim, d) => Array.from({ length: dim }, (_, i) => (i === d ? 1 : 0));

function basis(choice) {
  const sp = state.space;
  const [kind, index] = choice.split(":");
  return kind === "pc" ? sp.principal_directions[Number(index)] : unit(sp.latent_dim, Number(index));
}

function planePoint(u, v) {
  return add(add(state.origin, state.dx, u), state.dy, v);
}

function currentLatent() {
  let z = planePoint(...state.uv);
  state.space.active_order.slice(0, SLIDERS).forEach((d, i) => { z[d] += state.offsets[i]; });
  return z.map((x) => Math.round(x * 1e5) / 1e5);
}

// ---- the pad -----------------------------------------------------------------------------------------------
const pad = $("pad");
const ctx = pad.getContext("2d");
const toPixel = (u, v) => [(u / state.range + 1) * pad.width / 2, (1 - v / state.range) * pad.height / 2];
const toPlane = (x, y) => [(2 * x / pad.width - 1) * state.range, (1 - 2 * y / pad.height) * state.range];

function setPlane() {
  const sp = state.space;
  if (sp.latent_dim === 2) {
    state.origin = [0, 0];
    state.dx = [1, 0];
    state.dy = [0, 1];
    state.range = 3;
  } else {
    state.origin = sp.scatter_means[0].map((_, j) => sp.scatter_means.reduce((a, m) => a + m[j], 0)
      / sp.scatter_means.length);
    state.dx = basis($("axis-x").value);
    state.dy = basis($("axis-y").value);
  }
  state.projected = sp.scatter_means.map((m) => {
    const c = add(m, state.origin, -1);
    return [dot(c, state.dx), dot(c, state.dy)];
  });
  if (sp.latent_dim !== 2) {
    const extent = Math.max(...state.projected.map(([u, v]) => Math.max(Math.abs(u), Math.abs(v))));
    state.range = Math.ceil(extent * 1.05 * 10) / 10;
  }
  state.uv = state.uv || [0, 0];
  state.ends = [];
  drawPad();
}

function drawPad() {
  const sp = state.space;
  ctx.clearRect(0, 0, pad.width, pad.height);
  ctx.strokeStyle = "#ddd";
  ctx.beginPath();
  const [cx, cy] = toPixel(0, 0);
  ctx.moveTo(cx, 0); ctx.lineTo(cx, pad.height); ctx.moveTo(0, cy); ctx.lineTo(pad.width, cy);
  ctx.stroke();
  state.projected.forEach(([u, v], i) => {
    const [x, y] = toPixel(u, v);
    ctx.fillStyle = COLORS[sp.scatter_labels[i]];
    ctx.globalAlpha = 0.55;
    ctx.fillRect(x - 1.5, y - 1.5, 3, 3);
  });
  ctx.globalAlpha = 1;
  state.ends.forEach((end, i) => marker(end.uv, "#000", i === 0 ? "A" : "B"));
  if (state.encoded) marker(state.encoded, "#d00", "drawn");
  if (state.uv) marker(state.uv, "#000", "");
  ctx.fillStyle = "#666";
  ctx.font = "11px sans-serif";
  ctx.fillText(`[-${state.range}, ${state.range}]²`, 6, pad.height - 6);
}

function marker([u, v], color, text) {
  const [x, y] = toPixel(u, v);
  ctx.strokeStyle = color;
  ctx.lineWidth = 2;
  ctx.beginPath();
  ctx.arc(x, y, 6, 0, 2 * Math.PI);
  ctx.stroke();
  ctx.lineWidth = 1;
  if (text) {
    ctx.fillStyle = color;
    ctx.font = "bold 12px sans-serif";
    ctx.fillText(text, x + 8, y - 8);
  }
}

// The server decodes every position (the in-page decoder is off or unavailable).
const decodePoint = latest("decode", async (z) => {
  const { data, ms } = await api("decode", { latents: [z], format: "json" });
  window.explorerStats.decodes.push(ms);
  window.explorerStats.path = "server";
  $("decoded").src = png(data.images[0]);
  $("point").textContent = `|z| = ${Math.hypot(...z).toFixed(2)}`;
  showClasses(data.class_probabilities[0]);
  requestEdit();
});

// ---- in-page decoding (local.js), checked by the server's decode once the point rests ---------------------------
const keyOf = (z) => `${state.space.latent_dim}:${z.join(",")}`;
const pageImage = $("decoded-page").getContext("2d");

// The point decoded in the page, drawn on the big canvas; timed from the latent to the pixels drawn.
const decodeLocal = latest("decode", async ({ decoder, z }) => {
  const started = performance.now();
  const { pixels, width, height } = await inPage.decode(decoder, z);
  const rgba = new ImageData(width, height);
  pixels.forEach((v, i) => {
    rgba.data[4 * i] = v;
    rgba.data[4 * i + 1] = v;
    rgba.data[4 * i + 2] = v;
    rgba.data[4 * i + 3] = 255;
  });
  pageImage.putImageData(rgba, 0, 0);
  window.explorerStats.decodes.push(performance.now() - started);
  window.explorerStats.path = "in_page";
  state.shown = { key: keyOf(z), pixels };
  $("point").textContent = `|z| = ${Math.hypot(...z).toFixed(2)}`;
});

async function pngPixels(b64) {
  const img = new Image();
  img.src = png(b64);
  await img.decode();
  const canvas = document.createElement("canvas");
  canvas.width = img.width;
  canvas.height = img.height;
  const g = canvas.getContext("2d", { willReadFrequently: true });
  g.drawImage(img, 0, 0);
  const rgba = g.getImageData(0, 0, img.width, img.height).data;
  return Uint8Array.from({ length: img.width * img.height }, (_, i) => rgba[4 * i]);
}

// The server's decode of the point the page decoded: its class probabilities, its image (the served decoder, int8
// on CPU) beside the page's (fp32), and the largest difference between the two, against the export's parity figure.
const checkPoint = latest("check", async (z) => {
  const key = keyOf(z);
  const { data, ms } = await api("decode", { latents: [z], format: "json" });
  showClasses(data.class_probabilities[0]);
  requestEdit();
  $("decoded").src = png(data.images[0]);
  const served = await pngPixels(data.images[0]);
  const badge = $("local-diff");
  if (state.shown && state.shown.key === key) {
    const diff = served.reduce((m, v, i) => Math.max(m, Math.abs(v - state.shown.pixels[i])), 0) / 255;
    // What the export's parity report allows: each decoder's largest difference from the fp32 eager decoder, the
    // server's and the page's, plus the rounding of both images to 8 bits.
    const parity = state.space.parity_max_abs;
    const bound = parity[data.backend] + parity[state.space.decoder.backend] + 1 / 255;
    window.explorerStats.checks.push({ z, ms, diff, backend: data.backend });
    badge.textContent = `server Δ ${diff.toFixed(3)}`;
    badge.title = `the server's image (${data.backend}) of this point; Δ: its largest pixel difference from the ` +
      `page's (${state.space.decoder.backend}), in [0, 1]. The export's parity report allows up to ` +
      `${bound.toFixed(3)}: both decoders' largest difference from the fp32 eager decoder, 8-bit rounding included`;
    badge.classList.toggle("over", diff > bound);
    badge.hidden = false;
  }
});

function checkNow() {
  clearTimeout(state.checkTimer);
  if (!localOn()) return;
  const z = currentLatent();
  if (keyOf(z) === state.checked) return;
  state.checked = keyOf(z);
  checkPoint(z);
}

const localOn = () => $("local-decode").checked && state.decoder !== null;

// The current point decoded: in the page while it moves (the server once it rests), or by the server.
function decodeHere() {
  const z = currentLatent();
  if (!localOn()) {
    decodePoint(z);
    return;
  }
  decodeLocal({ decoder: state.decoder, z });
  clearTimeout(state.checkTimer);
  state.checkTimer = setTimeout(checkNow, CHECK_AFTER_MS);
}

function decoderState(text, failed) {
  const line = $("decoder-state");
  line.textContent = text;
  line.classList.toggle("error", failed);
}

// Load (once) and check the space's in-page decoder, then decode the current point; on failure the page says why
// and decodes on the server.
async function prepareLocal(name) {
  state.decoder = null;
  state.checked = null;
  $("local-diff").hidden = true;
  $("decoded-view").classList.remove("in-page");
  $("decoded").removeAttribute("src");
  if (!$("local-decode").checked) {
    decoderState("decoding on the server (in-page decoding is off)", false);
    document.body.dataset.decoder = "off";
    decodeHere();
    return;
  }
  decoderState("loading the in-page decoder ...", false);
  document.body.dataset.decoder = "loading";
  const space = state.spaces[name];
  try {
    const decoder = await inPage.load(name, space);
    if (state.space !== space) return;  // another space was chosen meanwhile
    state.decoder = decoder;
    $("decoded-view").classList.add("in-page");
    decoderState(`decoding in the page: ${space.decoder.backend}, ${(space.decoder.bytes / 1e6).toFixed(1)} MB, ` +
      "sha256 checked (ONNX Runtime Web); the server decodes each resting point", false);
    document.body.dataset.decoder = "in_page";
  } catch (e) {
    if (state.space !== space) return;
    decoderState(`in-page decoding unavailable: ${e.message || e}; decoding on the server`, true);
    document.body.dataset.decoder = "failed";
  }
  decodeHere();
}

$("local-decode").addEventListener("change", () => prepareLocal($("space").value));

// The class model's three most probable classes at the decoded point, with bars.
function showClasses(probabilities) {
  const top = Object.entries(probabilities).sort((a, b) => b[1] - a[1]).slice(0, 3);
  $("classes").replaceChildren(...top.map(([name, p]) => {
    const item = document.createElement("li");
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.round(p * 80)}px`;
    item.append(`${name} ${(100 * p).toFixed(0)}%`, bar);
    return item;
  }));
}

function pointerAt(event) {
  const rect = pad.getBoundingClientRect();
  const x = (event.clientX - rect.left) * pad.width / rect.width;
  const y = (event.clientY - rect.top) * pad.height / rect.height;
  return toPlane(x, y);
}

pad.addEventListener("pointermove", (event) => {
  state.uv = pointerAt(event);
  drawPad();
  decodeHere();
});
pad.addEventListener("pointerup", checkNow);

pad.addEventListener("click", (event) => {
  state.uv = pointerAt(event);
  if (state.ends.length === 2) state.ends = [];
  state.ends.push({ uv: state.uv, z: currentLatent() });
  drawPad();
  $("interp-ends").textContent = state.ends.length === 1 ? "A picked; click B" : "A to B";
  if (state.ends.length === 2) requestStrip(stripRequest());
});

// ---- sliders, class edit, interpolation, samples -------------------------------------------------------------
function buildSliders() {
  const box = $("sliders");
  box.replaceChildren();
  const dims = state.space.active_order.slice(0, Math.min(SLIDERS, state.space.latent_dim));
  state.offsets = dims.map(() => 0);
  dims.forEach((d, i) => {
    const label = document.createElement("label");
    label.textContent = `z${d}`;
    const input = document.createElement("input");
    Object.assign(input, { type: "range", min: -3, max: 3, step: 0.05, value: 0 });
    input.dataset.dim = d;
    const out = document.createElement("output");
    out.textContent = "0.00";
    input.addEventListener("input", () => {
      state.offsets[i] = Number(input.value);
      out.textContent = Number(input.value).toFixed(2);
      decodeHere();
    });
    input.addEventListener("change", checkNow);  // released
    label.append(input, out);
    box.append(label);
  });
}

$("reset-sliders").addEventListener("click", () => {
  buildSliders();
  decodeHere();
});

const requestEdit = (() => {
  const send = latest("edit", async (body) => {
    const { data } = await api("edit", body);
    $("edited").src = png(data.images[0]);
    const to = $("edit-to").value;
    const p = (100 * data.class_probabilities[0][to]).toFixed(0);
    $("edit-result").textContent = body.strength === "auto"
      ? `${data.reached[0] ? "landed" : "best effort"}: ${data.strengths[0].toFixed(2)} of the way to the nearest ` +
        `${to}; ${to} ${p}%`
      : `${to} ${p}%`;
  });
  return () => {
    const auto = $("edit-auto").checked;
    send(auto ? { start: { latent: currentLatent() }, to: $("edit-to").value, strength: "auto", format: "json" }
      : { start: { latent: currentLatent() }, from: $("edit-from").value, to: $("edit-to").value,
        strength: Number($("edit-strength").value), format: "json" });
  };
})();

for (const id of ["edit-from", "edit-to"]) $(id).addEventListener("change", requestEdit);
$("edit-auto").addEventListener("change", () => {
  for (const id of ["edit-from", "edit-strength"]) $(id).disabled = $("edit-auto").checked;
  requestEdit();
});
$("edit-strength").addEventListener("input", () => {
  $("edit-strength-value").textContent = $("edit-strength").value;
  requestEdit();
});

const stripRequest = () => ({ latents: state.ends.map((e) => e.z), steps: STRIP_STEPS,
  method: $("interp-method").value, format: "json" });
const requestStrip = latest("interpolate", async (body) => {
  const { data } = await api("interpolate", body);
  fillStrip($("strip"), data.images);
});
$("interp-method").addEventListener("change", () => { if (state.ends.length === 2) requestStrip(stripRequest()); });

function fillStrip(box, images) {
  box.replaceChildren(...images.map((b64) => {
    const img = document.createElement("img");
    img.className = "digit";
    img.src = png(b64);
    return img;
  }));
}

const requestSamples = latest("sample", async (body) => {
  const { data } = await api("sample", body);
  fillStrip($("samples"), data.images);
});
$("sample").addEventListener("click", () => requestSamples({ n: SAMPLES, seed: Number($("seed").value),
  temperature: Number($("temperature").value), format: "json" }));

// ---- drawing: a 28x28 garment, white on black like Fashion-MNIST ------------------------------------------------
const draw = $("draw");
const dctx = draw.getContext("2d");
let drawing = false;

function clearDrawing() {
  dctx.fillStyle = "#000";
  dctx.fillRect(0, 0, draw.width, draw.height);
}

function stroke(event) {
  const rect = draw.getBoundingClientRect();
  const x = (event.clientX - rect.left) * draw.width / rect.width;
  const y = (event.clientY - rect.top) * draw.height / rect.height;
  dctx.fillStyle = "#fff";
  dctx.beginPath();
  dctx.arc(x, y, 11, 0, 2 * Math.PI);
  dctx.fill();
}

draw.addEventListener("pointerdown", (event) => { drawing = true; stroke(event); });
draw.addEventListener("pointermove", (event) => { if (drawing) stroke(event); });
window.addEventListener("pointerup", () => { drawing = false; });
$("clear").addEventListener("click", clearDrawing);

draw.addEventListener("dragover", (event) => event.preventDefault());
draw.addEventListener("drop", (event) => {
  event.preventDefault();
  const file = event.dataTransfer.files[0];
  if (!file) return;
  const img = new Image();
  img.onload = () => {
    clearDrawing();
    dctx.drawImage(img, 0, 0, draw.width, draw.height);
    URL.revokeObjectURL(img.src);
    const pixels = grayscale28();
    if (pixels.reduce((a, p) => a + p, 0) / pixels.length > 127) {  // dark garment on a light ground: invert
      const inverted = dctx.getImageData(0, 0, draw.width, draw.height);
      for (let i = 0; i < inverted.data.length; i += 4) {
        for (let c = 0; c < 3; c += 1) inverted.data[i + c] = 255 - inverted.data[i + c];
      }
      dctx.putImageData(inverted, 0, 0);
    }
    encodeDrawing();
  };
  img.src = URL.createObjectURL(file);
});

function grayscale28() {
  const small = document.createElement("canvas");
  small.width = 28;
  small.height = 28;
  const sctx = small.getContext("2d");
  sctx.imageSmoothingQuality = "high";
  sctx.drawImage(draw, 0, 0, 28, 28);
  const rgba = sctx.getImageData(0, 0, 28, 28).data;
  const gray = new Uint8Array(28 * 28);
  for (let i = 0; i < gray.length; i += 1) {
    gray[i] = Math.round(0.299 * rgba[4 * i] + 0.587 * rgba[4 * i + 1] + 0.114 * rgba[4 * i + 2]);
  }
  return gray;
}

// An 8-bit grayscale PNG (the API takes mode L only): zlib with stored blocks, CRC-32 and Adler-32 by hand.
const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k += 1) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
const u32 = (v) => [(v >>> 24) & 255, (v >>> 16) & 255, (v >>> 8) & 255, v & 255];
function chunk(type, data) {
  const body = [...type].map((ch) => ch.charCodeAt(0)).concat(Array.from(data));
  return [...u32(data.length), ...body, ...u32(crc32(body))];
}
function grayPng(pixels, width, height) {
  const raw = [];
  for (let y = 0; y < height; y += 1) raw.push(0, ...pixels.slice(y * width, (y + 1) * width));
  let a = 1;
  let b = 0;
  for (const v of raw) { a = (a + v) % 65521; b = (b + a) % 65521; }
  const zlib = [0x78, 0x01, 1, raw.length & 255, raw.length >>> 8, ~raw.length & 255, (~raw.length >>> 8) & 255,
    ...raw, ...u32(((b << 16) | a) >>> 0)];
  const bytes = [137, 80, 78, 71, 13, 10, 26, 10,
    ...chunk("IHDR", [...u32(width), ...u32(height), 8, 0, 0, 0, 0]), ...chunk("IDAT", zlib), ...chunk("IEND", [])];
  return btoa(String.fromCharCode(...bytes));
}

async function encodeDrawing() {
  const image = grayPng(grayscale28(), 28, 28);
  const { data } = await api("encode", { images: [image] });
  const mu = data.mu[0];
  const c = add(mu, state.origin, -1);
  state.encoded = [dot(c, state.dx), dot(c, state.dy)];
  $("encoding").textContent = `plane (${state.encoded.map((x) => x.toFixed(2)).join(", ")})`;
  drawPad();
  const decoded = await api("decode", { latents: [mu], format: "json" });
  $("reconstruction").src = png(decoded.data.images[0]);
}
$("encode").addEventListener("click", () => encodeDrawing().catch((e) => setStatus(String(e.message), true)));

// ---- start ---------------------------------------------------------------------------------------------------
function fillSelect(select, options, value) {
  select.replaceChildren(...options.map(([v, text]) => new Option(text, v)));
  if (value !== undefined) select.value = value;
}

function chooseSpace(name) {
  state.space = state.spaces[name];
  const sp = state.space;
  $("plane-controls").hidden = sp.latent_dim === 2;
  const axes = [...sp.principal_directions.map((_, i) => [`pc:${i}`, `PC${i + 1}`]),
    ...sp.active_order.map((d) => [`dim:${d}`, `z${d}`])];
  fillSelect($("axis-x"), axes, "pc:0");
  fillSelect($("axis-y"), axes, "pc:1");
  const classes = sp.class_names.map((c) => [c, c]);
  fillSelect($("edit-from"), classes, sp.class_names[7]);
  fillSelect($("edit-to"), classes, sp.class_names[9]);
  $("legend").replaceChildren(...sp.class_names.map((c, i) => {
    const span = document.createElement("span");
    span.textContent = c;
    span.style.setProperty("--c", COLORS[i]);
    return span;
  }));
  state.uv = [0, 0];
  state.encoded = null;
  buildSliders();
  setPlane();
  fillStrip($("strip"), []);
  prepareLocal(name);
}

for (const id of ["axis-x", "axis-y"]) {
  $(id).addEventListener("change", () => { setPlane(); decodeHere(); });
}
$("space").addEventListener("change", () => chooseSpace($("space").value));

// With token authorization on, the server answers 401 until this page has a session: ask for the key once.
function askForKey() {
  return new Promise((resolve) => {
    $("login").hidden = false;
    document.querySelector("main").hidden = true;
    setStatus("the inference key is needed", true);
    $("login").addEventListener("submit", async (event) => {
      event.preventDefault();
      const response = await fetch("api/session", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ key: $("key").value }),
      });
      $("key").value = "";
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        $("login-status").textContent = body.message || `HTTP ${response.status}`;
        return;
      }
      $("login").hidden = true;
      document.querySelector("main").hidden = false;
      resolve();
    });
  });
}

async function start() {
  clearDrawing();
  let response = await fetch("api/spaces");
  if (response.status === 401) {
    await askForKey();
    response = await fetch("api/spaces");
  }
  if (!response.ok) throw new Error(`api/spaces: HTTP ${response.status}`);
  state.spaces = await response.json();
  const names = Object.keys(state.spaces);
  fillSelect($("space"), names.map((n) => [n, `${n} (latent ${state.spaces[n].latent_dim})`]), names[0]);
  chooseSpace(names[0]);
  document.body.dataset.ready = "true";
}

start().catch((e) => setStatus(String(e.message || e), true));
