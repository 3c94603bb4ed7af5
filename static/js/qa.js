// QA pane keys (the review pane's, for confirming or overturning IMM's automatic verdicts):
// C confirms, O goes to the reason (Enter there overturns), S skips, ? lists the keys. V (reveal)
// is app.js's, as on every page.
(function () {
  "use strict";

  function pane() { return document.getElementById("qa-pane"); }

  function typing(target) {
    const tag = (target.tagName || "").toLowerCase();
    return tag === "input" || tag === "textarea" || tag === "select" || target.isContentEditable;
  }

  function click(selector) {
    const button = pane() && pane().querySelector(selector);
    if (button) button.click();
  }

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    const current = pane();
    if (!current) return;
    const target = event.target;
    const dialog = document.getElementById("qa-shortcuts");
    if (dialog && dialog.open && event.key !== "?") return;
    if (event.key === "Enter" && typing(target)) {
      // Enter in the reason overturns, never confirms.
      if (target.closest(".overturn")) { event.preventDefault(); click("button[value=overturn]"); }
      return;
    }
    if (event.key === "Escape" && typing(target)) { target.blur(); return; }
    if (typing(target)) return;
    switch (event.key) {
      case "c": case "C": event.preventDefault(); click("button[value=confirm]"); break;
      case "s": case "S": event.preventDefault(); click("button[value=skip]"); break;
      case "o": case "O": {
        event.preventDefault();
        const reason = current.querySelector("[data-overturn-reason]");
        if (reason && reason.value.trim()) click("button[value=overturn]");
        else if (reason) reason.focus();
        break;
      }
      case "?":
        event.preventDefault();
        if (dialog) { if (dialog.open) dialog.close(); else dialog.showModal(); }
        break;
      default:
    }
  });

  document.addEventListener("click", function (event) {
    if (event.target.closest("[data-shortcuts-toggle]")) {
      const dialog = document.getElementById("qa-shortcuts");
      if (dialog) dialog.showModal();
    }
  });
})();
