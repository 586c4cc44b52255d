// The studio's login page: the password goes to /api/login, which sets a session cookie.
"use strict";

document.getElementById("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = document.getElementById("login-error");
  error.textContent = "";
  try {
    const response = await fetch("/api/login", {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({password: document.getElementById("password").value}),
    });
    const answer = await response.json();
    if (response.ok && answer.ok) {
      location.replace("/");
    } else {
      error.textContent = answer.error || response.statusText;
    }
  } catch (e) {
    error.textContent = "cannot reach the device: " + e.message;
  }
});
