// Sensitive images are blurred until someone asks to see them: a click on the image (or its
// Reveal button) toggles it, and V toggles every image on a detail page.
(function () {
  "use strict";
  function toggle(figure) {
    const revealed = figure.classList.toggle("revealed");
    const button = figure.querySelector("[data-reveal]");
    if (button) {
      button.setAttribute("aria-pressed", String(revealed));
      button.textContent = revealed ? "Hide" : "Reveal";
    }
    figure.dispatchEvent(new CustomEvent("reveal", { bubbles: true, detail: { revealed: revealed } }));
    const hint = figure.querySelector("[data-reveal-hint]");
    if (hint) hint.textContent = revealed ? "Revealed. Click or press V to blur it again." : hint.dataset.revealHint;
  }
  document.addEventListener("click", function (event) {
    const trigger = event.target.closest("[data-reveal], .sensitive img");
    if (!trigger) return;
    const figure = trigger.closest(".sensitive");
    if (!figure) return;
    if (trigger.matches("img") && figure.closest("a")) return; // thumbnails in lists open the image
    event.preventDefault();
    toggle(figure);
  });
  document.addEventListener("keydown", function (event) {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
    const tag = (event.target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "textarea" || tag === "select") return;
    if (event.repeat || document.querySelector("dialog:modal")) return; // nothing revealed behind a dialog
    if (event.key === "v" || event.key === "V") {
      const figures = document.querySelectorAll(".sensitive[data-keyboard-reveal]");
      figures.forEach(toggle);
    }
  });
  // Filter forms marked data-autosubmit apply a change at once (without JS: their button).
  document.addEventListener("change", function (event) {
    const form = event.target.closest && event.target.closest("form[data-autosubmit]");
    if (form) form.requestSubmit();
  });
})();
