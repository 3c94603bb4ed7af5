// The API docs page: Swagger UI from our own static files, pointed at the schema the page names.
// A file, not an inline script, so the Content-Security-Policy needs no exception.
(function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  if (!root || typeof SwaggerUIBundle === "undefined") return;
  SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    dom_id: "#swagger-ui",
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    deepLinking: true,
    // Keys are typed into "Authorize" for this page only; never kept in the browser's storage.
    persistAuthorization: false,
  });
})();
