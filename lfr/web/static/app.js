// lfr live viewer: cameras over WebRTC, alerts over server-sent events, decisions by POST.
// The session cookie (HttpOnly, set at login) authenticates every request, EventSource and <img>
// included; decisions are recorded under the logged-in user. Without a session the server sends
// the browser to the login page (login.js), which also takes the demo mode's token.
"use strict";

const players = new Map(); // camera -> {pc, viewer, figure, video}
const alerts = new Map(); // alert id -> {data, element}
let state = null;

function status(message) { $("status").textContent = message || ""; }

// -- state: header, counters, cameras ------------------------------------------------------

const COUNTERS = [
  ["faces", "faces"], ["alerts", "alerts"], ["pending", "pending"], ["confirmed", "confirmed"],
  ["false_alerts", "false alerts"], ["no_action", "no action"],
  ["false_alerts_per_1000_faces", "false / 1000 faces"],
];

function renderState(s) {
  state = s;
  $("deployment").textContent = s.name;
  $("location").textContent = s.location;
  document.title = `lfr – ${s.name}`;
  if (s.user) $("user").textContent = `${s.user.name} (${s.user.role}${s.user.auth === "demo_token" ? ", demo token" : ""})`;
  $("counters").replaceChildren(...COUNTERS.map(([key, label]) =>
    el("div", { dataset: { counter: key } }, [el("dt", { text: label }), el("dd", { text: String(s.counters[key]) })])));
  $("pending").textContent = s.counters.pending ? String(s.counters.pending) : "";
  $("privacy").textContent = s.blur_non_matches
    ? `Faces below the threshold (${s.threshold}) are blurred; only frames that went through detection are shown.`
    : "Blurring of faces below the threshold is OFF (config privacy.blur_non_matches = false, audited).";
  renderCameras(s.cameras);
  for (const [id, decision] of Object.entries(s.decisions || {})) {
    const entry = alerts.get(id);
    if (entry && !entry.data.decision) { entry.data.decision = decision; renderAlert(entry.data); }
  }
  // A node's alert placed (just after it arrived) as a further sighting of another node's open
  // alert: shown as a sighting of that alert, which is the one decided.
  for (const [id, joined] of Object.entries(s.sightings || {})) {
    const entry = alerts.get(id);
    if (entry && entry.data.sighting_of !== joined) { entry.data.sighting_of = joined; renderAlert(entry.data); }
  }
  const viewers = new Map((s.viewers || []).map((v) => [v.id, v]));
  for (const [, player] of players) {
    const v = viewers.get(player.viewer);
    if (v) player.meta.textContent = `${v.frames_sent} frames sent, ${v.dropped} skipped`;
  }
}

function renderCameras(cameras) {
  const list = $("cameras");
  list.replaceChildren(...cameras.map((c) => {
    const playing = players.has(c.name);
    const size = c.width ? `${c.width}×${c.height}, ` : "";
    return el("li", { class: "camera", dataset: { camera: c.name } }, [
      el("span", { class: "name", text: c.name }),
      el("span", { class: `state ${c.state}`, text: c.state }),
      el("span", { class: "meta", text: `${size}${c.fps} fps, ${c.viewers}/${state.max_viewers_per_camera} viewers` }),
      el("button", {
        class: playing ? "play secondary" : "play", text: playing ? "Stop" : "Play",
        onclick: () => (players.has(c.name) ? stop(c.name) : play(c.name)),
      }),
    ]);
  }));
}

// -- video over WebRTC -------------------------------------------------------------------------

async function play(camera) {
  status("");
  const iceServers = (state && state.stun_servers || []).map((url) => ({ urls: url }));
  const pc = new RTCPeerConnection({ iceServers });
  const video = el("video", { autoplay: "", playsinline: "", dataset: { camera } });
  video.muted = true;
  const meta = el("span", { class: "meta", text: "connecting…" });
  const figure = el("figure", { dataset: { camera } }, [
    video,
    el("figcaption", {}, [el("strong", { text: camera }), meta,
      el("button", { class: "secondary", text: "Close", onclick: () => stop(camera) })]),
  ]);
  const player = { pc, viewer: null, figure, video, meta };
  players.set(camera, player);
  $("players").append(figure);
  if (state) renderCameras(state.cameras);
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addEventListener("track", (event) => {
    video.srcObject = event.streams[0] || new MediaStream([event.track]);
  });
  pc.addEventListener("connectionstatechange", () => {
    if (pc.connectionState === "failed") { status(`${camera}: video connection failed`); stop(camera); }
  });
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await gatheringComplete(pc);
    const answer = await api("offer", {
      method: "POST",
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type, camera }),
    });
    player.viewer = answer.viewer;
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
  } catch (error) {
    status(`${camera}: ${error.message}`);
    stop(camera);
  }
}

