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
  settings: {hold_rate: 5, threshold: 0.8, stream_fps: 10},
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
    bar.fill.style.width = `${Math.max(0, Math.min(100, 100 * scores[name]))}%`;
    bar.value.textContent = percent(scores[name]);
    bar.root.classList.toggle("best", name === highlight);
  });
}

function showPrediction(p) {
  if (!p) return;
  const label = $("prediction-label");
  label.textContent = p.label;
  label.classList.toggle("unknown", !!p.unknown);
  $("prediction-confidence").textContent = p.scores && Object.keys(p.scores).length ?
    percent(p.confidence) : "";
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
  $("prediction-detail").textContent = detail;
  if (p.state) $("state").textContent = p.state;
  renderBars($("bars"), studio.bars, p.scores || {}, studio.classes.map((c) => c.name),
             p.unknown ? null : p.label);
  if (p.timestamp) {
    studio.latency.push(Date.now() / 1000 - p.timestamp);
    studio.rendered.push([p.frame, Date.now() / 1000]);
    if (studio.latency.length > 1000) studio.latency.shift();
    if (studio.rendered.length > 1000) studio.rendered.shift();
  }
}

// -- classes ------------------------------------------------------------------------------------
function holdable(button, once) {
  // One capture per click; while held, one after another at gpio.hold_rate (each waits for the
  // device's answer, so a slow device is never flooded). The release is watched on the whole
  // window: the button may have moved under the pointer (new thumbnails push it down).
  let holding = false;
  let timer = null;
  async function next() {
    if (!holding) return;
    const started = performance.now();
    await once();
    if (!holding) return;
    const gap = 1000 / studio.settings.hold_rate - (performance.now() - started);
    timer = setTimeout(next, Math.max(0, gap));
  }
  function stop() {
    holding = false;
    clearTimeout(timer);
    button.classList.remove("recording");
    for (const type of ["pointerup", "pointercancel", "blur"]) {
      window.removeEventListener(type, stop, true);
    }
  }
  button.addEventListener("pointerdown", (event) => {
    if (event.button !== 0 || holding) return;
    event.preventDefault();
    holding = true;
    for (const type of ["pointerup", "pointercancel", "blur"]) {
      window.addEventListener(type, stop, true);
    }
    button.classList.add("recording");
    next();
  });
  button.addEventListener("contextmenu", (event) => event.preventDefault());
  button.addEventListener("keydown", (event) => {
    if ((event.key === " " || event.key === "Enter") && !event.repeat) {
      event.preventDefault();
      once();
    }
  });
}

function uploadInto(name, files, resultBox) {
  const list = Array.from(files || []);
  if (!list.length) return Promise.resolve();
  const form = new FormData();
  for (const file of list) form.append("images", file, file.name);
  resultBox.textContent = `uploading ${list.length} picture${list.length > 1 ? "s" : ""}…`;
  return api("POST", `/api/classes/${enc(name)}/samples`, form).then((answer) => {
    const parts = [];
    if (answer.added !== undefined) {
      parts.push(`${answer.added} added to ${answer.class || name}`);
    }
    if (answer.over_limit) parts.push(`${answer.over_limit} over the class's limit`);
    if (answer.failed && answer.failed.length) {
      parts.push(`could not use: ${answer.failed.join("; ")}`);
    } else if (!answer.ok && answer.error) parts.push(answer.error);
    resultBox.textContent = parts.join(" · ");
  });
}

function dropTarget(node, onFiles) {
  node.addEventListener("dragover", (event) => {
    event.preventDefault();
    node.classList.add("over");
  });
  node.addEventListener("dragleave", () => node.classList.remove("over"));
  node.addEventListener("drop", (event) => {
    event.preventDefault();
    node.classList.remove("over");
    onFiles(event.dataTransfer.files);
  });
}

function ask(text, value) {
  // A small dialog: resolves to the text typed (rename), true (confirm) or null (cancelled).
  const dialog = $("dialog");
  const input = $("dialog-input");
  $("dialog-text").textContent = text;
  input.hidden = value === undefined;
  input.value = value === undefined ? "" : value;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      if (dialog.returnValue !== "ok") resolve(null);
      else resolve(value === undefined ? true : input.value.trim());
    }, {once: true});
    dialog.returnValue = "";
    dialog.showModal();
    if (!input.hidden) input.select();
  });
}

