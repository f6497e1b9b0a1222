// The maskkit serve page: upload an image once (conf=0, every instance the model returns), then filter by
// score and class in the browser and redraw the canvas, the count and the table without a new request.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { classes: [], colours: new Map(), names: new Map(), enabled: new Set(), result: null,
                instances: [], base: null, fileName: "image" };
const ALPHA = 0.45;

function apiHeaders() {
  const key = localStorage.getItem("maskkit-api-key");
  return key ? { "X-API-Key": key } : {};
}

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

async function loadModel() {
  const res = await fetch("/v1/model", { headers: apiHeaders() });
  if (res.status === 401) {
    $("keybox").hidden = false;
    $("model").textContent = "API key required";
    return;
  }
  if (!res.ok) { $("model").textContent = `model info unavailable (HTTP ${res.status})`; return; }
  const info = await res.json();
  $("model").textContent = `${info.name} · ${info.source} · maskkit ${info.version}`;
  state.classes = info.classes;
  const box = $("classes");
  box.querySelectorAll("label").forEach((el) => el.remove());
  for (const c of info.classes) {
    state.colours.set(c.id, c.colour);
    state.names.set(c.id, c.name);
    state.enabled.add(c.id);
    const label = document.createElement("label");
    label.innerHTML = `<input type="checkbox" checked data-class="${c.id}"><span class="swatch"></span>` +
      `<span class="cname"></span> <span class="muted" data-class-count="${c.id}"></span>`;
    label.querySelector(".swatch").style.background = `rgb(${c.colour.join(",")})`;
    label.querySelector(".cname").textContent = c.name;
    label.querySelector("input").addEventListener("change", (ev) => {
      if (ev.target.checked) state.enabled.add(c.id); else state.enabled.delete(c.id);
      redraw();
    });
    box.appendChild(label);
  }
}

async function predict(file) {
  state.fileName = (file.name || "image").replace(/\.[^.]+$/, "");
  setStatus(`predicting ${file.name || "image"}…`);
  document.body.dataset.state = "busy";
  const form = new FormData();
  form.append("file", file, file.name || "image");
  const started = performance.now();
  let res;
  try {
    res = await fetch("/v1/predict?conf=0&max_det=1000&masks=rle", { method: "POST", body: form,
                                                                      headers: apiHeaders() });
  } catch (err) {
    setStatus(`request failed: ${err}`, true);
    document.body.dataset.state = "error";
    return;
  }
  const body = await res.json().catch(() => ({ error: "bad_response", detail: `HTTP ${res.status}` }));
  if (!res.ok) {
    if (res.status === 401) $("keybox").hidden = false;
    setStatus(`${body.error || "error"}: ${body.detail || res.status}`, true);
    document.body.dataset.state = "error";
    return;
  }
  let bitmap = null;
  try { bitmap = await createImageBitmap(file, { imageOrientation: "none" }); } catch (err) { bitmap = null; }
  show(body, bitmap);
  const ms = Math.round(performance.now() - started);
  setStatus(`${body.image.width}×${body.image.height} px · ${body.instances.length} instances returned · ` +
            `${ms} ms (server ${Math.round(body.timing.total_ms)} ms)` +
            (bitmap ? "" : " · this browser cannot show the image itself: masks on black"));
  document.body.dataset.state = "ready";
}

