// What the live viewer (app.js) and the deployment console (console.js) share: element lookup and
// building, the JSON API call and waiting for WebRTC's ICE gathering. Loaded before either.
"use strict";

const $ = (id) => document.getElementById(id);

// State-changing requests carry a JSON body: the server refuses anything else. Without a session
// the server answers 401 and the page goes to the login.
async function api(path, options = {}) {
  const headers = Object.assign({ "Content-Type": "application/json" }, options.headers || {});
  const init = Object.assign({ credentials: "same-origin" }, options, { headers });
  if (init.method === "POST" && init.body === undefined) init.body = "{}";
  const response = await fetch(path, init);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (response.status === 401) location.replace("login");
  if (!response.ok) {
    throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  }
  return body;
}

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

// The offer is sent once ICE gathering is complete (no trickle), or after timeoutMs at most.
function gatheringComplete(pc, timeoutMs = 3000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { pc.removeEventListener("icegatheringstatechange", check); resolve(); };
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(done, timeoutMs);
  });
}
