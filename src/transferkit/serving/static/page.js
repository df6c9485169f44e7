// The page of `transferkit serve`: choose, drop or paste images; each is sent to /predict and
// shown with its top-k labels as bars. Everything it loads comes from this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem("transferkit-token") || "", maxTopK: 1000 };

function headers() {
  return state.token ? { Authorization: "Bearer " + state.token } : {};
}

function percent(p) {
  return (100 * p).toFixed(1) + "%";
}

async function loadModel() {
  let response;
  try {
    response = await fetch("model", { headers: headers() });
  } catch (err) {
    $("model-summary").textContent = "the server does not answer: " + err;
    return;
  }
  if (response.status === 401) {
    $("token-form").hidden = false;
    $("model-summary").textContent = "this server needs its token";
    $("token").focus();
    return;
  }
  if (response.status === 503) {
    $("model-summary").textContent = "the model is loading\u2026";
    setTimeout(loadModel, 1000);
    return;
  }
  const info = await response.json();
  $("token-form").hidden = true;
  $("model-name").textContent = info.name;
  document.title = info.name + " \u2013 transferkit";
  const acc = info.metrics && typeof info.metrics.val_acc === "number"
    ? ", val accuracy " + (100 * info.metrics.val_acc).toFixed(1) + "%" : "";
  $("model-summary").textContent = `${info.backbone || info.format}, ${info.num_classes} classes${acc}`;
  $("model-classes").textContent = info.classes.join(", ");
  $("model-classes-box").hidden = false;
  state.maxTopK = info.num_classes;
  $("top-k").max = info.num_classes;
  $("top-k").value = Math.min(info.top_k_default, info.num_classes);
  document.body.dataset.ready = "true";
  if (location.hash === "#camera" && !camera.stream) startCamera();  // (the studio's "camera" link)
}

function card(file) {
  const li = document.createElement("li");
  li.file = file;
  li.className = "result";
  li.dataset.state = "pending";
  li.tabIndex = -1;
  const img = document.createElement("img");
  img.alt = file.name || "pasted image";
  img.src = URL.createObjectURL(file);
  const h3 = document.createElement("h3");
  h3.textContent = "predicting\u2026";
  const name = document.createElement("div");
  name.className = "name";
  name.textContent = file.name || "pasted image";
  li.append(img, h3, name);
  $("results").prepend(li);
  return li;
}

function show(li, pred) {
  const h3 = li.querySelector("h3");
  if (pred.error) {
    li.dataset.state = "error";
    h3.textContent = "not classified";
    const p = document.createElement("p");
    p.className = "error";
    p.textContent = pred.error;
    li.append(p);
    return;
  }
  li.dataset.state = "done";
  li.dataset.label = pred.label;
  li.dataset.probability = String(pred.probability);
  // a multi-label model: the predicted set (each probability below is that class's own)
  h3.textContent = pred.labels ? (pred.labels.length ? pred.labels.join(", ") : "none of the classes")
    : `${pred.label} \u2013 ${percent(pred.probability)}`;
  if (pred.labels) li.dataset.labels = pred.labels.join("\n");
  const bars = document.createElement("ul");
  bars.className = "bars";
  bars.setAttribute("aria-label", "top labels");
  for (const t of pred.top_k) {
    const item = document.createElement("li");
    const label = document.createElement("span");
    label.textContent = t.label;
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = percent(t.probability);
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.setAttribute("role", "meter");
    bar.setAttribute("aria-label", t.label);
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    bar.setAttribute("aria-valuenow", (100 * t.probability).toFixed(1));
    const fill = document.createElement("span");
    fill.style.width = (100 * t.probability).toFixed(2) + "%";
    bar.append(fill);
    item.append(label, pct, bar);
    bars.append(item);
  }
  li.append(bars);
  if (pred.ood_score !== undefined && pred.ood_score !== null) {
    // how unlike the training images it is; above the server's threshold it is unknown
    const ood = document.createElement("p");
    ood.className = pred.unknown ? "unknown" : "ood";
    ood.textContent = (pred.unknown ? "unknown: unlike the training images" : "like the training images")
      + ` (out-of-distribution score ${pred.ood_score.toFixed(3)})`;
    li.dataset.unknown = String(Boolean(pred.unknown));
    li.append(ood);
  }
  if (li.file) {
    const where = document.createElement("button");
    where.type = "button";
    where.className = "where";
    where.textContent = "Where?";
    where.addEventListener("click", () => explainCard(li, where));
    li.append(where);
  }
}

async function explainCard(li, button) {
  // swaps the image for its overlay (where the answer comes from), and back
  const img = li.querySelector("img");
  if (li.dataset.explained === "true") {
    img.src = li.plainSrc;
    li.dataset.explained = "false";
    button.textContent = "Where?";
    return;
  }
  button.disabled = true;
  const body = new FormData();
  body.append("file", li.file, li.file.name || "pasted.png");
  try {
    const response = await fetch("explain", { method: "POST", body, headers: headers() });
    const answer = await response.json().catch(() => ({ detail: "HTTP " + response.status }));
    if (!response.ok) throw new Error(answer.detail || "HTTP " + response.status);
    li.plainSrc = li.plainSrc || img.src;
    img.src = "data:image/jpeg;base64," + answer.overlay;
    li.dataset.explained = "true";
    button.textContent = "Image";
  } catch (err) {
    const p = document.createElement("p");
    p.className = "error";
    p.textContent = "no explanation: " + err.message;
    li.append(p);
  } finally {
    button.disabled = false;
  }
}

