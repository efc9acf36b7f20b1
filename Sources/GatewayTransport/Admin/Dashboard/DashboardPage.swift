import NIOHTTP1

/// The dashboard page served at `GET /`: static HTML, CSS and JavaScript embedded in the binary
/// (``html`` is generated from `dashboard.html` by `scripts/embed_dashboard.py`), so an installed
/// binary needs no resource files and the page makes no request but to its own origin.
///
/// The page itself holds no data and is served without the token (a browser cannot send a bearer
/// token when it navigates); everything it shows comes from the API, which asks for the token. Its
/// Content-Security-Policy allows only its own inline script and style (by hash) and requests to
/// the admin listener itself, and forbids framing.
enum DashboardPage {
    /// The response, built once.
    static let response = AdminResponse(
        status: .ok,
        contentType: "text/html; charset=utf-8",
        body: Array(html.utf8),
        headers: [
            (
                "Content-Security-Policy",
                "default-src 'none'; script-src '\(scriptHash)'; style-src '\(styleHash)'; connect-src 'self'; "
                    + "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
            ),
            ("X-Content-Type-Options", "nosniff"),
            ("X-Frame-Options", "DENY"),
            ("Referrer-Policy", "no-referrer"),
        ]
    )
}
