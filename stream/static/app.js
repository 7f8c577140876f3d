// The longwatch browser client: send the camera over WebRTC, ask questions, list streams.
// Talks to the service's HTTP side only: POST /offer, POST /api/ask, GET /api/streams,
// /api/watches and a watch's events.
"use strict";

const $ = (id) => document.getElementById(id);
const STATS_MS = 1000;
const STREAMS_MS = 3000;
const ICE_GATHER_MS = 3000;

let pc = null;
let media = null;
let statsTimer = null;

// --- helpers -------------------------------------------------------------------------------

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

// 3723.5 -> "1:02:03.5", 12 -> "0:12", as the command line prints times.
function formatTime(seconds) {
  const tenths = Math.round(Math.abs(seconds) * 10);
  const h = Math.floor(tenths / 36000);
  const m = Math.floor((tenths % 36000) / 600);
  const s = Math.floor((tenths % 600) / 10);
  const t = tenths % 10;
  const pad = (n) => String(n).padStart(2, "0");
  const text = h ? `${h}:${pad(m)}:${pad(s)}` : `${m}:${pad(s)}`;
  return t ? `${text}.${t}` : text;
}

// Control characters (an untrained model emits them) shown escaped rather than interpreted.
function printable(text) {
  return text.replace(/[\u0000-\u0008\u000b-\u001f\u007f\ufffd]/g,
    (c) => "\\x" + c.charCodeAt(0).toString(16).padStart(2, "0"));
}

// A server with API keys answers 401 until the page sends one: ask for it once, keep it for the tab.
const KEY_ITEM = "longwatch-api-key";

async function send(method, path, body) {
  const headers = body ? { "Content-Type": "application/json" } : {};
  const key = sessionStorage.getItem(KEY_ITEM);
  if (key) headers.Authorization = `Bearer ${key}`;
  return fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined });
}

let keyDeclined = false; // the prompt was dismissed: polling does not ask again

// A picture the API serves (it wants the key too, so no plain <img src>): an object URL for it.
async function pictureUrl(path) {
  let response = await send("GET", path);
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return URL.createObjectURL(await response.blob());
}

async function api(method, path, body) {
  const used = sessionStorage.getItem(KEY_ITEM);
  let response = await send(method, path, body);
  const current = sessionStorage.getItem(KEY_ITEM);
  if (response.status === 401 && current && current !== used) {
    response = await send(method, path, body); // a request beside this one got the key meanwhile
  }
  if (response.status === 401) {
    sessionStorage.removeItem(KEY_ITEM); // none, or one the server no longer takes
    const key = keyDeclined ? null : window.prompt("This longwatch server needs an API key:");
    keyDeclined = !key;
    if (key) {
      sessionStorage.setItem(KEY_ITEM, key.trim());
      response = await send(method, path, body);
    }
  }
  let data = null;
  try {
    data = await response.json();
  } catch (e) {
    throw new Error(`${path}: HTTP ${response.status}, not JSON`);
  }
  if (!response.ok) throw new Error(data && data.error ? data.error : `${path}: HTTP ${response.status}`);
  return data;
}

// The offer is sent whole, with its ICE candidates: wait until gathering is complete (or enough).
function iceGatheringDone(peer) {
  if (peer.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ICE_GATHER_MS);
    peer.addEventListener("icegatheringstatechange", () => {
      if (peer.iceGatheringState === "complete") {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}

// --- sending -------------------------------------------------------------------------------

function setSending(sending) {
  $("start").disabled = sending;
  $("stop").disabled = !sending;
  $("stream-id").disabled = sending;
}

async function start(event) {
  event.preventDefault();
  showError("");
  setSending(true);
  try {
    media = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 640 }, height: { ideal: 480 } },
      audio: false,
    });
    $("preview").srcObject = media;
    pc = new RTCPeerConnection({ iceServers: [] });
    pc.addEventListener("connectionstatechange", showConnection);
    for (const track of media.getVideoTracks()) {
      pc.addTransceiver(track, { direction: "sendonly", streams: [media] });
    }
    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringDone(pc);
    const answer = await api("POST", "/offer", {
      sdp: pc.localDescription.sdp,
      type: "offer",
      stream_id: $("stream-id").value.trim() || null,
    });
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    $("current-stream").textContent = answer.stream_id;
    $("current-stream").className = "live";
    $("stream-id").value = answer.stream_id;
    if (!$("ask-stream").value) $("ask-stream").value = answer.stream_id;
    statsTimer = setInterval(showFramesSent, STATS_MS);
    refreshStreams();
  } catch (e) {
    showError(`could not start: ${e.message}`);
    stop();
  }
}

