// The "Fleet" section of the studio: the group's devices, which are online, what each gave.
"use strict";
(function () {
  const section = document.getElementById("fleet-panel");
  if (!section) return;
  function cell(row, text) {
    const td = document.createElement("td");
    td.textContent = text;
    row.appendChild(td);
  }
  function show(view) {
    section.hidden = !view.enabled;
    if (!view.enabled) return;
    document.getElementById("fleet-group").textContent =
      `${view.group} (${view.mode}${view.connected ? "" : ", not connected"})`;
    const body = document.getElementById("fleet-devices");
    body.replaceChildren();
    for (const d of view.devices || []) {
      const row = document.createElement("tr");
      row.dataset.testid = "fleet-device";
      cell(row, d.device + (d.this ? " (this one)" : ""));
      cell(row, d.online ? "online" : "offline");
      cell(row, String(d.samples));
      body.appendChild(row);
    }
  }
  function poll() {
    fetch("/api/fleet", {credentials: "same-origin"}).then((r) => r.ok ? r.json() : null)
      .then((v) => { if (v) show(v); }).catch(() => {});
  }
  poll();
  setInterval(poll, 5000);
})();
