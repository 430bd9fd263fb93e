/**
 * The status page's script, served as `/status.js` (the page allows no inline script: its CSP
 * is `script-src 'self'`). It polls `/status.json` every 2 s and rebuilds the live tables with
 * textContent only, so nothing a client or an upstream sent can become markup. The sparklines
 * are inline SVG polylines built from the numbers. Plain ES2017, no library.
 */
export const STATUS_SCRIPT = String.raw`(function () {
  "use strict";
  var POLL_MS = 2000;
  function $(id) { return document.getElementById(id); }
  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function size(n) {
    var u = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n : n.toFixed(1)) + " " + u[i];
  }
  function dur(ms) {
    if (ms < 1000) return ms + " ms";
    var s = ms / 1000;
    if (s < 120) return s.toFixed(1) + " s";
    return Math.round(s / 60) + " min";
  }
  function time(t) { return new Date(t).toLocaleTimeString(); }
  function spark(values) {
    var NS = "http://www.w3.org/2000/svg", w = 180, h = 28;
    var svg = document.createElementNS(NS, "svg");
    svg.setAttribute("width", String(w));
    svg.setAttribute("height", String(h));
    svg.setAttribute("viewBox", "0 0 " + w + " " + h);
    svg.setAttribute("class", "spark");
    var max = 1;
    values.forEach(function (v) { if (v > max) max = v; });
    var pts = values.map(function (v, i) {
      var x = values.length > 1 ? (i * w) / (values.length - 1) : 0;
      return x.toFixed(1) + "," + (h - 1 - (v / max) * (h - 2)).toFixed(1);
    });
    var line = document.createElementNS(NS, "polyline");
    line.setAttribute("points", pts.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", "#2a6");
    line.setAttribute("stroke-width", "1.5");
    svg.appendChild(line);
    var title = document.createElementNS(NS, "title");
    title.textContent = "bytes per 10 s, last 15 min; peak " + size(max) + "/10 s";
    svg.appendChild(title);
    return svg;
  }
  function fill(id, head, rows, empty) {
    var t = $(id);
    while (t.firstChild) t.removeChild(t.firstChild);
    var tr = el("tr");
    head.forEach(function (h) { tr.appendChild(el("th", h)); });
    t.appendChild(tr);
    if (rows.length === 0) {
      var r = el("tr"), td = el("td", empty, "empty");
      td.colSpan = head.length;
      r.appendChild(td);
      t.appendChild(r);
      return;
    }
    rows.forEach(function (cells) {
      var r = el("tr");
      cells.forEach(function (c) {
        var td = el("td");
        if (c && typeof c === "object" && c.nodeType) td.appendChild(c);
        else td.textContent = c === null || c === undefined ? "" : String(c);
        r.appendChild(td);
      });
      t.appendChild(r);
    });
  }
  function render(s) {
    $("uptime").textContent = dur(s.uptimeS * 1000);
    fill("active", ["client", "kind", "registry", "image / target", "bytes", "rate", "for"],
      s.active.map(function (a) { return [a.client, a.kind, a.registry || "", a.what, size(a.bytes), size(a.rate) + "/s", dur(a.ms)]; }),
      "nothing in flight");
    fill("registries", ["registry", "requests", "errors", "bytes", "last 15 min"],
      s.registries.map(function (r) { return [r.name, r.requests, r.errors, size(r.bytes), r.spark.length ? spark(r.spark) : "no traffic yet"]; }),
      "no traffic yet");
    fill("recent", ["time", "client", "kind", "request", "status", "bytes", "took", "notes"],
      s.recent.map(function (r) { return [time(r.time), r.client, r.kind, (r.registry ? r.registry + " " : "") + r.method + " " + r.what, r.status, size(r.bytes), dur(r.ms), r.notes]; }),
      "no request yet");
    fill("errors", ["time", "request", "status", "error", "hint"],
      s.errors.map(function (e) { return [time(e.time), (e.registry ? e.registry + " " : "") + e.what, e.status, e.message, e.hint]; }),
      "no errors");
    if (s.cluster && $("replicas")) {
      $("cluster").textContent = s.cluster.up ? "store answering (prefix " + s.cluster.prefix + "); " + s.cluster.replicas.length + " live" : "store NOT answering" + (s.cluster.lastError ? " (" + s.cluster.lastError + ")" : "") + ": this replica decides alone until it is back";
      $("cluster").className = s.cluster.up ? "ok" : "bad";
      fill("replicas", ["replica", "version", "host", "up for", "in flight", "config"],
        s.cluster.replicas.map(function (r) { return [r.id, r.version, r.host, dur(r.uptimeS * 1000), r.active, r.config]; }),
        "no heartbeat read yet");
    }
    $("live").textContent = "live, updated " + time(s.now);
    $("live").className = "ok";
  }
  function poll() {
    fetch("status.json", { cache: "no-store", credentials: "same-origin" })
      .then(function (r) { if (!r.ok) throw new Error("status.json answered " + r.status); return r.json(); })
      .then(render)
      .catch(function (e) { $("live").textContent = "not updating: " + e.message; $("live").className = "bad"; })
      .then(function () { setTimeout(poll, POLL_MS); });
  }
  poll();
})();
`;