// Closing the connection ends the stream: the service commits its last frames.
function stop() {
  if (statsTimer) clearInterval(statsTimer);
  statsTimer = null;
  if (pc) {
    showFramesSent();
    pc.close();
  }
  pc = null;
  if (media) media.getTracks().forEach((t) => t.stop());
  media = null;
  $("preview").srcObject = null;
  $("connection").textContent = "closed";
  $("current-stream").className = "";
  setSending(false);
  setTimeout(refreshStreams, 500);
}

function showConnection() {
  if (!pc) return;
  $("connection").textContent = pc.connectionState;
  if (pc.connectionState === "failed") {
    showError("the WebRTC connection failed (is the service reachable from this browser?)");
    stop();
  }
}

async function showFramesSent() {
  if (!pc) return;
  const report = await pc.getStats();
  report.forEach((s) => {
    if (s.type === "outbound-rtp" && (s.kind || s.mediaType) === "video") {
      $("frames-sent").textContent = String(s.framesSent ?? s.framesEncoded ?? 0);
    }
  });
}

// --- asking --------------------------------------------------------------------------------

async function ask(event) {
  event.preventDefault();
  showError("");
  $("ask").disabled = true;
  $("ask").textContent = "Asking…";
  try {
    const result = await api("POST", "/api/ask", {
      stream_id: $("ask-stream").value.trim(),
      question: $("question").value,
    });
    showAnswer(result);
  } catch (e) {
    showError(e.message);
  } finally {
    $("ask").disabled = false;
    $("ask").textContent = "Ask";
  }
}

function showAnswer(result) {
  const text = printable(result.answer).trim();
  $("answer").textContent = text || "(the model answered only blank space)";
  const list = $("evidence");
  list.replaceChildren();
  for (const e of result.evidence) {
    const item = document.createElement("li");
    item.className = "span";
    item.textContent = `${formatTime(e.start_s)} – ${formatTime(e.end_s)}  ·  score ${e.score.toFixed(2)}  ·  chunk ${e.chunk_index}`;
    list.appendChild(item);
  }
  const total = result.timings && result.timings.total_ms;
  $("timing").textContent = total ? `${Math.round(total)} ms · ${result.model}` : result.model;
  $("answer-box").hidden = false;
  showEvidencePictures(result).catch((e) => showError(e.message));
  showTimeline(result).catch((e) => showError(e.message));
  offerPlayback(result).catch(() => {}); // an upload or a live stream has no file to play: no player
}

// An archive read from the server's own folders can play each cited span from its file.
async function offerPlayback(result) {
  const video = $("evidence-video");
  video.hidden = true;
  const id = encodeURIComponent(result.stream_id);
  const link = await api("GET", `/api/streams/${id}/video`);
  video.src = link.url;
  video.hidden = false;
  const items = $("evidence").querySelectorAll("li");
  result.evidence.forEach((e, n) => {
    const play = document.createElement("button");
    play.type = "button";
    play.className = "play";
    play.textContent = "▶";
    play.title = `play ${formatTime(e.start_s)} – ${formatTime(e.end_s)}`;
    play.addEventListener("click", () => playSpan(video, e.start_s, e.end_s));
    items[n].prepend(play);
  });
}

function playSpan(video, start, end) {
  video.currentTime = start;
  const stopAtEnd = () => {
    if (video.currentTime >= end) { video.pause(); video.removeEventListener("timeupdate", stopAtEnd); }
  };
  video.addEventListener("timeupdate", stopAtEnd);
  video.play().catch(() => {}); // a browser may refuse to autoplay; the controls still work
}

