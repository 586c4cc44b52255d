// The studio's class cards, inbox and insight (loaded before studio.js, which starts the page).
// Names and numbers from the device go on the page as text only (see studio.js).
"use strict";

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
