"""The HTTP surface: the app, its middleware (errors, auth), the declared operations that
route, authorise and document each request, and one module per resource in `routes/`."""
