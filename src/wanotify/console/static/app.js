/* wanotify console: the few live parts. Every page works without this file. */
(function () {
  "use strict";
  var meta = document.querySelector('meta[name="csrf-token"]');
  var csrf = meta ? meta.getAttribute("content") : "";

  function post(url, form) {
    return fetch(url, {
      method: "POST",
      body: new FormData(form),
      credentials: "same-origin",
      headers: { "Accept": "application/json", "X-CSRF-Token": csrf }
    }).then(function (r) {
      return r.json().then(function (body) { return { ok: r.ok, body: body }; });
    });
  }

  // Confirmations and forms that post in the background (the page stays, SSE shows the effect).
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      event.preventDefault();
      return;
    }
    if (form.hasAttribute("data-async")) {
      event.preventDefault();
      var out = form.querySelector("[data-async-result]");
      if (out) { out.textContent = "Working…"; }
      post(form.action, form).then(function (res) {
        if (out) { out.textContent = res.ok ? res.body.message : (res.body.detail || "That did not work"); }
      }).catch(function () { if (out) { out.textContent = "Network error"; } });
    }
  });

  // WhatsApp session status, live over Server-Sent Events.
  var box = document.getElementById("session-status");
  if (box && box.hasAttribute("data-live") && window.EventSource) {
    var lastQr = null;
    var source = new EventSource("/console/events");
    var note = box.querySelector("[data-live-note]");
    source.addEventListener("open", function () { if (note) { note.textContent = "Live: this page updates by itself."; } });
    source.addEventListener("error", function () { if (note) { note.textContent = "Live updates interrupted; retrying…"; } });
    source.addEventListener("status", function (e) {
      var s = JSON.parse(e.data).session || { status: "none" };
      var badge = document.querySelector("[data-session-badge]");
      badge.textContent = s.label;
      badge.className = "badge status-" + s.status;
      badge.setAttribute("data-status", s.status);
      var phone = document.querySelector("[data-session-phone]");
      phone.textContent = s.phone_number ? "as " + s.phone_number : "";
      var paused = document.querySelector("[data-session-paused]");
      if (paused) { paused.hidden = s.status === "none" || s.enabled !== false; }
      var err = document.querySelector("[data-session-error]");
      err.textContent = s.error_text || "";
      err.hidden = !s.error_text;
      document.querySelectorAll("[data-show-when]").forEach(function (el) {
        el.hidden = el.getAttribute("data-show-when").split(" ").indexOf(s.status) < 0;
      });
      document.querySelectorAll("[data-show-enabled]").forEach(function (el) {
        el.hidden = String(s.enabled !== false) !== el.getAttribute("data-show-enabled");
      });
      var img = document.querySelector("[data-qr]");
      if (img && s.status === "qr_pending" && s.qr_code && s.qr_code !== lastQr) {
        if (lastQr !== null) { img.src = "/whatsapp/qr.svg?t=" + Date.now(); }
        lastQr = s.qr_code;
      }
    });
    source.addEventListener("pairing_code", function (e) {
      var data = JSON.parse(e.data);
      var pbox = document.querySelector("[data-pairing-box]");
      var code = document.querySelector("[data-pairing-code]");
      if (code) { code.textContent = data.code; }
      if (pbox) { pbox.hidden = false; }
    });
    window.addEventListener("pagehide", function () { source.close(); });
  }

  // Template editor: add variable rows, and the live preview.
  var editor = document.querySelector("form[data-preview]");
  if (editor) {
    var rows = document.getElementById("variables");
    var rowTemplate = document.getElementById("variable-row");
    var add = editor.querySelector("[data-add-variable]");
    if (add && rows && rowTemplate) {
      add.hidden = false;
      add.addEventListener("click", function () {
        var i = rows.querySelectorAll(".var-row").length;
        var html = rowTemplate.innerHTML.replace(/__i__/g, String(i));
        rows.insertAdjacentHTML("beforeend", html);
        rows.querySelector("#var-" + i + "-name").focus();
      });
    }
    var text = document.getElementById("preview-text");
    var problem = document.getElementById("preview-error");
    var timer = null;
    var seq = 0;
    var refresh = function () {
      var mine = ++seq;
      post("/templates/preview", editor).then(function (res) {
        if (mine !== seq) { return; }
        var body = res.body;
        text.textContent = body.text || "";
        text.hidden = !body.text;
        problem.textContent = body.error || (res.ok ? "" : (body.detail || "Preview failed"));
        problem.hidden = !problem.textContent;
      });
    };
    editor.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(refresh, 150);
    });
  }
})();