function makeCard(c) {
  const count = el("span", {class: "number", "data-testid": "sample-count"}, "0");
  const noun = el("span", {class: "noun"}, " samples");
  const title = el("h3", {class: "class-name", title: c.name}, c.name);
  const thumbs = el("div", {class: "thumbs", "data-testid": "thumbs"});
  const capture = el("button", {class: "capture", "data-testid": "capture-button",
                                title: "click: one sample · hold: record"}, "Capture");
  holdable(capture, () => api("POST", `/api/classes/${enc(c.name)}/capture`, {}));
  const fileInput = el("input", {type: "file", accept: "image/*", multiple: true,
                                 "data-testid": "card-upload-input"});
  const result = el("p", {class: "result small", "data-testid": "card-result"});
  fileInput.addEventListener("change", () => {
    uploadInto(c.name, fileInput.files, result).then(() => { fileInput.value = ""; });
  });
  const upload = el("label", {class: "button quiet file"}, "Upload", fileInput);
  const rename = el("button", {class: "quiet", "data-testid": "rename-button"}, "Rename");
  rename.addEventListener("click", async () => {
    const to = await ask(`Rename “${c.name}” to:`, c.name);
    if (to && to !== c.name) api("POST", `/api/classes/${enc(c.name)}/rename`, {to});
  });
  const clear = el("button", {class: "quiet", "data-testid": "clear-button"}, "Clear");
  clear.addEventListener("click", async () => {
    if (await ask(`Delete every sample of “${c.name}” (the class stays)?`)) {
      api("POST", `/api/classes/${enc(c.name)}/clear`);
    }
  });
  const remove = el("button", {class: "quiet danger", "data-testid": "delete-button"}, "Delete");
  remove.addEventListener("click", async () => {
    if (await ask(`Delete the class “${c.name}” and its samples?`)) {
      api("DELETE", `/api/classes/${enc(c.name)}`);
    }
  });
  const root = el("article", {class: "card", "data-testid": "class-card", "data-class": c.name},
                  el("header", {}, title, el("span", {class: "count"}, count, noun)), thumbs,
                  el("div", {class: "actions"}, capture, upload, rename, clear, remove), result);
  dropTarget(root, (files) => uploadInto(c.name, files, result));
  return {root, count, noun, thumbs, rename, remove, key: ""};
}

function renderThumbs(card, c) {
  const key = c.recent.join(",");
  if (card.key === key) return;
  card.key = key;
  card.thumbs.replaceChildren(...c.recent.map((sid) => {
    const img = el("img", {alt: `a sample of ${c.name}`, loading: "lazy",
                           src: `/api/classes/${enc(c.name)}/samples/${sid}.jpg`});
    const thumb = el("button", {class: "thumb", "data-testid": "thumbnail", "data-sample": sid,
                                title: "click, then click again to delete this sample"}, img);
    thumb.addEventListener("click", () => {
      if (!thumb.classList.contains("armed")) {
        card.thumbs.querySelectorAll(".armed").forEach((t) => t.classList.remove("armed"));
        thumb.classList.add("armed");
        return;
      }
      thumb.disabled = true;
      api("DELETE", `/api/classes/${enc(c.name)}/samples/${sid}`).then(() => {
        thumb.disabled = false;
      });
    });
    return thumb;
  }));
}

function showClasses(classes) {
  studio.classes = classes;
  const box = $("classes");
  const names = classes.map((c) => c.name);
  for (const [name, card] of studio.cards) {
    if (!names.includes(name)) {
      card.root.remove();
      studio.cards.delete(name);
    }
  }
  classes.forEach((c, i) => {
    let card = studio.cards.get(c.name);
    if (!card) {
      card = makeCard(c);
      studio.cards.set(c.name, card);
    }
    if (box.children[i] !== card.root) box.insertBefore(card.root, box.children[i] || null);
    card.count.textContent = String(c.samples);
    card.noun.textContent = c.samples === 1 ? " sample" : " samples";
    card.root.classList.toggle("empty-class", c.samples === 0);
    card.rename.disabled = card.remove.disabled = !!c.bound;
    if (c.bound) card.rename.title = card.remove.title = "bound to a button in the config";
    renderThumbs(card, c);
  });
  $("no-classes").hidden = classes.length > 0;
  $("class-names").replaceChildren(...names.map((n) => el("option", {value: n})));
  for (const select of document.querySelectorAll("select.class-choice")) fillChoice(select);
  scheduleInsight();
}

// -- inbox --------------------------------------------------------------------------------------
function fillChoice(select) {
  const chosen = select.value;
  select.replaceChildren(el("option", {value: ""}, "file into…"),
                         ...studio.classes.map((c) => el("option", {value: c.name}, c.name)));
  select.value = studio.classes.some((c) => c.name === chosen) ? chosen : "";
}

