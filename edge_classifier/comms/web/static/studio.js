// The edge-classifier studio: plain JavaScript, no libraries, nothing loaded from elsewhere.
//
// The device pushes what it sees over Server-Sent Events (/api/events) and the camera's frames
// as MJPEG (/api/stream.mjpeg); every action is a request to the JSON API (/api/...), which
// the device turns into an event for its loop, like a button press. Everything the device
// says is put on the page as text (textContent, attributes set through the DOM), never as
// markup, so a class called <img src=x onerror=alert(1)> is shown as those characters.
"use strict";

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;
const studio = {
  settings: {hold_rate: 5, threshold: 0.8, stream_fps: 5},
  classes: [],          // [{name, samples, bound, recent: [sample ids]}]
  cards: new Map(),     // class name -> {root, count, thumbs, key}
  bars: new Map(),      // class name -> {root, fill, value}
  latency: [],          // seconds from a prediction's publishing to its bars on this page
  rendered: [],         // [frame number, wall time] of the bars drawn (tools/bench_loop.py --web)
  camera: null,         // the browser's camera while it streams
};
window.studio = studio;

// -- small helpers ------------------------------------------------------------------------------
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-") || key.startsWith("aria-") || key === "role" ||
             key === "title" || key === "alt" || key === "src" || key === "href") {
      node.setAttribute(key, value);
    } else node[key] = value;
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const percent = (p) => `${Math.round(100 * (p || 0))} %`;

function say(text, kind = "info") {
  const box = $("messages");
  const note = el("p", {class: `message ${kind}`, role: kind === "error" ? "alert" : "status"},
                  text);
  box.append(note);
  setTimeout(() => note.remove(), kind === "error" ? 8000 : 4000);
}

async function api(method, path, body) {
  const options = {method, credentials: "same-origin", headers: {}};
  if (body instanceof FormData || body instanceof Blob) {
    options.body = body;
  } else if (body !== undefined) {
    options.body = JSON.stringify(body);
    options.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    say(`cannot reach the device: ${e.message}`, "error");
    return {ok: false, error: e.message};
  }
  if (response.status === 401) {
    location.href = "/login";
    return {ok: false, error: "log in first"};
  }
  let answer;
  try {
    answer = await response.json();
  } catch (e) {
    answer = {ok: response.ok, error: response.statusText};
  }
  if (!response.ok || answer.ok === false) {
    answer.ok = false;
    say(answer.error || response.statusText, "error");
  }
  return answer;
}

// -- live view ----------------------------------------------------------------------------------
function renderBars(box, map, scores, order, highlight) {
  const names = order.filter((n) => n in scores).concat(
    Object.keys(scores).filter((n) => !order.includes(n)));
  for (const [name, bar] of map) {
    if (!names.includes(name)) {
      bar.root.remove();
      map.delete(name);
    }
  }
  names.forEach((name, i) => {
    let bar = map.get(name);
    if (!bar) {
      const fill = el("span", {class: "fill"});
      const value = el("span", {class: "value"});
      const root = el("div", {class: "bar", "data-testid": "score-bar", "data-class": name},
                      el("span", {class: "name", title: name}, name),
                      el("span", {class: "track"}, fill), value);
      bar = {root, fill, value};
      map.set(name, bar);
    }
    if (box.children[i] !== bar.root) box.insertBefore(bar.root, box.children[i] || null);
    // A transform, not a width: the compositor moves the fill, nothing is laid out again.
    const scale = Math.max(0, Math.min(1, scores[name])).toFixed(3);
    if (bar.scale !== scale) {
      bar.fill.style.transform = `scaleX(${scale})`;
      bar.scale = scale;
    }
    setText(bar.value, percent(scores[name]));
    if (bar.best !== (name === highlight)) {
      bar.best = name === highlight;
      bar.root.classList.toggle("best", bar.best);
    }
  });
}

// The page does as little as it can per update (the browser may share the device's cores):
// text is written only when it changed, and predictions are drawn once per animation frame,
// the newest one (none while the tab is hidden).
function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function queuePrediction(p) {
  studio.prediction = p;
  if (studio.drawing) return;
  studio.drawing = true;
  requestAnimationFrame(() => {
    studio.drawing = false;
    showPrediction(studio.prediction);
  });
}