function stop(camera) {
  const player = players.get(camera);
  if (!player) return;
  players.delete(camera);
  player.pc.close();
  player.figure.remove();
  if (player.viewer) api(`api/viewers/${player.viewer}/close`, { method: "POST" }).catch(() => {});
  if (state) renderCameras(state.cameras);
}

window.addEventListener("pagehide", () => {
  for (const [, player] of players) {
    if (player.viewer) {
      fetch(`api/viewers/${player.viewer}/close`, {
        method: "POST", keepalive: true, credentials: "same-origin",
        headers: { "Content-Type": "application/json" }, body: "{}",
      }).catch(() => {});
    }
  }
});

// -- alerts --------------------------------------------------------------------------------

const DECISIONS = [["confirmed", "Confirm"], ["false_alert", "False alert"], ["no_action", "No action"]];

function renderAlert(data) {
  let entry = alerts.get(data.id);
  const mayDecide = !state || !state.user || state.user.role !== "auditor";
  const joined = data.sighting_of;
  const element = el("li", { class: joined ? "alert sighting" : data.decision ? "alert decided" : "alert", dataset: { id: data.id } }, [
    el("div", { class: "images" }, [
      el("figure", {}, [el("img", { src: data.crop_url, alt: `camera crop, ${data.camera}` }),
        el("figcaption", { text: "camera" })]),
      el("figure", {}, [el("img", { src: data.watchlist_url, alt: `watchlist image of ${data.name}` }),
        el("figcaption", { text: "watchlist" })]),
    ]),
    el("div", { class: "who", text: data.name }),
    el("div", { class: "meta", text: `score ${data.score.toFixed(3)} (threshold ${data.threshold})` +
      (data.category ? ` · ${data.category}` : "") }),
    el("div", { class: "meta", text: `${data.camera} · ${new Date(data.time).toLocaleTimeString()}` }),
    joined
      ? el("div", { class: "decision", text: `sighting of alert ${joined.slice(0, 8)}: the same person, raised first; decide that alert` })
      : data.decision
      ? el("div", { class: "decision", text: data.decision.replace("_", " ") + (data.operator ? ` by ${data.operator}` : "") })
      : !mayDecide ? el("div", { class: "decision", text: "pending" })
      : el("div", { class: "actions" }, DECISIONS.map(([decision, label]) =>
        el("button", { class: "decide", dataset: { decision }, text: label, onclick: (e) => decide(data.id, decision, e.target) }))),
  ]);
  if (entry) {
    entry.element.replaceWith(element);
    entry.element = element;
    entry.data = data;
  } else {
    entry = { data, element };
    alerts.set(data.id, entry);
    $("alerts").prepend(element);
  }
}

async function decide(id, decision, button) {
  for (const b of button.parentElement.querySelectorAll("button")) b.disabled = true;
  try {
    const result = await api(`api/alerts/${id}/decision`, {
      method: "POST",
      body: JSON.stringify({ decision }),
    });
    onDecision(result);
    status("");
  } catch (error) {
    status(`decision not recorded: ${error.message}`);
    for (const b of button.parentElement.querySelectorAll("button")) b.disabled = false;
  }
}

function onDecision(result) {
  const entry = alerts.get(result.alert_id);
  if (!entry) return;
  renderAlert(Object.assign({}, entry.data, { decision: result.decision, operator: result.operator }));
}

// -- live updates --------------------------------------------------------------------------

function connect() {
  const events = new EventSource("api/events");
  events.addEventListener("state", (e) => renderState(JSON.parse(e.data)));
  events.addEventListener("alert", (e) => {
    const data = JSON.parse(e.data);
    const known = alerts.get(data.id);
    if (!known || (data.decision && !known.data.decision)) renderAlert(data);
  });
  events.addEventListener("decision", (e) => onDecision(JSON.parse(e.data)));
  events.addEventListener("open", () => status(""));
  events.addEventListener("error", () => status("connection to the server lost; retrying…"));
}

$("logout").addEventListener("click", async () => {
  await api("api/logout", { method: "POST" }).catch(() => {});
  location.replace("login");
});

connect();
