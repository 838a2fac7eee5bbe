// The console's only script: live fragments and confirmations. No framework, nothing loaded from elsewhere.
"use strict";
function refresh(element) {
  const url = element.getAttribute("data-refresh");
  fetch(url, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
    .then((answer) => (answer.ok ? answer.text() : Promise.reject(answer.status)))
    .then((html) => { element.innerHTML = html; element.removeAttribute("data-stale"); })
    .catch(() => element.setAttribute("data-stale", "true"));
}
// Delegated: forms inside live fragments (replaced every few seconds) ask too.
document.addEventListener("submit", (event) => {
  const form = event.target.closest("form[data-confirm]");
  if (form && !window.confirm(form.getAttribute("data-confirm"))) event.preventDefault();
});
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-refresh]").forEach((element) => {
    const every = Math.max(1, Number(element.getAttribute("data-every") || "5"));
    setInterval(() => { if (!document.hidden) refresh(element); }, every * 1000);
  });
  document.querySelectorAll("[data-select-all]").forEach((box) => {
    box.addEventListener("change", () => {
      const name = box.getAttribute("data-select-all");
      document.querySelectorAll(`input[type=checkbox][name="${name}"]`).forEach((b) => { b.checked = box.checked; });
    });
  });
});