function showPrediction(p) {
  if (!p) return;
  const label = $("prediction-label");
  setText(label, p.label);
  if (label.classList.contains("unknown") !== !!p.unknown) label.classList.toggle("unknown");
  setText($("prediction-confidence"), p.scores && Object.keys(p.scores).length ?
    percent(p.confidence) : "");
  let detail = "";
  if (!p.scores || !Object.keys(p.scores).length) {
    detail = "nothing taught yet";
  } else if (p.unknown) {
    detail = `closest: ${p.closest} (${percent(p.confidence)})`;
    if (p.unknown_score !== undefined) {
      detail += ` · unknown score ${p.unknown_score.toFixed(2)} above ${
        p.unknown_threshold.toFixed(2)}`;
    }
  } else if (p.confidence < studio.settings.threshold) {
    detail = `below the ${percent(studio.settings.threshold)} needed to be sure`;
  }
  setText($("prediction-detail"), detail);
  if (p.state) setText($("state"), p.state);
  renderBars($("bars"), studio.bars, p.scores || {}, studio.classes.map((c) => c.name),
             p.unknown ? null : p.label);
  if (p.timestamp) {
    studio.latency.push(Date.now() / 1000 - p.timestamp);
    studio.rendered.push([p.frame, Date.now() / 1000]);
    if (studio.latency.length > 1000) studio.latency.shift();
    if (studio.rendered.length > 1000) studio.rendered.shift();
  }
}

// -- uploads: imported one picture per frame, the progress pushed by the device ----------------
function showUploads(u) {
  $("upload-progress").replaceChildren(...(u.uploads || []).map((j) => el(
    "p", {"data-testid": "upload-job", "data-class": j.class},
    `importing into ${j.class}: ${j.done} of ${j.total} `,
    el("progress", {max: j.total, value: j.done}))));
}

// -- device -------------------------------------------------------------------------------------
function showStats(stats) {
  const links = stats.links || {};
  const mqtt = links.mqtt ? (links.mqtt.connected ? "connected" : "not connected") :
    "off (standard output)";
  const samples = Object.values(stats.samples || {}).reduce((a, b) => a + b, 0);
  const p = studio.prediction || {};
  const uptime = stats.uptime === undefined ? "" : duration(stats.uptime);
  const facts = [["model", p.model || ""], ["head", p.head || ""], ["frames per second", stats.fps],
                 ["inference", stats.inference_ms === undefined ? "" : `${stats.inference_ms} ms`],
                 ["samples", samples], ["uptime", uptime], ["MQTT", mqtt],
                 ["inbox", stats.inbox], ["frames", stats.frames]];
  $("device").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k),
                                                            el("dd", {}, v === undefined ? "" : v)]));
}

function duration(seconds) {
  const s = Math.round(seconds);
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

// -- test a picture -----------------------------------------------------------------------------
async function testPicture(file) {
  if (!file) return;
  const preview = $("test-preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("test-result").textContent = "looking…";
  const form = new FormData();
  form.append("image", file, file.name);
  const answer = await api("POST", "/api/predict", form);
  $("test-result").textContent = answer.ok ? answer.text : (answer.error || "failed");
  renderBars($("test-bars"), new Map(), answer.scores || {}, studio.classes.map((c) => c.name),
             answer.unknown ? null : answer.label);
}

// -- the browser's camera -----------------------------------------------------------------------
async function startCamera() {
  const note = $("camera-note");
  if (!window.isSecureContext || !navigator.mediaDevices) {
    note.textContent = "the browser's camera needs https:// or localhost (see web.cert)";
    return;
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia(
      {video: {width: {ideal: 640}, height: {ideal: 480}}, audio: false});
    const video = $("camera-preview");
    video.srcObject = stream;
    await video.play();
    studio.camera = {stream, video, canvas: document.createElement("canvas"), sent: 0};
    $("camera-switch").textContent = "Stop the browser's camera";
    note.textContent = "streaming this browser's camera to the device";
    pump();
  } catch (e) {
    note.textContent = `no camera: ${e.message}`;
  }
}

function stopCamera() {
  if (!studio.camera) return;
  studio.camera.stream.getTracks().forEach((t) => t.stop());
  studio.camera = null;
  $("camera-switch").textContent = "Use this browser's camera";
  $("camera-note").textContent = "";
}

async function pump() {
  // One frame at a time: the next is sent when the device took the last, at most 10 a second.
  const cam = studio.camera;
  if (!cam) return;
  const started = performance.now();
  const {video, canvas} = cam;
  if (video.videoWidth) {
    const scale = Math.min(1, 640 / video.videoWidth);
    canvas.width = Math.round(video.videoWidth * scale);
    canvas.height = Math.round(video.videoHeight * scale);
    canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.85));
    if (blob && studio.camera === cam) {
      const answer = await fetch("/api/camera/frame", {
        method: "POST", body: blob, credentials: "same-origin",
        headers: {"Content-Type": "image/jpeg"}}).catch(() => null);
      if (answer && answer.ok) cam.sent += 1;
    }
  }
  setTimeout(pump, Math.max(0, 100 - (performance.now() - started)));
}

