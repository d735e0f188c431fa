//! The chat page's files, compiled into the binary so `tether demo` needs nothing on disk:
//! no CDN, no build step. Every hub serves them, so any hub the proxy picks can.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: HTML,
        body: include_str!("../../web/chat/index.html"),
    },
    Asset {
        path: "/chat.css",
        content_type: CSS,
        body: include_str!("../../web/chat/chat.css"),
    },
    Asset {
        path: "/chat.js",
        content_type: JS,
        body: include_str!("../../web/chat/chat.js"),
    },
    // The project's hub client, as any application would use it. `web/chat/tether.js` is a
    // symlink to `clients/js/tether.js`: one source, and `cargo package` stores the file.
    Asset {
        path: "/tether.js",
        content_type: JS,
        body: include_str!("../../web/chat/tether.js"),
    },
];

pub fn router() -> Router {
    ASSETS.iter().fold(Router::new(), |router, asset| {
        router.route(
            asset.path,
            get(move || async move {
                (
                    [
                        (header::CONTENT_TYPE, asset.content_type),
                        // The files change with the binary; a stale cached page after an
                        // upgrade would talk to the new hubs with old code.
                        (header::CACHE_CONTROL, "no-cache"),
                    ],
                    asset.body,
                )
                    .into_response()
            }),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_the_page_imports_is_served() {
        let served: Vec<&str> = ASSETS.iter().map(|a| a.path).collect();
        for asset in ASSETS
            .iter()
            .filter(|a| a.content_type == JS || a.content_type == HTML)
        {
            for import in imports(asset.body) {
                assert!(
                    served.contains(&import),
                    "{} refers to {import}, which is not embedded",
                    asset.path
                );
            }
        }
    }

    /// Absolute same-origin paths of scripts, stylesheets and ES module imports.
    fn imports(text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        for marker in ["from '", "src=\"", "href=\"", "import('"] {
            for (at, _) in text.match_indices(marker) {
                let rest = &text[at + marker.len()..];
                let end = rest.find(['\'', '"']).unwrap_or(rest.len());
                let path = &rest[..end];
                if path.starts_with('/') && !path.starts_with("//") && path != "/_tether/" {
                    out.push(path);
                }
            }
        }
        out
    }
}