async function classify(file) {
  const li = card(file);
  const body = new FormData();
  body.append("file", file, file.name || "pasted.png");
  const k = Math.max(1, Math.min(state.maxTopK, parseInt($("top-k").value, 10) || 1));
  try {
    const response = await fetch("predict?top_k=" + k, { method: "POST", body, headers: headers() });
    const answer = await response.json().catch(() => ({ detail: "HTTP " + response.status }));
    if (response.status === 401) {
      $("token-form").hidden = false;
      $("token").focus();
    }
    show(li, answer.predictions && answer.predictions[0] ? answer.predictions[0]
                                                          : { error: answer.detail || "HTTP " + response.status });
  } catch (err) {
    show(li, { error: "the server does not answer: " + err });
  }
}

function classifyAll(files) {
  const images = [...files].filter((f) => !f.type || f.type.startsWith("image/"));
  if (files.length && !images.length) {
    show(card(files[0]), { error: "not an image" });
  }
  images.forEach(classify);
}

// ---------------------------------------------------------------- camera
// The live picture from getUserMedia; a frame at a time is sent to /predict (JPEG, at most
// CAMERA_FPS a second and never two at once, so a slow model is not flooded) and its top
// labels are drawn over the picture.
const CAMERA_FPS = 2;
const CAMERA_SIDE = 448;  // the frame's long side as sent: the model resizes it further
const camera = { stream: null, timer: null, busy: false, frames: 0 };

async function startCamera() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    $("camera-status").textContent = "this browser gives no camera here (it needs https or localhost)";
    $("camera").hidden = false;
    return;
  }
  try {
    camera.stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 } }, audio: false });
  } catch (err) {
    $("camera").hidden = false;
    $("camera-status").textContent = "no camera: " + (err.message || err.name);
    return;
  }
  $("camera-video").srcObject = camera.stream;
  $("camera").hidden = false;
  $("camera-toggle").setAttribute("aria-pressed", "true");
  $("camera-toggle").textContent = "Stop camera";
  $("camera-status").textContent = `predicting ${CAMERA_FPS} frames a second`;
  camera.timer = setInterval(cameraFrame, 1000 / CAMERA_FPS);
}

function stopCamera() {
  clearInterval(camera.timer);
  camera.timer = null;
  if (camera.stream) camera.stream.getTracks().forEach((t) => t.stop());
  camera.stream = null;
  $("camera-video").srcObject = null;
  $("camera").hidden = true;
  $("camera-labels").replaceChildren();
  $("camera-toggle").setAttribute("aria-pressed", "false");
  $("camera-toggle").textContent = "Camera";
}

async function cameraFrame() {
  const video = $("camera-video");
  if (camera.busy || !video.videoWidth) return;
  camera.busy = true;
  try {
    const scale = Math.min(1, CAMERA_SIDE / Math.max(video.videoWidth, video.videoHeight));
    const canvas = document.createElement("canvas");
    canvas.width = Math.round(video.videoWidth * scale);
    canvas.height = Math.round(video.videoHeight * scale);
    canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.85));
    const k = Math.max(1, Math.min(state.maxTopK, parseInt($("top-k").value, 10) || 1));
    const response = await fetch("predict?top_k=" + k, { method: "POST", body: blob,
      headers: { ...headers(), "Content-Type": "image/jpeg" } });
    const answer = await response.json().catch(() => ({ detail: "HTTP " + response.status }));
    const pred = answer.predictions && answer.predictions[0];
    if (!response.ok || !pred || pred.error) throw new Error((pred && pred.error) || answer.detail || "HTTP " + response.status);
    camera.frames += 1;
    const labels = $("camera-labels");
    labels.dataset.label = pred.label;
    labels.dataset.frames = String(camera.frames);
    labels.dataset.unknown = String(Boolean(pred.unknown));
    labels.replaceChildren(...pred.top_k.map((t) => {
      const li = document.createElement("li");
      li.textContent = `${t.label} ${percent(t.probability)}`;
      return li;
    }));
    if (pred.unknown) {
      const li = document.createElement("li");
      li.textContent = "unknown: unlike the training images";
      labels.append(li);
    }
  } catch (err) {
    $("camera-status").textContent = "the last frame was not predicted: " + err.message;
  } finally {
    camera.busy = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("camera-toggle").addEventListener("click", () => (camera.stream ? stopCamera() : startCamera()));
  $("files").addEventListener("change", (e) => { classifyAll(e.target.files); e.target.value = ""; });
  $("clear").addEventListener("click", () => { $("results").replaceChildren(); $("files").focus(); });
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem("transferkit-token", state.token);
    loadModel();
  });
  document.addEventListener("paste", (e) => {
    const files = [...(e.clipboardData ? e.clipboardData.files : [])];
    if (files.length) { e.preventDefault(); classifyAll(files); }
  });
  document.addEventListener("dragover", (e) => { e.preventDefault(); document.body.classList.add("dragging"); });
  document.addEventListener("dragleave", (e) => {
    if (!e.relatedTarget) document.body.classList.remove("dragging");
  });
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    document.body.classList.remove("dragging");
    classifyAll(e.dataTransfer.files);
  });
  loadModel();
});
