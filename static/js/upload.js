// Upload page: one request per file, each with its own progress bar, a few at a time.
// Without JavaScript the form posts all files at once and the page lists a result per file.
(function () {
  "use strict";
  const CONCURRENCY = 3;
  const form = document.getElementById("upload-form");
  if (!form) return;
  const input = document.getElementById("id_files");
  const results = document.getElementById("upload-results");
  const endpoint = form.dataset.endpoint;
  const csrf = form.querySelector("input[name=csrfmiddlewaretoken]").value;
  const queue = [];
  let running = 0;

  form.classList.add("js");

  function row(file) {
    const li = document.createElement("li");
    li.className = "result result-pending";
    li.dataset.outcome = "pending";
    const name = document.createElement("span");
    name.className = "filename";
    name.textContent = file.name;
    const bar = document.createElement("progress");
    bar.max = 100;
    bar.value = 0;
    bar.setAttribute("aria-label", "Uploading " + file.name);
    const state = document.createElement("span");
    state.className = "muted state";
    state.textContent = "Waiting";
    li.append(name, bar, state);
    return { li, bar, state };
  }

  function failed(view, message) {
    view.li.className = "result result-refused";
    view.li.dataset.outcome = "error";
    view.bar.remove();
    view.state.className = "reason";
    view.state.textContent = message;
  }

  function send(file, view) {
    running += 1;
    view.state.textContent = "Uploading";
    const body = new FormData();
    body.append("files", file, file.name);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", endpoint);
    xhr.setRequestHeader("HX-Request", "true");
    xhr.setRequestHeader("X-CSRFToken", csrf);
    xhr.upload.addEventListener("progress", function (event) {
      if (event.lengthComputable) {
        view.bar.value = Math.round((event.loaded / event.total) * 100);
      }
    });
    xhr.upload.addEventListener("load", function () {
      view.bar.value = 100;
      view.state.textContent = "Checking";
    });
    xhr.addEventListener("load", function () {
      if (xhr.status >= 200 && xhr.status < 300) {
        const template = document.createElement("template");
        template.innerHTML = xhr.responseText.trim();
        const item = template.content.querySelector("li");
        if (item) {
          view.li.replaceWith(item);
          if (window.htmx) window.htmx.process(item);
        } else {
          failed(view, "The server answered without a result; reload the image list to check.");
        }
      } else if (xhr.status === 413) {
        failed(view, "Too large for the server to accept (over its upload limit).");
      } else if (xhr.status === 403) {
        failed(view, "Not allowed: your session may have expired. Sign in again and retry.");
      } else {
        failed(view, "Upload failed (HTTP " + xhr.status + "). Nothing was stored; try again.");
      }
    });
    xhr.addEventListener("error", function () {
      failed(view, "Network error: the file did not reach the server. Try again.");
    });
    xhr.addEventListener("loadend", function () {
      running -= 1;
      pump();
    });
    xhr.send(body);
  }

  function pump() {
    while (running < CONCURRENCY && queue.length) {
      const next = queue.shift();
      send(next.file, next.view);
    }
  }

  function add(files) {
    // The newest batch goes on top, its files in the order they were chosen.
    const batch = Array.from(files).map(function (file) {
      return { file: file, view: row(file) };
    });
    results.prepend(...batch.map(function (item) { return item.view.li; }));
    batch.forEach(function (item) { queue.push(item); });
    pump();
  }

  input.addEventListener("change", function () {
    add(input.files);
    input.value = "";
  });
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    add(input.files);
    input.value = "";
  });
  ["dragenter", "dragover"].forEach(function (type) {
    form.addEventListener(type, function (event) {
      event.preventDefault();
      form.classList.add("dragging");
    });
  });
  ["dragleave", "drop"].forEach(function (type) {
    form.addEventListener(type, function (event) {
      event.preventDefault();
      form.classList.remove("dragging");
    });
  });
  form.addEventListener("drop", function (event) {
    if (event.dataTransfer && event.dataTransfer.files.length) add(event.dataTransfer.files);
  });
})();
