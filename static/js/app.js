// Sensitive images are blurred until someone asks to see them. Pages load a blurred rendition
// made by the server; revealing swaps in the clear one (data-clear-src), which the server records
// as a reveal when it serves it, and hiding swaps the blurred one back. A click on the image (or
// its Reveal button, a link to the clear image that works without JavaScript too) toggles it,
// and V toggles every image on the page that can be revealed.
(function () {
  "use strict";
  function toggle(figure) {
    const img = figure.querySelector("img[data-clear-src]");
    if (!img) return;
    if (!img.dataset.blurredSrc) img.dataset.blurredSrc = img.getAttribute("src");
    const revealed = figure.classList.toggle("revealed");
    img.setAttribute("src", revealed ? img.dataset.clearSrc : img.dataset.blurredSrc);
    const button = figure.querySelector("[data-reveal]");
    if (button) {
      button.setAttribute("aria-pressed", String(revealed));
      button.textContent = revealed ? "Hide" : "Reveal";
    }
    const hint = figure.querySelector("[data-reveal-hint]");
    if (hint) hint.textContent = revealed ? "Revealed. Click or press V to blur it again." : hint.dataset.revealHint;
  }
  document.addEventListener("click", function (event) {
    if (event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey) return; // a new tab: the link's own way
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
    // The Reveal link acts as a button (role="button"): Space presses it, as it would a button.
    if (event.key === " " && event.target.matches && event.target.matches("a[role=button][data-reveal]")) {
      event.preventDefault();
      event.target.click();
      return;
    }
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
