// The API page (/docs/): Swagger UI on the document Envoy serves next to the API.
window.ui = SwaggerUIBundle({
  url: "/api/v1/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  // The event routes answer streams; "Try it out" shows them once they end.
  tryItOutEnabled: false,
});
