// lfr deployment console: nodes, cameras and alerts of a deployment spread over nodes, as
// server-sent `state` events; a decision is POSTed and recorded by the node that raised the alert.
"use strict";

let user = null;
let pictures = "available"; // or why the console cannot open them ("pictures sealed (no data key)")
const players = new Map(); // camera -> {pc, viewer, figure}
// Picture URL -> its <img>, kept across renders: a state event redraws the list, and a new <img>
// would fetch the same picture again from the stream.
let images = new Map();

const clock = (iso) => (iso || "").slice(11, 19);
const LABELS = { confirmed: "confirmed", false_alert: "false alert", no_action: "no action" };

function render(s) {
  user = s.user;
  pictures = s.pictures;
  $("deployment").textContent = s.deployment;
  document.title = `lfr – ${s.deployment}`;
  if (s.user) $("user").textContent = `${s.user.name} (${s.user.role})`;
  const alive = s.nodes.filter((n) => n.alive).length;
  const pending = s.alerts.filter((a) => !a.decision).length;
  const counters = [["nodes alive", `${alive} / ${s.nodes.length}`],
    ["cameras running", String(s.cameras.filter((c) => c.state === "running").length)],
    ["alerts", String(s.alerts.length)], ["pending", String(pending)]];
  $("counters").replaceChildren(...counters.map(([label, value]) =>
    el("div", {}, [el("dt", { text: label }), el("dd", { text: value })])));
  $("pending").textContent = pending ? String(pending) : "";
  if (s.bus === "disconnected") $("status").textContent = "the console has lost its NATS server: what is shown may be stale";
  $("nodes").replaceChildren(...s.nodes.map((n) => el("li", { class: "camera", dataset: { node: n.name } }, [
    el("span", { class: "name", text: n.name }), " ",
    el("span", { class: `state ${n.alive ? "live" : "failed"}`, text: n.alive ? "alive" : "not alive" }),
    el("div", { class: "meta", text: `cameras: ${n.cameras.join(", ") || "-"}; last seen ${clock(n.last_seen)}; ${n.unpublished} unpublished` }),
  ])));
  const watches = s.user && s.user.role !== "auditor";
  $("cameras").replaceChildren(...s.cameras.map((c) => el("li", { class: "camera", dataset: { camera: c.name } }, [
    el("span", { class: "name", text: c.name }), " ",
    el("span", { class: `state ${c.state === "running" ? "live" : "connecting"}`, text: c.state }),
    el("div", { class: "meta", text: `on ${c.node || "no node"}` }),
    ...(watches && c.state === "running" && !players.has(c.name)
      ? [el("button", { type: "button", text: "Play", onclick: () => play(c.name) })] : []),
  ])));
  const shown = new Map();
  $("alerts").replaceChildren(...s.alerts.map((a) => renderAlert(a, shown)));
  images = shown; // pictures of alerts no longer listed are let go
}

function picture(id, which, caption, shown) {
  const url = `api/alerts/${encodeURIComponent(id)}/${which}.jpg`;
  const img = images.get(url) || el("img", { src: url, alt: caption, loading: "lazy" });
  shown.set(url, img);
  return el("figure", {}, [img, el("figcaption", { text: caption })]);
}

// The camera crop beside the watchlist picture, then each sighting's crop: what the officer
// compares before deciding.
function renderPictures(a, shown) {
  if (pictures !== "available") return el("div", { class: "meta sealed", text: pictures });
  const figures = [];
  if (a.pictures.includes("crop_jpeg")) figures.push(picture(a.id, "crop", `camera ${a.node}/${a.camera}`, shown));
  if (a.pictures.includes("watchlist_jpeg")) figures.push(picture(a.id, "watchlist", "watchlist", shown));
  for (const x of a.sightings) {
    if (x.pictures.includes("crop_jpeg")) figures.push(picture(x.id, "crop", `sighting ${x.node}/${x.camera} ${clock(x.time)}`, shown));
  }
  return el("div", { class: "images" }, figures);
}

function renderAlert(a, shown) {
  const person = a.name && a.name !== a.person_id ? `${a.name} (${a.person_id})` : (a.name || a.person_id);
  const seen = a.sightings.map((x) => `${x.node}/${x.camera} ${clock(x.time)}`).join(", ");
  const children = [
    renderPictures(a, shown),
    el("div", { class: "who", text: person }),
    el("div", { class: "meta", text: `${clock(a.time)} ${a.node}/${a.camera}, score ${a.score.toFixed(3)}` }),
  ];
  if (seen) children.push(el("div", { class: "meta", text: `also seen: ${seen}` }));
  if (a.decision) {
    children.push(el("div", { class: "decision", text: `${LABELS[a.decision] || a.decision}${a.decided_by ? ` by ${a.decided_by}` : ""}` }));
  }
  if (user && user.role !== "auditor" && (!a.decision || user.role === "supervisor" || a.decided_by === user.name)) {
    children.push(el("div", { class: "actions" }, Object.entries(LABELS).map(([decision, label]) =>
      el("button", { type: "button", dataset: { decision }, text: label, onclick: () => decide(a.id, decision) }))));
  }
  return el("li", { class: `alert${a.decision ? " decided" : ""}`, dataset: { alert: a.id } }, children);
}

// -- video: the offer goes to the console, which carries it to the node running the camera ----

async function play(camera) {
  const pc = new RTCPeerConnection();
  const video = el("video", { autoplay: "", playsinline: "", dataset: { camera } });
  video.muted = true;
  const meta = el("span", { class: "meta", text: "connecting…" });
  const figure = el("figure", { dataset: { camera } }, [video, el("figcaption", {}, [
    el("strong", { text: camera }), meta,
    el("button", { class: "secondary", type: "button", text: "Close", onclick: () => stop(camera) })])]);
  const player = { pc, viewer: null, figure };
  players.set(camera, player);
  $("players").append(figure);
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addEventListener("track", (event) => { video.srcObject = event.streams[0] || new MediaStream([event.track]); });
  pc.addEventListener("connectionstatechange", () => {
    if (pc.connectionState === "failed") { $("status").textContent = `${camera}: video connection failed`; stop(camera); }
  });
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await gatheringComplete(pc);
    const answer = await api("offer", { method: "POST",
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type, camera }) });
    player.viewer = answer.viewer;
    meta.textContent = `from ${answer.node}`;
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
  } catch (error) {
    $("status").textContent = `${camera}: ${error.message}`;
    stop(camera);
  }
}

function stop(camera) {
  const player = players.get(camera);
  if (!player) return;
  players.delete(camera);
  player.pc.close();
  player.figure.remove();
  if (player.viewer) api(`api/viewers/${player.viewer}/close`, { method: "POST", body: "{}" }).catch(() => {});
}

async function decide(alertId, decision) {
  $("status").textContent = "";
  try {
    const decided = await api(`api/alerts/${encodeURIComponent(alertId)}/decision`, {
      method: "POST", body: JSON.stringify({ decision }),
    });
    $("status").textContent = `${LABELS[decided.decision]} by ${decided.operator}, recorded on ${decided.node}`;
  } catch (error) {
    $("status").textContent = `not recorded: ${error.message}`;
  }
}

$("logout").addEventListener("click", async () => {
  await api("api/logout", { method: "POST", body: "{}" }).catch(() => null);
  location.replace("login");
});

const events = new EventSource("api/events");
events.addEventListener("state", (event) => render(JSON.parse(event.data)));
events.onerror = () => { $("status").textContent = "connection to the console lost: retrying"; };
events.onopen = () => { $("status").textContent = ""; };