// -- the event stream ---------------------------------------------------------------------------
function showStatus(status) {
  studio.settings = status.settings;
  $("device-name").textContent = status.device;
  $("logout").hidden = !status.login;
  showClasses(status.catalogue);
  if (status.prediction) {
    studio.prediction = status.prediction;
    showPrediction(status.prediction);
  }
  if (status.state) $("state").textContent = status.state;
  if (status.stats) showStats(status.stats);
  showUploads(status);
  const camera = status.camera || {};
  $("camera-switch").hidden = !camera.accepts;
  if (camera.source === "browser" && !studio.camera) startCamera();
}

function connect() {
  const events = new EventSource("/api/events");
  const link = $("link");
  events.addEventListener("open", () => {
    link.textContent = "live";
    link.className = "link up";
  });
  events.addEventListener("error", () => {
    link.textContent = "reconnecting…";
    link.className = "link down";
    if (events.readyState === EventSource.CLOSED) setTimeout(connect, 2000);
  });
  const on = (kind, handler) => events.addEventListener(kind, (m) => handler(JSON.parse(m.data)));
  on("status", showStatus);
  on("prediction", queuePrediction);
  on("catalogue", (c) => showClasses(c.classes));
  on("inbox", showInbox);
  on("upload", showUploads);
  on("stats", showStats);
  on("state", (s) => { if (s.state) setText($("state"), s.state); });
}

function start() {
  // The live view starts once the page has loaded: a stream never "finishes" loading.
  const live = () => { $("live-view").src = "/api/stream.mjpeg"; };
  if (document.readyState === "complete") live();
  else window.addEventListener("load", live, {once: true});
  $("add-class").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("new-class");
    const answer = await api("POST", "/api/classes", {class: input.value.trim()});
    if (answer.ok) input.value = "";
  });
  const uploadForm = $("upload");
  const uploadInput = $("upload-input");
  const uploadTo = () => $("upload-class").value.trim();
  uploadForm.addEventListener("submit", (event) => event.preventDefault());
  uploadInput.addEventListener("change", () => {
    if (!uploadTo()) {
      say("name the class to upload into first", "error");
      return;
    }
    uploadInto(uploadTo(), uploadInput.files, $("upload-result")).then(() => {
      uploadInput.value = "";
    });
  });
  dropTarget(uploadForm, (files) => {
    if (uploadTo()) uploadInto(uploadTo(), files, $("upload-result"));
    else say("name the class to upload into first", "error");
  });
  const testInput = $("test-input");
  testInput.addEventListener("change", () => testPicture(testInput.files[0]));
  dropTarget($("test"), (files) => testPicture(files[0]));
  $("camera-switch").addEventListener("click", () => (studio.camera ? stopCamera() : startCamera()));
  $("insight-refresh").addEventListener("click", loadInsight);
  $("logout").addEventListener("click", async () => {
    await api("POST", "/api/logout");
    location.href = "/login";
  });
  connect();  // the stream starts with the status and the inbox: nothing fetched beside it
  // could arrive after a newer inbox event and undo it
  loadInsight();
}

start();
