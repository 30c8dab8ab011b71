"""The HTTP side of the server: the session API, signaling, files, operations.

`server.py` wires these modules into one application (`make_app`); each
route declares who may call it (`api.routes.Access`) and one middleware
(`api.auth.access_middleware`) enforces that declaration.

    keys.py        the typed `web.AppKey`s and the request's `SESSION`
    errors.py      JSON errors and the middleware that makes every error JSON
    cors.py        CORS for the configured origins
    routes.py      access levels and the declared route table
    auth.py        credentials, and the middleware enforcing each route's level
    lookup.py      the session a request names: live, parked or stored
    bodies.py      size-limited bodies and field validators
    sessions.py    create, read, save, end and delete sessions
    signaling.py   WebRTC offers and WHIP
    files.py       resumes, recordings, evidence, the candidate page
    operations.py  health, metrics and the browser client's settings
    instance.py    the data directory's lock and this server's ids
    lifecycle.py   what starts with the application and stops with it
"""
