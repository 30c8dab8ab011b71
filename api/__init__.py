"""The HTTP side of the server: the session API, signaling, files, operations.

`server.py` wires these modules into one application (`make_app`); each
route declares who may call it (`api.routes.Access`) and one middleware
(`api.auth.access_middleware`) enforces that declaration.

    keys.py        the typed `web.AppKey`s and the request's `SESSION`
    errors.py      JSON errors and the middleware that makes every error JSON
    cors.py        CORS for the configured origins
    guards.py      refused before any route: encoded bodies; Host and Origin in local mode
    headers.py     nosniff, CSP and the other security headers on every response
    routes.py      access levels and the declared route table
    auth.py        credentials, and the middleware enforcing each route's level
    lookup.py      the session a request names: live, parked or stored
    bodies.py      size-limited bodies and field validators
    resume_text.py a resume's text, extracted in a child process within limits
    sessions.py    create, read, save, end and delete sessions
    signaling.py   WebRTC offers and WHIP
    files.py       resumes, recordings, evidence, the candidate page
    operations.py  health, metrics and the browser client's settings
    turn.py        expiring TURN credentials (the TURN REST API scheme)
    openapi.py     the OpenAPI 3.1 description, from the declared routes
    instance.py    the data directory's lock and this server's ids
    lifecycle.py   what starts with the application and stops with it
"""
