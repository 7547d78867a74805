// Aegis Edge console: live updates for the hosts list and fleet run pages. The
// pages work without it (reload to refresh); it never builds HTML from strings.
"use strict";

(function () {
  function text(tag, value, cls) {
    const el = document.createElement(tag);
    el.textContent = value;
    if (cls) el.className = cls;
    return el;
  }

  function hostRow(h, showTenant) {
    const tr = document.createElement("tr");
    tr.dataset.node = h.node_id;
    const name = document.createElement("td");
    const a = text("a", h.name || "-");
    a.href = "/ui/hosts/" + encodeURIComponent(h.node_id);
    name.appendChild(a);
    tr.appendChild(name);
    const id = document.createElement("td");
    id.appendChild(text("code", h.node_id));
    tr.appendChild(id);
    if (showTenant) tr.appendChild(text("td", h.tenant || "-"));
    const st = text("td", h.status, "status status-" + h.status);
    st.dataset.status = h.status;
    tr.appendChild(st);
    tr.appendChild(text("td", h.tags.length ? h.tags.join(",") : "-"));
    const fp = document.createElement("td");
    fp.appendChild(text("code", h.fingerprint, "fp"));
    tr.appendChild(fp);
    tr.appendChild(text("td", h.key_age));
    tr.appendChild(text("td", h.key_due));
    tr.appendChild(text("td", h.last_seen));
    return tr;
  }

  function followHosts(table) {
    const url = table.dataset.events;
    if (!url || !window.EventSource) return;
    const showTenant = table.dataset.tenant === "true";
    const live = document.getElementById("live");
    const es = new EventSource(url);
    es.addEventListener("hosts", function (ev) {
      const list = JSON.parse(ev.data);
      const body = table.tBodies[0];
      const rows = list.hosts.map(function (h) { return hostRow(h, showTenant); });
      if (rows.length === 0) {
        const tr = document.createElement("tr");
        const td = text("td", "No host matches.");
        td.colSpan = 8;
        tr.appendChild(td);
        rows.push(tr);
      }
      // Keep the keyboard where it was: re-focus the same host's link.
      const focused = document.activeElement && document.activeElement.closest ? document.activeElement.closest("tr[data-node]") : null;
      const focusedNode = focused && body.contains(focused) ? focused.dataset.node : null;
      body.replaceChildren.apply(body, rows);
      if (focusedNode) {
        const again = body.querySelector('tr[data-node="' + CSS.escape(focusedNode) + '"] a');
        if (again) again.focus();
      }
      for (const k of ["total", "connected", "disconnected", "revoked"]) {
        const el = document.getElementById("count-" + k);
        if (el) el.textContent = String(list[k]);
      }
      table.dataset.updated = String(Date.now());
      if (live) live.textContent = "Updates live (last change " + new Date().toISOString().slice(11, 19) + " UTC).";
    });
    es.addEventListener("failed", function (ev) {
      es.close();
      if (live) live.textContent = "Live updates stopped: " + JSON.parse(ev.data).error + ". Reload the page.";
    });
  }

  function followRun(list) {
    const url = list.dataset.events;
    if (!url || !window.EventSource) return;
    const summary = document.getElementById("run-summary");
    const es = new EventSource(url);
    es.addEventListener("line", function (ev) {
      const l = JSON.parse(ev.data);
      const li = text("li", l.text, l.kind + (l.state ? " " + l.state : ""));
      li.dataset.seq = String(l.seq);
      list.appendChild(li);
      if (l.kind === "summary") {
        summary.textContent = l.text;
        const st = document.getElementById("run-state");
        if (st && l.state) st.textContent = l.state;
      }
    });
    es.addEventListener("done", function () {
      es.close();
      const form = document.getElementById("cancel-form");
      if (form) form.remove();
      list.dataset.done = "true";
    });
    es.addEventListener("failed", function (ev) {
      es.close();
      summary.textContent = "Following stopped: " + JSON.parse(ev.data).error + ". Reload the page.";
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    const hosts = document.getElementById("hosts");
    if (hosts) followHosts(hosts);
    const run = document.getElementById("run-lines");
    if (run) followRun(run);
  });
})();
