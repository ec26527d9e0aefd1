"""The web incident console: server-rendered pages with htmx, login, CSRF; mounted by `routes.install`."""
