// lfr login: name and password as JSON; the server answers with a session cookie (HttpOnly).
// Demo mode: the URL lfr prints carries the shared token in its fragment (#token=...), which the
// browser never sends to a server; it is exchanged here for a session and dropped from the address.
"use strict";

const status = document.getElementById("status");

async function login(credentials) {
  const response = await fetch("api/login", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(credentials),
  });
  const answer = await response.json().catch(() => null);
  if (!response.ok) throw new Error((answer && answer.error) || `${response.status}`);
  location.replace("./");
}

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  status.textContent = "";
  login({
    name: document.getElementById("name").value.trim(),
    password: document.getElementById("password").value,
  }).catch((error) => { status.textContent = `not logged in: ${error.message}`; });
});

const token = new URLSearchParams(location.hash.slice(1)).get("token");
if (token) {
  history.replaceState(null, "", location.pathname);
  login({ token }).catch((error) => { status.textContent = `demo token refused: ${error.message}`; });
}
