// The review pane: keyboard shortcuts, lease renewal and the undo countdown. (Reveals are recorded
// by the server when it serves the clear image: see app.js.)
// Decisions are real forms; htmx swaps the next item in, and without JavaScript they post and
// redirect.
(function () {
  "use strict";
  const RENEW_EVERY_MS = 60 * 1000;
  let lastRenew = Date.now();

  function pane() { return document.getElementById("pane"); }
  function csrf() {
    const input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }
  function post(url) {
    return fetch(url, { method: "POST", headers: { "X-CSRFToken": csrf() }, credentials: "same-origin" });
  }
  function click(selector) {
    const target = pane() && pane().querySelector(selector);
    if (target) { target.click(); return true; }
    return false;
  }

  // Keep the lease while the reviewer is active on the item.
  function active() {
    const current = pane();
    if (!current || !current.dataset.renewUrl) return;
    if (Date.now() - lastRenew < RENEW_EVERY_MS) return;
    lastRenew = Date.now();
    post(current.dataset.renewUrl).then(function (response) {
      if ((response.status !== 409 && response.status !== 404) || !document.body.contains(current)) {
        return null;
      }
      // The lease ran out or someone took over (409), or the image is no longer waiting for
      // review (404): say so now (the server's words), not at the next decision.
      delete current.dataset.renewUrl;
      return response.text().then(function (text) {
        const notice = document.createElement("p");
        notice.className = "notice notice-error";
        notice.setAttribute("role", "alert");
        notice.textContent = text;
        current.querySelector(".pane-bar").after(notice);
      });
    });
  }
  ["keydown", "mousemove", "click", "scroll"].forEach(function (type) {
    document.addEventListener(type, active, { passive: true });
  });

  function startUndoCountdown() {
    const form = document.querySelector("[data-undo]");
    if (!form) return;
    let left = parseInt(form.dataset.undoSeconds || "10", 10);
    const label = form.querySelector("[data-undo-left]");
    const timer = setInterval(function () {
      left -= 1;
      if (!document.body.contains(form)) { clearInterval(timer); return; }
      if (left <= 0) { clearInterval(timer); form.remove(); return; }
      if (label) label.textContent = "(" + left + " s)";
    }, 1000);
  }

  function typing(target) {
    const tag = (target.tagName || "").toLowerCase();
    return tag === "input" || tag === "textarea" || tag === "select" || target.isContentEditable;
  }

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const current = pane();
    if (!current) return;
    const target = event.target;
    const dialog = document.getElementById("shortcuts");
    // While the list is open, keys are for the list (Escape or ? closes it): no decision is made
    // behind it.
    if (dialog && dialog.open && event.key !== "?") return;
    // A held-down key repeats, and a key pressed while a decision is on its way would act on
    // an item not yet shown: neither decides anything.
    if (event.repeat || current.querySelector(".htmx-request")) {
      if (event.key === "Enter" && typing(target)) event.preventDefault();
      return;
    }
    if (event.key === "Enter" && typing(target)) {
      // Enter in the reject or escalate fields submits that action, never Approve.
      if (target.closest(".reject")) { event.preventDefault(); click("button[value=reject]"); }
      else if (target.closest(".escalate")) { event.preventDefault(); click("button[value=escalate]"); }
      return;
    }
    if (event.key === "Escape" && typing(target)) { target.blur(); return; }
    if (typing(target)) return;
    switch (event.key) {
      case "a": case "A":
        event.preventDefault(); click("button[value=approve]"); break;
      case "r": case "R": {
        event.preventDefault();
        const reason = current.querySelector("[data-reject-reason]");
        const text = current.querySelector(".reject input[name=reason]");
        if ((reason && reason.value) || (text && text.value.trim())) click("button[value=reject]");
        else if (reason) reason.focus();
        break;
      }
      case "e": case "E": {
        event.preventDefault();
        const note = current.querySelector("[data-escalate-note]");
        if (note && note.value.trim()) click("button[value=escalate]");
        else if (note) note.focus();
        break;
      }
      case "s": case "S":
        event.preventDefault(); click("button[value=skip]"); break;
      case "u": case "U":
        event.preventDefault(); click("[data-shortcut=u]"); break;
      case "?":
        event.preventDefault();
        if (dialog) { if (dialog.open) dialog.close(); else dialog.showModal(); }
        break;
      default:
    }
  });

  document.addEventListener("click", function (event) {
    if (event.target.closest("[data-shortcuts-toggle]")) {
      const dialog = document.getElementById("shortcuts");
      if (dialog) dialog.showModal();
    }
  });

  document.addEventListener("htmx:afterSwap", function (event) {
    if (event.detail.target && event.detail.target.id === "pane") {
      lastRenew = Date.now();
      startUndoCountdown();
      const current = pane();
      if (current) current.focus({ preventScroll: true });
    }
  });
  startUndoCountdown();
})();