// The evidence as pictures: each cited chunk's kept frames, with their times; a click enlarges.
async function showEvidencePictures(result) {
  const strip = $("evidence-strip");
  for (const img of strip.querySelectorAll("img")) URL.revokeObjectURL(img.src);
  strip.replaceChildren();
  const id = encodeURIComponent(result.stream_id);
  for (const e of result.evidence) {
    for (const t of e.picture_times_s || []) {
      const figure = document.createElement("figure");
      const img = document.createElement("img");
      img.alt = `the frame at ${formatTime(t)}`;
      img.dataset.time = String(t);
      const caption = document.createElement("figcaption");
      caption.textContent = formatTime(t);
      figure.append(img, caption);
      strip.appendChild(figure);
      img.src = await pictureUrl(`/api/streams/${id}/frames/${t}`);
      img.addEventListener("click", () => enlarge(img.src, t));
    }
  }
}

function enlarge(src, t) {
  $("lightbox-image").src = src;
  $("lightbox-time").textContent = formatTime(t);
  $("lightbox").hidden = false;
}

// The stream's chunks along its time, gaps and dropped frames visible, the evidence marked.
async function showTimeline(result) {
  const id = encodeURIComponent(result.stream_id);
  const t = await api("GET", `/api/streams/${id}/timeline`);
  const bar = $("timeline");
  bar.replaceChildren();
  const end = Math.max(t.duration_s, 1);
  const cited = new Set(result.evidence.map((e) => e.chunk_index));
  for (const [index, start, stop] of t.chunks) {
    const block = document.createElement("span");
    block.className = cited.has(index) ? "chunk cited" : "chunk";
    block.style.left = `${(100 * start) / end}%`;
    block.style.width = `${Math.max(0.2, (100 * (stop - start)) / end)}%`;
    block.title = `chunk ${index}: ${formatTime(start)} – ${formatTime(stop)}`;
    block.dataset.chunk = String(index);
    bar.appendChild(block);
  }
  bar.title = `${t.chunks.length} chunks kept (${t.chunks_dropped} dropped by retention), `
    + `${t.frames_dropped} frames dropped live, ${formatTime(t.duration_s)} in all`;
}

// --- streams -------------------------------------------------------------------------------

// "7 d, 2.0 GB · 12 chunks dropped": the retention in force, and what it took so far.
function retention(s) {
  const parts = [];
  if (s.retention_age_s) parts.push(s.retention_age_s >= 86400 ? `${+(s.retention_age_s / 86400).toFixed(2)} d`
    : formatTime(s.retention_age_s));
  if (s.retention_bytes) parts.push(`${(s.retention_bytes / 1e9).toFixed(1)} GB`);
  const kept = parts.length ? parts.join(", ") : "all";
  return s.chunks_dropped ? `${kept} · ${s.chunks_dropped} chunks dropped` : kept;
}

async function refreshStreams() {
  let streams;
  try {
    streams = await api("GET", "/api/streams");
  } catch (e) {
    return; // the table keeps its last content; errors show where the user acted
  }
  const body = $("streams");
  body.replaceChildren();
  if (!streams.length) {
    body.innerHTML = '<tr><td colspan="7">no streams yet</td></tr>';
    return;
  }
  for (const s of streams) {
    const row = document.createElement("tr");
    const id = document.createElement("a");
    id.textContent = s.stream_id;
    id.title = "ask about this stream";
    id.addEventListener("click", () => { $("ask-stream").value = s.stream_id; $("question").focus(); });
    const cells = [id, s.state, formatTime(s.duration_s), `${s.frames_kept}/${s.frames_sampled}`,
      String(s.chunks - (s.chunks_dropped || 0)), String(s.frames_dropped), retention(s)];
    for (const value of cells) {
      const cell = document.createElement("td");
      if (typeof value === "string") cell.textContent = value; else cell.appendChild(value);
      if (value === "live") cell.className = "live";
      row.appendChild(cell);
    }
    body.appendChild(row);
  }
}

// --- watching ------------------------------------------------------------------------------

// The followed watch's events come as server-sent events. EventSource cannot send the API key, so
// the stream is read with fetch; after a break it resumes with Last-Event-ID: nothing is missed or
// shown twice.
let following = null; // {id, controller, lastEventId}