function showInbox(inbox) {
  const items = inbox.items || [];
  $("inbox-size").textContent = String(items.length);
  $("no-inbox").hidden = items.length > 0;
  const box = $("inbox");
  const keep = new Set(items.map((i) => i.id));
  for (const node of Array.from(box.children)) {
    if (!keep.has(node.dataset.item)) node.remove();
  }
  items.forEach((item, i) => {
    let node = box.querySelector(`[data-item="${item.id}"]`);  // ids are hex digits
    if (!node) node = makeInboxItem(item);
    if (box.children[i] !== node) box.insertBefore(node, box.children[i] || null);
  });
}

function makeInboxItem(item) {
  const select = el("select", {class: "class-choice", "data-testid": "inbox-class",
                               "aria-label": "class to file this frame into"});
  fillChoice(select);
  if (item.closest && studio.classes.some((c) => c.name === item.closest)) {
    select.value = item.closest;
  }
  const file = el("button", {"data-testid": "inbox-file"}, "File");
  file.addEventListener("click", () => {
    if (!select.value) return say("choose the class this frame belongs to", "error");
    api("POST", `/api/inbox/${item.id}/file`, {class: select.value});
  });
  const discard = el("button", {class: "quiet", "data-testid": "inbox-discard"}, "Discard");
  discard.addEventListener("click", () => api("DELETE", `/api/inbox/${item.id}`));
  const said = item.unknown ? `unknown · closest ${item.closest} ${percent(item.confidence)}` :
    `${item.label} · only ${percent(item.confidence)}`;
  return el("figure", {class: "inbox-item", "data-testid": "inbox-item", "data-item": item.id},
            el("img", {src: `/api/inbox/${item.id}.png`, alt: "a frame the device was unsure of",
                       loading: "lazy"}),
            el("figcaption", {}, el("span", {class: "muted"}, said),
               el("span", {class: "row"}, select, file, discard)));
}

// -- insight ------------------------------------------------------------------------------------
let insightTimer = null;
function scheduleInsight() {
  clearTimeout(insightTimer);
  insightTimer = setTimeout(loadInsight, 1500);
}

async function loadInsight() {
  const report = await fetch("/api/insight", {credentials: "same-origin"})
    .then((r) => r.json()).catch(() => null);
  if (!report || !report.ok) return;
  const n = report.classes.length;
  const table = el("table", {class: "matrix"});
  const head = el("tr", {}, el("th", {class: "corner"}, "true ↓ predicted →"));
  report.classes.forEach((c) => head.append(el("th", {title: c}, c)));
  table.append(el("thead", {}, head));
  const body = el("tbody");
  report.matrix.forEach((row, i) => {
    const total = row.reduce((a, b) => a + b, 0);
    const tr = el("tr", {}, el("th", {title: report.classes[i]}, report.classes[i]));
    row.forEach((count, j) => {
      const share = total ? count / total : 0;
      const cell = el("td", {title: `${report.classes[i]} predicted as ${report.classes[j]}: ${
        count}`}, count ? String(count) : "");
      cell.style.setProperty("--share", share.toFixed(3));
      cell.classList.add(i === j ? "hit" : "miss");
      tr.append(cell);
    });
    body.append(tr);
  });
  table.append(body);
  $("matrix").replaceChildren(n ? table : el("p", {class: "muted"}, "no samples yet"));
  const accuracy = {};
  for (const c of report.per_class) if (c.accuracy !== null) accuracy[c.class] = c.accuracy;
  renderBars($("accuracy"), new Map(), accuracy, report.classes, null);
  $("confused").replaceChildren(...(report.confused.length ? report.confused.map((c) =>
    el("li", {}, el("b", {}, c.class), " taken for ", el("b", {}, c.as), ` ${c.count}×`)) :
    [el("li", {class: "muted"}, report.samples ? "nothing: every sample is recognised" : "—")]));
  $("few").textContent = report.few.length ?
    `Fewer than ${report.few_below} samples (add more): ${report.few.join(", ")}` : "";
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
  on("prediction", (p) => {
    studio.prediction = p;
    showPrediction(p);
  });
  on("catalogue", (c) => showClasses(c.classes));
  on("inbox", showInbox);
  on("stats", showStats);
  on("state", (s) => { if (s.state) $("state").textContent = s.state; });
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
  fetch("/api/inbox", {credentials: "same-origin"}).then((r) => r.json()).then(showInbox)
    .catch(() => {});
  connect();
  loadInsight();
}

start();