function show(result, bitmap) {
  const { width, height } = result.image;
  const canvas = $("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, width, height);
  if (bitmap) ctx.drawImage(bitmap, 0, 0, width, height);
  state.base = ctx.getImageData(0, 0, width, height);
  const scratch = new Uint8Array(width * height);
  state.instances = result.instances.map((inst) => ({ ...inst, px: inst.rle ? maskPixels(inst.rle, scratch) : null }));
  state.result = result;
  $("stage").hidden = false;
  $("total").textContent = String(result.instances.length);
  $("dl-json").disabled = false;
  $("dl-png").disabled = false;
  redraw();
}

function visible() {
  const conf = Number($("conf").value);
  return state.instances.filter((i) => i.score >= conf && state.enabled.has(i.class_id));
}

function colourOf(classId) {
  return state.colours.get(classId) || [255, 255, 0];
}

function redraw() {
  $("conf-value").textContent = Number($("conf").value).toFixed(2);
  if (!state.result) return;
  const shown = visible();
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  const img = new ImageData(new Uint8ClampedArray(state.base.data), state.base.width, state.base.height);
  const d = img.data;
  const order = [...shown].sort((a, b) => a.score - b.score); // the best is painted last, on top
  for (const inst of order) {
    if (!inst.px) continue;
    const [r, g, b] = colourOf(inst.class_id);
    for (const idx of inst.px.fill) {
      const o = idx * 4;
      d[o] = d[o] * (1 - ALPHA) + r * ALPHA;
      d[o + 1] = d[o + 1] * (1 - ALPHA) + g * ALPHA;
      d[o + 2] = d[o + 2] * (1 - ALPHA) + b * ALPHA;
      d[o + 3] = 255;
    }
    for (const idx of inst.px.edge) {
      const o = idx * 4;
      d[o] = r; d[o + 1] = g; d[o + 2] = b; d[o + 3] = 255;
    }
  }
  ctx.putImageData(img, 0, 0);
  if (shown.length <= 60) drawLabels(ctx, order, canvas.width, canvas.height);
  $("count").textContent = String(shown.length);
  for (const el of document.querySelectorAll("[data-class-count]")) {
    const id = Number(el.dataset.classCount);
    el.textContent = `(${shown.filter((i) => i.class_id === id).length})`;
  }
  fillTable(shown);
}

function drawLabels(ctx, order, width, height) {
  // best score first: each label moves down past the labels already placed, so none covers another
  const size = Math.max(8, Math.round(Math.min(width, height) / 40));
  ctx.font = `${size}px system-ui, sans-serif`;
  ctx.textBaseline = "top";
  const placed = [];
  for (const inst of [...order].reverse()) {
    const text = `${inst.class_name} ${inst.score.toFixed(2)}`;
    const w = ctx.measureText(text).width + 4, h = size + 3;
    const x = Math.min(Math.max(inst.box[0], 0), Math.max(width - w, 0));
    let y = Math.min(Math.max(inst.box[1] - h, 0), height - h);
    for (let tries = 0; tries < placed.length; tries++) {
      const hit = placed.filter((p) => x < p.x + p.w && p.x < x + w && y < p.y + p.h && p.y < y + h);
      if (!hit.length) break;
      y = Math.max(...hit.map((p) => p.y + p.h)) + 1;
    }
    if (y + h > height) continue; // no room left below: the table lists it
    placed.push({ x, y, w, h, text, inst });
  }
  for (const p of placed) {
    const [r, g, b] = colourOf(p.inst.class_id);
    ctx.fillStyle = `rgba(${r},${g},${b},0.85)`;
    ctx.fillRect(p.x, p.y, p.w, p.h);
    ctx.fillStyle = r + g + b > 400 ? "#000" : "#fff";
    ctx.fillText(p.text, p.x + 2, p.y + 1);
  }
}

function fillTable(shown) {
  const body = $("table").tBodies[0];
  const rows = [...shown].sort((a, b) => b.score - a.score).slice(0, 500).map((inst) => {
    const tr = document.createElement("tr");
    const [r, g, b] = colourOf(inst.class_id);
    tr.innerHTML = `<td>${inst.id}</td><td><span class="swatch"></span> <span class="cname"></span></td>` +
      `<td>${inst.score.toFixed(3)}</td><td>${inst.area}</td>` +
      `<td>${inst.box.map((v) => Math.round(v)).join(", ")}</td>`;
    tr.querySelector(".swatch").style.background = `rgb(${r},${g},${b})`;
    tr.querySelector(".cname").textContent = inst.class_name;
    return tr;
  });
  body.replaceChildren(...rows);
}

function download(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.appendChild(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
}

function downloadJson() {
  const shown = visible().sort((a, b) => b.score - a.score).map(({ px, ...rest }) => rest);
  const out = { ...state.result, conf: Number($("conf").value), classes: [...state.enabled].sort((a, b) => a - b),
                count: shown.length, instances: shown };
  download(new Blob([JSON.stringify(out, null, 1)], { type: "application/json" }), `${state.fileName}.maskkit.json`);
}

function setup() {
  const drop = $("drop");
  $("file").addEventListener("change", (ev) => { if (ev.target.files[0]) predict(ev.target.files[0]); });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    const file = ev.dataTransfer && ev.dataTransfer.files[0];
    if (file) predict(file);
  });
  drop.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") $("file").click(); });
  $("conf").addEventListener("input", redraw);
  $("dl-json").addEventListener("click", downloadJson);
  $("dl-png").addEventListener("click", () => $("canvas").toBlob((b) => download(b, `${state.fileName}.overlay.png`),
                                                                     "image/png"));
  $("savekey").addEventListener("click", () => {
    localStorage.setItem("maskkit-api-key", $("apikey").value.trim());
    $("keybox").hidden = true;
    loadModel();
  });
  redraw();
  loadModel().catch((err) => setStatus(`cannot reach the server: ${err}`, true));
}

setup();