async function createWatch(event) {
  event.preventDefault();
  showError("");
  try {
    const watch = await api("POST", "/api/watches", {
      stream_id: $("watch-stream").value.trim(),
      question: $("watch-question").value,
      match: $("watch-match").value.trim(),
    });
    await refreshWatches();
    follow(watch.watch_id);
  } catch (e) {
    showError(e.message);
  }
}

async function refreshWatches() {
  const watches = await api("GET", "/api/watches");
  const select = $("watches");
  const chosen = following ? following.id : select.value;
  select.replaceChildren(new Option("your watches…", ""));
  for (const w of watches) {
    const where = w.stream_id || "all streams";
    select.add(new Option(`${w.watch_id} · ${where} · ${w.question} (${w.events} events)`, w.watch_id));
  }
  select.value = chosen;
}

function follow(watchId) {
  if (following) following.controller.abort();
  $("watch-events").replaceChildren();
  $("watches").value = watchId;
  $("unwatch").disabled = !watchId;
  following = null;
  if (!watchId) return;
  following = { id: watchId, controller: new AbortController(), lastEventId: "" };
  $("watch-status").textContent = `following ${watchId}: its events since it began, then as they come`;
  readEvents(following).catch(() => {});
}

async function readEvents(state) {
  while (following === state) {
    try {
      const headers = {};
      const key = sessionStorage.getItem(KEY_ITEM);
      if (key) headers.Authorization = `Bearer ${key}`;
      if (state.lastEventId) headers["Last-Event-ID"] = state.lastEventId;
      const path = `/api/watches/${encodeURIComponent(state.id)}/events`;
      const response = await fetch(path, { headers, signal: state.controller.signal });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        throw new Error(body.error || `${path}: HTTP ${response.status}`);
      }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          showWatchEvent(state, buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch (e) {
      if (state.controller.signal.aborted) return;
      $("watch-status").textContent = `${e.message}; trying again`;
    }
    await new Promise((r) => setTimeout(r, 2000)); // the server went away: resume after the last event
  }
}

function showWatchEvent(state, block) {
  let id = "";
  let data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("id: ")) id = line.slice(4);
    else if (line.startsWith("data: ")) data += line.slice(6);
  }
  if (!data || following !== state) return;
  state.lastEventId = id;
  const e = JSON.parse(data);
  const item = document.createElement("li");
  item.className = "span";
  const soFar = e.pending ? " so far" : "";
  item.textContent = `${e.stream_id} · ${formatTime(e.start_s)} – ${formatTime(e.end_s)}${soFar} · ` +
    `score ${e.score.toFixed(2)} · ${printable(e.answer)}`;
  item.title = `event ${e.event_id}, chunk ${e.chunk_index}`;
  $("watch-events").prepend(item);
}

async function deleteWatch() {
  const id = $("watches").value;
  if (!id) return;
  try {
    await api("DELETE", `/api/watches/${encodeURIComponent(id)}`);
    follow("");
    await refreshWatches();
    $("watch-status").textContent = `deleted ${id}`;
  } catch (e) {
    showError(e.message);
  }
}

// --- wiring --------------------------------------------------------------------------------

$("send-form").addEventListener("submit", start);
$("stop").addEventListener("click", stop);
$("ask-form").addEventListener("submit", ask);
$("watch-form").addEventListener("submit", createWatch);
$("watches").addEventListener("change", (e) => follow(e.target.value));
$("unwatch").addEventListener("click", deleteWatch);
$("lightbox").addEventListener("click", () => { $("lightbox").hidden = true; });
window.addEventListener("beforeunload", () => { if (pc) pc.close(); });

const preset = new URLSearchParams(location.search).get("stream");
if (preset) {
  $("stream-id").value = preset;
  $("ask-stream").value = preset;
}
if (!window.RTCPeerConnection || !navigator.mediaDevices) {
  showError("this browser cannot send video from here: WebRTC and the camera need a secure page " +
    "(https, or http://localhost)");
  $("start").disabled = true;
}
refreshStreams();
setInterval(refreshStreams, STREAMS_MS);
refreshWatches().catch(() => {});
