// Analyst page of `deepfake-detect serve`: upload a photo or video, show the verdict, the
// per-frame timeline, face heatmaps and the model card. Plain JS on purpose: no build step,
// no framework, nothing fetched from outside the service.
//
// Every string that comes from the server is put into the DOM with textContent (never
// innerHTML), so a hostile file name or error message cannot inject markup.
"use strict";

(() => {
  const TOKEN_KEY = "deepfake-detect.token";
  const POLL_MS = 500;
  // Consecutive failed polls tolerated before giving up on a job (a proxy hiccup is not fatal).
  const POLL_RETRIES = 3;
  // Thumbnails beyond this are left out: a long video can have thousands of faces.
  const MAX_FACES = 200;

  const $ = (id) => document.getElementById(id);

  const state = {
    file: null, // the file last chosen, for "Analyse again"
    result: null, // the last result JSON, for the downloads and redraws
    run: 0, // bumped by every new analysis; callbacks of an older one see the change and stop
    xhr: null, // the upload in flight, aborted when a new one starts
    modelFromResult: false, // a result's model card wins over the one fetched on load
    modelsCall: 0, // numbers the GET /v1/models requests
  };

  // ---------------------------------------------------------------- token / requests

  function loadToken() {
    try {
      $("token").value = localStorage.getItem(TOKEN_KEY) || "";
    } catch (_) {
      // localStorage can be unavailable (privacy modes); the token then lasts for the page only.
    }
  }

  function saveToken() {
    try {
      const value = $("token").value.trim();
      if (value) localStorage.setItem(TOKEN_KEY, value);
      else localStorage.removeItem(TOKEN_KEY);
    } catch (_) {
      /* see loadToken */
    }
  }

  function authHeaders() {
    const token = $("token").value.trim();
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  function parseJson(text) {
    try {
      return JSON.parse(text);
    } catch (_) {
      return null;
    }
  }

  // The service answers errors as {error: {kind, message}}; FastAPI's own errors (404, 422)
  // come as {detail: ...}. Anything else (a proxy's HTML page) falls back to the status line.
  function errorText(status, body) {
    if (body && body.error && typeof body.error === "object") {
      const { kind, message } = body.error;
      const text = String(message || kind || "Request failed");
      return kind && message ? `${text} (${kind})` : text;
    }
    if (body && body.detail !== undefined) {
      if (typeof body.detail === "string") return body.detail;
      if (Array.isArray(body.detail)) {
        return body.detail.map((d) => (d && d.msg) || JSON.stringify(d)).join("; ");
      }
    }
    if (status === 401 || status === 403) return `Not authorised (HTTP ${status}): check the API token`;
    return status ? `Request failed (HTTP ${status})` : "Could not reach the server";
  }

  // ---------------------------------------------------------------- status / progress / errors

  function setState(name) {
    // Exposed for styling and for tests that wait on the page: idle|uploading|processing|done|error.
    document.body.dataset.state = name;
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = false;
    $("progress-box").hidden = true;
    setState("error");
  }

  function clearError() {
    $("error").textContent = "";
    $("error").hidden = true;
  }

  // fraction in 0..1, or null for "busy, amount unknown" (an indeterminate bar).
  function setProgress(label, fraction) {
    const bar = $("progress");
    $("progress-box").hidden = false;
    $("progress-label").textContent = label;
    if (fraction === null || fraction === undefined || Number.isNaN(fraction)) {
      bar.removeAttribute("value");
    } else {
      bar.value = Math.min(1, Math.max(0, fraction));
    }
  }

  const pct = (x, digits = 1) => `${(x * 100).toFixed(digits)}%`;
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // ---------------------------------------------------------------- analysis

  function analyse(file) {
    if (!file) return;
    const run = ++state.run;
    if (state.xhr) state.xhr.abort();
    state.file = file;
    state.result = null;
    clearError();
    $("result").hidden = true;
    $("download-json").disabled = true;
    $("download-csv").disabled = true;
    $("analyse").disabled = false;
    $("file-name").textContent = file.name;
    setState("uploading");
    setProgress("Uploading… 0%", 0);

    const form = new FormData();
    form.append("file", file, file.name);
    form.append("aggregation", $("aggregation").value);
    form.append("tta", $("tta").checked ? "true" : "false");
    form.append("explain", $("explain").checked ? "true" : "false");

    // XMLHttpRequest rather than fetch: only it reports upload progress.
    const xhr = new XMLHttpRequest();
    state.xhr = xhr;
    xhr.open("POST", "v1/predict");
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.upload.addEventListener("progress", (e) => {
      if (run === state.run && e.lengthComputable) {
        setProgress(`Uploading… ${pct(e.loaded / e.total, 0)}`, e.loaded / e.total);
      }
    });
    xhr.upload.addEventListener("load", () => {
      // The bytes are sent; an image is scored before the response, so the bar is indeterminate.
      if (run === state.run) {
        setState("processing");
        setProgress("Analysing…", null);
      }
    });
    xhr.addEventListener("load", () => {
      if (run !== state.run) return;
      state.xhr = null;
      const body = parseJson(xhr.responseText);
      if (xhr.status === 200 && body) {
        render(body);
      } else if (xhr.status === 202 && body && body.status_url) {
        setState("processing");
        setProgress("Queued…", 0);
        pollJob(new URL(body.status_url, document.baseURI).href, run);
      } else {
        showError(errorText(xhr.status, body));
      }
    });
    xhr.addEventListener("error", () => {
      if (run === state.run) showError("Could not reach the server (network error during upload)");
    });
    xhr.send(form);
  }

  // Videos are scored in the background: follow the job until it is done or failed.
  async function pollJob(url, run) {
    let failures = 0;
    while (run === state.run) {
      let response;
      let body;
      try {
        response = await fetch(url, { headers: authHeaders(), cache: "no-store" });
        body = parseJson(await response.text());
      } catch (_) {
        if (run !== state.run) return;
        if (++failures > POLL_RETRIES) {
          showError("Lost contact with the server while the video was being analysed");
          return;
        }
        await sleep(POLL_MS);
        continue;
      }
      if (run !== state.run) return;
      failures = 0;
      if (!response.ok || !body) {
        showError(errorText(response.status, body));
        return;
      }
      if (body.state === "done") {
        render(body.result || {});
        return;
      }
      if (body.state === "failed") {
        showError(errorText(0, { error: body.error || { message: "The video job failed" } }));
        return;
      }
      const progress = typeof body.progress === "number" ? body.progress : null;
      if (body.state === "queued") setProgress("Queued…", 0);
      else setProgress(`Analysing video… ${progress === null ? "" : pct(progress, 0)}`, progress);
      await sleep(POLL_MS);
    }
  }

  // ---------------------------------------------------------------- rendering

  function render(result) {
    state.result = result;
    $("progress-box").hidden = true;
    const section = $("result");
    section.dataset.filename = baseName(result.filename || (state.file && state.file.name) || "");
    section.hidden = false;
    renderBanner(result);
    renderSummary(result);
    // Unhide the timeline before drawing: the canvas takes its width from the layout.
    const timelineBox = $("timeline-box");
    timelineBox.hidden = result.media !== "video";
    if (!timelineBox.hidden) drawTimeline();
    renderFaces(result.faces || []);
    if (result.model) {
      state.modelFromResult = true;
      renderModelCards([result.model]);
    }
    $("download-json").disabled = false;
    $("download-csv").disabled = !Array.isArray(result.frames);
    setState("done");
  }

  function renderBanner(result) {
    const banner = $("banner");
    const p = result.p_fake;
    const noFace = result.status === "no_face" || typeof p !== "number";
    if (noFace) {
      banner.dataset.verdict = "none";
      $("verdict").textContent = "No face found";
      $("p-fake").textContent = "";
      $("p-fake").hidden = true;
      $("threshold").textContent = "";
      return;
    }
    const threshold = typeof result.threshold === "number" ? result.threshold : 0.5;
    // The server's verdict is authoritative; its rule (fake when P(fake) > threshold) only
    // fills in a missing one.
    const verdict = result.verdict || (p > threshold ? "fake" : "real");
    banner.dataset.verdict = verdict === "fake" ? "fake" : "real";
    $("verdict").textContent = String(verdict).toUpperCase();
    $("p-fake").textContent = pct(p);
    $("p-fake").title = result.calibrated ? "calibrated probability of fake" : "uncalibrated fake score";
    $("p-fake").hidden = false;
    $("threshold").textContent =
      `${result.calibrated ? "calibrated" : "uncalibrated"} probability of fake · threshold ${pct(threshold)}`;
  }

  function renderSummary(result) {
    const parts = [];
    if (result.filename) parts.push(baseName(result.filename));
    if (result.media) parts.push(result.media);
    const counts = result.counts || {};
    if (typeof counts.frames === "number") parts.push(`${counts.frames} frame${counts.frames === 1 ? "" : "s"}`);
    if (typeof counts.faces === "number") parts.push(`${counts.faces} face${counts.faces === 1 ? "" : "s"}`);
    const timings = result.timings || {};
    for (const [key, value] of Object.entries(timings)) {
      if (typeof value === "number") parts.push(`${key.replaceAll("_", " ")} ${value.toFixed(2)} s`);
    }
    $("summary").textContent = parts.join(" · ");
    // Notes are the server's remarks on this analysis (e.g. an option it could not apply).
    const notes = $("notes");
    notes.replaceChildren();
    for (const note of Array.isArray(result.notes) ? result.notes : []) {
      const li = document.createElement("li");
      li.textContent = String(note);
      notes.append(li);
    }
    notes.hidden = !notes.children.length;
  }

  function renderFaces(faces) {
    const box = $("faces");
    box.replaceChildren();
    if (!faces.length) {
      const p = document.createElement("p");
      p.className = "muted";
      p.textContent = "No faces.";
      box.append(p);
      return;
    }
    for (const face of faces.slice(0, MAX_FACES)) {
      const figure = document.createElement("figure");
      figure.className = "face";
      const where = `frame ${face.frame ?? "?"}, face ${face.face ?? "?"}`;
      // Only data: image URLs are shown: the page never loads images from elsewhere.
      if (typeof face.heatmap === "string" && face.heatmap.startsWith("data:image/")) {
        const img = document.createElement("img");
        img.className = "heatmap";
        img.src = face.heatmap;
        img.alt = `Heatmap of ${where}`;
        img.width = 128;
        img.height = 128;
        figure.append(img);
      }
      const caption = document.createElement("figcaption");
      const lines = [where];
      if (typeof face.time === "number") lines[0] += ` · ${face.time.toFixed(2)} s`;
      if (typeof face.score === "number") lines.push(`score ${face.score.toFixed(3)}`);
      if (Array.isArray(face.box)) lines.push(`box ${face.box.map((v) => Math.round(v)).join(", ")}`);
      for (const line of lines) {
        const div = document.createElement("div");
        div.textContent = line;
        caption.append(div);
      }
      figure.append(caption);
      box.append(figure);
    }
    if (faces.length > MAX_FACES) {
      const p = document.createElement("p");
      p.className = "muted";
      p.textContent = `${faces.length - MAX_FACES} more faces are in the JSON download.`;
      box.append(p);
    }
  }

  // ---------------------------------------------------------------- model card

  // /v1/models may answer one card, a list, or {models: [...]}; accept all three.
  async function loadModels() {
    // Only the latest request may draw: an answer to the tokenless request made on load can
    // arrive after the one made once the token was pasted.
    const call = ++state.modelsCall;
    const stale = () => call !== state.modelsCall || state.modelFromResult;
    try {
      const response = await fetch("v1/models", { headers: authHeaders(), cache: "no-store" });
      const body = parseJson(await response.text());
      if (stale()) return;
      if (!response.ok) {
        modelMessage(`Model card unavailable: ${errorText(response.status, body)}`);
        return;
      }
      const cards = Array.isArray(body) ? body : body && Array.isArray(body.models) ? body.models : [body];
      renderModelCards(cards.filter((c) => c && typeof c === "object"));
    } catch (_) {
      if (!stale()) modelMessage("Model card unavailable: could not reach the server");
    }
  }

  function modelMessage(text) {
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = text;
    $("model-card").replaceChildren(p);
  }

  function renderModelCards(cards) {
    const box = $("model-card");
    box.replaceChildren();
    if (!cards.length) {
      modelMessage("No model card.");
      return;
    }
    for (const card of cards) box.append(definitionList(card));
  }

  // A nested object becomes nested <dl>s, so any model card shape displays without code changes.
  function definitionList(obj) {
    const dl = document.createElement("dl");
    for (const [key, value] of Object.entries(obj)) {
      const dt = document.createElement("dt");
      dt.textContent = key.replaceAll("_", " ");
      const dd = document.createElement("dd");
      if (value && typeof value === "object" && !Array.isArray(value)) {
        dd.append(definitionList(value));
      } else if (Array.isArray(value) && value.some((v) => v && typeof v === "object")) {
        // e.g. an ensemble's members: one nested list each
        for (const item of value) {
          if (item && typeof item === "object") dd.append(definitionList(item));
          else dd.append(document.createTextNode(String(item)));
        }
      } else if (Array.isArray(value)) {
        dd.textContent = value.map(String).join(", ");
      } else {
        dd.textContent = value === null || value === undefined ? "—" : String(value);
      }
      dl.append(dt, dd);
    }
    return dl;
  }

  // ---------------------------------------------------------------- timeline

  function drawTimeline() {
    const result = state.result;
    const canvas = $("timeline");
    if (!result || $("timeline-box").hidden) return;
    const frames = (result.frames || []).filter((f) => f && typeof f === "object");
    const threshold = typeof result.threshold === "number" ? result.threshold : 0.5;

    // Draw at device resolution so lines stay sharp on high-DPI screens.
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 800;
    const height = canvas.clientHeight || 220;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);

    const m = { left: 44, right: 14, top: 12, bottom: 30 };
    const plotW = width - m.left - m.right;
    const plotH = height - m.top - m.bottom;
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, width, height);

    // Time on the x axis when every frame has one, else the frame number.
    const useTime = frames.length > 0 && frames.every((f) => typeof f.time === "number");
    const xs = frames.map((f) => (useTime ? f.time : Number(f.frame) || 0));
    // Time starts at 0 so that the plot shows where in the video the analysed frames lie.
    let xMin = xs.length ? Math.min(useTime ? 0 : Infinity, ...xs) : 0;
    let xMax = xs.length ? Math.max(...xs) : 1;
    if (xMax - xMin < 1e-9) {
      xMin -= 0.5;
      xMax += 0.5;
    }
    const px = (x) => m.left + ((x - xMin) / (xMax - xMin)) * plotW;
    const py = (y) => m.top + (1 - y) * plotH;

    // Grid and axis labels.
    ctx.font = "11px system-ui, sans-serif";
    ctx.lineWidth = 1;
    ctx.strokeStyle = "#e3e6ea";
    ctx.fillStyle = "#555";
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const y of [0, 0.25, 0.5, 0.75, 1]) {
      ctx.beginPath();
      ctx.moveTo(m.left, py(y));
      ctx.lineTo(m.left + plotW, py(y));
      ctx.stroke();
      ctx.fillText(y.toFixed(2), m.left - 6, py(y));
    }
    ctx.textBaseline = "top";
    for (let i = 0; i <= 4; i++) {
      const x = xMin + ((xMax - xMin) * i) / 4;
      // The end labels align inwards so that they are not cut off at the canvas edges.
      ctx.textAlign = i === 0 ? "left" : i === 4 ? "right" : "center";
      ctx.fillText(useTime ? `${x.toFixed(1)} s` : String(Math.round(x)), px(x), m.top + plotH + 8);
    }

    // Threshold: above it a frame counts as fake.
    ctx.save();
    ctx.strokeStyle = "#c0392b";
    ctx.setLineDash([6, 4]);
    ctx.beginPath();
    ctx.moveTo(m.left, py(threshold));
    ctx.lineTo(m.left + plotW, py(threshold));
    ctx.stroke();
    ctx.restore();
    ctx.fillStyle = "#c0392b";
    ctx.textAlign = "right";
    ctx.textBaseline = "bottom";
    ctx.fillText(`threshold ${threshold.toFixed(2)}`, m.left + plotW, py(threshold) - 2);

    // The score line, broken where a frame has no face (score null).
    ctx.strokeStyle = "#2c6fbb";
    ctx.lineWidth = 2;
    ctx.beginPath();
    let open = false;
    frames.forEach((f, i) => {
      if (typeof f.score !== "number") {
        open = false;
        return;
      }
      if (open) ctx.lineTo(px(xs[i]), py(f.score));
      else ctx.moveTo(px(xs[i]), py(f.score));
      open = true;
    });
    ctx.stroke();
    frames.forEach((f, i) => {
      if (typeof f.score === "number") {
        ctx.fillStyle = f.score > threshold ? "#c0392b" : "#1e8449";
        ctx.beginPath();
        ctx.arc(px(xs[i]), py(f.score), 3.5, 0, 2 * Math.PI);
        ctx.fill();
      } else {
        // A grey tick on the axis marks a frame without a face.
        ctx.fillStyle = "#999";
        ctx.fillRect(px(xs[i]) - 1, m.top + plotH - 6, 2, 6);
      }
    });
  }

  // ---------------------------------------------------------------- downloads

  function baseName(name) {
    return String(name).split(/[\\/]/).pop();
  }

  function stem() {
    const name = baseName((state.result && state.result.filename) || (state.file && state.file.name) || "result");
    return name.replace(/\.[^.]*$/, "") || "result";
  }

  function download(filename, text, type) {
    const url = URL.createObjectURL(new Blob([text], { type }));
    const a = document.createElement("a");
    a.href = url;
    a.download = filename;
    document.body.append(a);
    a.click();
    a.remove();
    // Revoke later: the browser reads the blob after click() returns.
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  const csvCell = (v) => {
    if (v === null || v === undefined) return "";
    const s = String(v);
    return /[",\n\r]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
  };

  function downloadJson() {
    if (!state.result) return;
    download(`${stem()}.json`, JSON.stringify(state.result, null, 2) + "\n", "application/json");
  }

  function downloadCsv() {
    if (!state.result) return;
    const rows = [["frame", "time", "score"]];
    for (const f of state.result.frames || []) rows.push([f.frame, f.time, f.score]);
    download(`${stem()}_frames.csv`, rows.map((r) => r.map(csvCell).join(",")).join("\n") + "\n", "text/csv");
  }

  // ---------------------------------------------------------------- wiring

  function wireDropZone() {
    const zone = $("drop-zone");
    // Dropping a file anywhere else would make the browser navigate to it and lose the page.
    for (const type of ["dragover", "drop"]) window.addEventListener(type, (e) => e.preventDefault());
    zone.addEventListener("dragenter", (e) => {
      e.preventDefault();
      zone.classList.add("dragging");
    });
    zone.addEventListener("dragover", (e) => {
      e.preventDefault();
      if (e.dataTransfer) e.dataTransfer.dropEffect = "copy";
      zone.classList.add("dragging");
    });
    zone.addEventListener("dragleave", (e) => {
      if (!zone.contains(e.relatedTarget)) zone.classList.remove("dragging");
    });
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("dragging");
      const file = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
      if (file) analyse(file);
    });
  }

  function init() {
    loadToken();
    setState("idle");
    // Saved as typed (requests read the field itself); the model card is fetched again once
    // the field is left, not on every keystroke.
    $("token").addEventListener("input", saveToken);
    $("token").addEventListener("change", () => {
      saveToken();
      if (!state.modelFromResult) loadModels();
    });
    $("token-form").addEventListener("submit", (e) => {
      e.preventDefault(); // Enter in the token field saves it instead of reloading the page
      saveToken();
      if (!state.modelFromResult) loadModels();
    });
    $("token-clear").addEventListener("click", () => {
      $("token").value = "";
      saveToken();
    });
    $("file-input").addEventListener("change", (e) => {
      analyse(e.target.files[0]);
      // Clear it so that choosing the same file again still fires "change".
      e.target.value = "";
    });
    $("analyse").addEventListener("click", () => analyse(state.file));
    $("download-json").addEventListener("click", downloadJson);
    $("download-csv").addEventListener("click", downloadCsv);
    let resizeTimer = 0;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(drawTimeline, 100);
    });
    wireDropZone();
    loadModels();
  }

  init();
})();
