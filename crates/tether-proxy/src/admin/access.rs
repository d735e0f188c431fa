//! Who may do what on the admin API: the one decision every admin request goes through.
//!
//! The rules, in the order they are checked:
//!
//! 1. **A request that changes state must not come from a browser on another site.** Its
//!    `Sec-Fetch-Site` must be `same-origin` or `none`, its `Origin` (when sent) must name the
//!    host it was sent to, and it must carry no body a form could send: no `Content-Type` at
//!    all, or `application/json`. These are what a cross-site `<form>`, `fetch(…, {mode:
//!    'no-cors'})` or `sendBeacon` cannot avoid. A bearer token already defeats them (a page
//!    cannot attach one to a cross-site request without a CORS preflight, which the admin API
//!    never answers); the checks hold for token-less loopback use too, and refuse the same
//!    requests in every configuration so that a test on a laptop tells the truth about
//!    production.
//! 2. **With a token configured**, a mutating request needs `Authorization: Bearer <token>`:
//!    none is 401 with `WWW-Authenticate: Bearer`, a wrong one is 401 too. Reads need it when
//!    `read = "token"`; the event stream also takes a ticket bought with it (see [`super::ticket`]).
//! 3. **Without a token** (secure by default, like Redis's protected mode): reads are public and
//!    mutating endpoints answer only a loopback peer of the admin listener that addressed it by
//!    a loopback name (`Host: 127.0.0.1:9090`, `localhost`, `[::1]`), which shuts out DNS
//!    rebinding. On the main listener (`stats_uri`), which faces clients, no mutating endpoint
//!    answers without a token at all, whatever the peer: a local TLS terminator or sidecar in
//!    front of it would make every client look local.

use std::net::{IpAddr, SocketAddr};

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::ticket::Tickets;
use super::token::AdminToken;
use crate::config::{AdminConfig, ReadAccess};

/// Which listener a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The dedicated admin listener (`[admin] addr`), from `peer` (`None` if unknown, which
    /// counts as not loopback).
    AdminListener { peer: Option<SocketAddr> },
    /// The main listener, under `stats_uri`: it faces clients.
    MainListener,
}

/// What a route needs before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A read: `/metrics`, `/api/backends`.
    Read,
    /// The event stream: a read that also takes a ticket.
    Stream,
    /// A ticket for the event stream: always the token.
    Ticket,
    /// A change of state: drain, enable, reload.
    Mutate,
}

/// The admin API's access policy and its event-stream tickets.
#[derive(Debug)]
pub struct Access {
    policy: Policy,
    pub(crate) tickets: Tickets,
}

#[derive(Debug)]
enum Policy {
    /// No token: public reads, loopback-only changes on the admin listener.
    Open,
    Token {
        token: AdminToken,
        reads: ReadAccess,
    },
}

/// Why a request was refused; each answer says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("cross-site request refused ({0}); the admin API answers only its own pages and non-browser clients")]
    CrossSite(&'static str),
    #[error("admin endpoints take no form or text body; send no body, or `Content-Type: application/json`")]
    BodyType,
    #[error("this needs `Authorization: Bearer <token>` with the [admin] token")]
    MissingToken,
    #[error("the bearer token is not the [admin] token")]
    WrongToken,
    #[error("no [admin] token is configured, so nothing under stats_uri may change state; set [admin] token_file (or token) and send `Authorization: Bearer <token>`")]
    NoTokenOnMain,
    #[error("no [admin] token is configured, so only loopback clients may change state; set [admin] token_file (or token) and send `Authorization: Bearer <token>` to do it from {0}")]
    NoTokenRemote(String),
    #[error("no [admin] token is configured, so a change must address the admin listener by a loopback name (127.0.0.1, localhost, [::1]) in Host; or set [admin] token_file (or token)")]
    NoTokenForeignHost,
    #[error("no [admin] token is configured; api/events is public and needs no ticket")]
    NoTickets,
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::BodyType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::MissingToken | Refusal::WrongToken => StatusCode::UNAUTHORIZED,
            Refusal::NoTickets => StatusCode::NOT_FOUND,
            Refusal::CrossSite(_)
            | Refusal::NoTokenOnMain
            | Refusal::NoTokenRemote(_)
            | Refusal::NoTokenForeignHost => StatusCode::FORBIDDEN,
        }
    }

    /// A short name for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::CrossSite(_) => "cross-site",
            Refusal::BodyType => "body-type",
            Refusal::MissingToken => "no-token-sent",
            Refusal::WrongToken => "wrong-token",
            Refusal::NoTokenOnMain => "main-listener-without-token",
            Refusal::NoTokenRemote(_) => "not-loopback",
            Refusal::NoTokenForeignHost => "host-not-loopback",
            Refusal::NoTickets => "no-tickets",
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (self.status(), format!("{self}\n")).into_response();
        // RFC 6750 §3: a 401 names the scheme; a wrong token also says so.
        let challenge = match self {
            Refusal::MissingToken => Some("Bearer realm=\"tether admin\""),
            Refusal::WrongToken => Some("Bearer realm=\"tether admin\", error=\"invalid_token\""),
            _ => None,
        };
        if let Some(challenge) = challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

impl Access {
    pub fn new(config: &AdminConfig) -> Access {
        let policy = match &config.token {
            None => Policy::Open,
            Some(token) => Policy::Token {
                token: token.clone(),
                reads: config.read,
            },
        };
        Access {
            policy,
            tickets: Tickets::default(),
        }
    }

    /// Whether a token is configured.
    pub fn has_token(&self) -> bool {
        matches!(self.policy, Policy::Token { .. })
    }

    /// Decides whether a request that needs `need` may run. `ticket` is the `ticket` query
    /// parameter of an event-stream request; a valid one is used up.
    pub fn check(
        &self,
        need: Need,
        via: Via,
        headers: &HeaderMap,
        ticket: Option<&str>,
    ) -> Result<(), Refusal> {
        if matches!(need, Need::Mutate | Need::Ticket) {
            not_cross_site(headers)?;
            no_form_body(headers)?;
        }
        match &self.policy {
            Policy::Open => match need {
                Need::Read | Need::Stream => Ok(()),
                Need::Ticket => Err(Refusal::NoTickets),
                Need::Mutate => open_mutation(via, headers),
            },
            Policy::Token { token, reads } => {
                let public =
                    *reads == ReadAccess::Public && matches!(need, Need::Read | Need::Stream);
                let ticketed =
                    need == Need::Stream && ticket.is_some_and(|t| self.tickets.redeem(t));
                if public || ticketed {
                    Ok(())
                } else {
                    bearer(token, headers)
                }
            }
        }
    }
}

/// Rule 3: with no token, a change is allowed from a loopback peer of the admin listener
/// that named a loopback host.
fn open_mutation(via: Via, headers: &HeaderMap) -> Result<(), Refusal> {
    let Via::AdminListener { peer } = via else {
        return Err(Refusal::NoTokenOnMain);
    };
    if !peer.is_some_and(|p| p.ip().to_canonical().is_loopback()) {
        let from = peer.map_or_else(|| "an unknown peer".to_owned(), |p| p.ip().to_string());
        return Err(Refusal::NoTokenRemote(from));
    }
    if !host_is_loopback(headers) {
        return Err(Refusal::NoTokenForeignHost);
    }
    Ok(())
}

/// `Authorization: Bearer <token>`, exactly one, with this token.
fn bearer(token: &AdminToken, headers: &HeaderMap) -> Result<(), Refusal> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(Refusal::MissingToken);
    };
    if values.next().is_some() {
        return Err(Refusal::WrongToken);
    }
    let presented = value
        .as_bytes()
        .split_at_checked(7)
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(b"bearer "))
        .map(|(_, rest)| rest.trim_ascii());
    match presented {
        Some(p) if token.matches(p) => Ok(()),
        _ => Err(Refusal::WrongToken),
    }
}

/// Refuses what a browser marks as coming from another site (rule 1).
fn not_cross_site(headers: &HeaderMap) -> Result<(), Refusal> {
    for site in headers.get_all("sec-fetch-site") {
        // `none` is a request the user made (typed URL, bookmark); anything else but our own
        // origin is another page's doing.
        if !(site == "same-origin" || site == "none") {
            return Err(Refusal::CrossSite("Sec-Fetch-Site is not same-origin"));
        }
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    for origin in headers.get_all(header::ORIGIN) {
        let same = match (origin.to_str(), host) {
            (Ok(origin), Some(host)) => same_origin(origin, host),
            _ => false,
        };
        if !same {
            return Err(Refusal::CrossSite("Origin does not match Host"));
        }
    }
    Ok(())
}

/// Refuses the bodies an HTML form or a no-cors fetch can send (rule 1).
fn no_form_body(headers: &HeaderMap) -> Result<(), Refusal> {
    for value in headers.get_all(header::CONTENT_TYPE) {
        let essence = value
            .to_str()
            .ok()
            .and_then(|v| v.split(';').next())
            .map(str::trim);
        if !essence.is_some_and(|e| e.eq_ignore_ascii_case("application/json")) {
            return Err(Refusal::BodyType);
        }
    }
    Ok(())
}

/// Whether `origin` (`scheme://host[:port]`) names the authority in `host` (`host[:port]`).
fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false; // includes `null`, sent by sandboxed frames and data: URLs
    };
    let default_port = if scheme.eq_ignore_ascii_case("http") {
        80
    } else if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        return false;
    };
    match (
        split_authority(authority, default_port),
        split_authority(host, default_port),
    ) {
        (Some((oh, op)), Some((hh, hp))) => oh.eq_ignore_ascii_case(hh) && op == hp,
        _ => false,
    }
}

/// `host[:port]` or `[v6][:port]` → (host, port); `None` for anything else.
fn split_authority(authority: &str, default_port: u16) -> Option<(&str, u16)> {
    if authority.is_empty() || authority.contains(['/', '@', ' ', '?', '#']) {
        return None;
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, tail) = rest.split_once(']')?;
        (host, tail)
    } else {
        match authority.rsplit_once(':') {
            Some((host, _)) => (host, &authority[host.len()..]),
            None => (authority, ""),
        }
    };
    let port = match port {
        "" => default_port,
        p => p.strip_prefix(':')?.parse().ok()?,
    };
    Some((host, port))
}

/// Whether `Host` names a loopback address or `localhost`.
fn host_is_loopback(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let Some((name, _)) = split_authority(host, 0) else {
        return false;
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "s3cret-admin-token-0123456789";

    fn access(token: Option<&str>, read: ReadAccess) -> Access {
        Access::new(&AdminConfig {
            token: token.map(|t| AdminToken::new(t).unwrap()),
            read,
            ..AdminConfig::default()
        })
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn admin_from(ip: &str) -> Via {
        Via::AdminListener {
            peer: Some(SocketAddr::new(ip.parse().unwrap(), 40000)),
        }
    }

    #[test]
    fn without_a_token_only_loopback_peers_may_change_state() {
        let open = access(None, ReadAccess::Public);
        let h = headers(&[("host", "127.0.0.1:9090")]);
        assert_eq!(
            open.check(Need::Mutate, admin_from("127.0.0.1"), &h, None),
            Ok(())
        );
        assert_eq!(
            open.check(Need::Mutate, admin_from("::1"), &h, None),
            Ok(())
        );
        assert_eq!(
            open.check(Need::Mutate, admin_from("::ffff:127.0.0.1"), &h, None),
            Ok(())
        );
        for remote in ["10.0.0.7", "192.168.1.20", "2001:db8::1", "::ffff:10.0.0.7"] {
            let refused = open
                .check(Need::Mutate, admin_from(remote), &h, None)
                .unwrap_err();
            assert_eq!(refused.status(), StatusCode::FORBIDDEN);
            assert!(refused.to_string().contains("token_file"), "{refused}");
        }
        let unknown = Via::AdminListener { peer: None };
        assert!(open.check(Need::Mutate, unknown, &h, None).is_err());
        // Reads stay public for everyone.
        assert_eq!(
            open.check(Need::Read, admin_from("10.0.0.7"), &h, None),
            Ok(())
        );
    }

    #[test]
    fn without_a_token_the_main_listener_never_changes_state() {
        let open = access(None, ReadAccess::Public);
        let h = headers(&[("host", "127.0.0.1:8080")]);
        assert_eq!(
            open.check(Need::Mutate, Via::MainListener, &h, None),
            Err(Refusal::NoTokenOnMain)
        );
    }

    #[test]
    fn without_a_token_a_rebound_host_name_is_refused() {
        let open = access(None, ReadAccess::Public);
        for host in ["evil.example:9090", "127.0.0.1.nip.io:9090", ""] {
            let h = headers(&[("host", host)]);
            assert_eq!(
                open.check(Need::Mutate, admin_from("127.0.0.1"), &h, None),
                Err(Refusal::NoTokenForeignHost),
                "{host}"
            );
        }
        for host in ["localhost:9090", "LOCALHOST", "127.0.0.9:1", "[::1]:9090"] {
            let h = headers(&[("host", host)]);
            assert_eq!(
                open.check(Need::Mutate, admin_from("127.0.0.1"), &h, None),
                Ok(()),
                "{host}"
            );
        }
    }

    #[test]
    fn with_a_token_a_bearer_header_is_needed_and_checked() {
        let locked = access(Some(TOKEN), ReadAccess::Public);
        let via = Via::MainListener;
        let none = headers(&[("host", "h")]);
        assert_eq!(
            locked.check(Need::Mutate, via, &none, None),
            Err(Refusal::MissingToken)
        );
        let right = headers(&[("authorization", &format!("Bearer {TOKEN}"))]);
        assert_eq!(locked.check(Need::Mutate, via, &right, None), Ok(()));
        let lower = headers(&[("authorization", &format!("bearer {TOKEN}"))]);
        assert_eq!(locked.check(Need::Mutate, via, &lower, None), Ok(()));
        for bad in [
            "Bearer nope-nope-nope-nope".to_owned(),
            format!("Basic {TOKEN}"),
            format!("Bearer {TOKEN}x"),
            "Bearer".to_owned(),
        ] {
            let h = headers(&[("authorization", &bad)]);
            assert_eq!(
                locked.check(Need::Mutate, via, &h, None),
                Err(Refusal::WrongToken),
                "{bad}"
            );
        }
        let twice = headers(&[
            ("authorization", &format!("Bearer {TOKEN}")),
            ("authorization", "Bearer other"),
        ]);
        assert_eq!(
            locked.check(Need::Mutate, via, &twice, None),
            Err(Refusal::WrongToken)
        );
        // A loopback peer gets no exception once a token exists.
        assert_eq!(
            locked.check(Need::Mutate, admin_from("127.0.0.1"), &none, None),
            Err(Refusal::MissingToken)
        );
    }

    #[test]
    fn browser_cross_site_markers_and_form_bodies_are_refused_even_with_the_token() {
        let locked = access(Some(TOKEN), ReadAccess::Public);
        let auth = format!("Bearer {TOKEN}");
        let refused = |extra: &[(&str, &str)]| {
            let mut pairs = vec![
                ("host", "proxy.example:8080"),
                ("authorization", auth.as_str()),
            ];
            pairs.extend_from_slice(extra);
            locked.check(Need::Mutate, Via::MainListener, &headers(&pairs), None)
        };
        assert_eq!(refused(&[]), Ok(()));
        assert_eq!(refused(&[("sec-fetch-site", "same-origin")]), Ok(()));
        assert_eq!(refused(&[("origin", "http://proxy.example:8080")]), Ok(()));
        assert_eq!(
            refused(&[("content-type", "application/json; charset=utf-8")]),
            Ok(())
        );
        for site in ["cross-site", "same-site", "bogus"] {
            assert!(matches!(
                refused(&[("sec-fetch-site", site)]),
                Err(Refusal::CrossSite(_))
            ));
        }
        for origin in [
            "http://evil.example",
            "null",
            "http://proxy.example:8081",
            "https://proxy.example:8080.evil",
        ] {
            assert!(
                matches!(refused(&[("origin", origin)]), Err(Refusal::CrossSite(_))),
                "{origin}"
            );
        }
        for ct in [
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "text/plain",
            "TEXT/PLAIN;charset=UTF-8",
        ] {
            assert_eq!(
                refused(&[("content-type", ct)]),
                Err(Refusal::BodyType),
                "{ct}"
            );
        }
    }

    #[test]
    fn origin_matching_knows_default_ports_and_ipv6() {
        assert!(same_origin("http://a.example", "a.example:80"));
        assert!(same_origin("https://a.example", "A.example"));
        assert!(same_origin("http://[::1]:9090", "[::1]:9090"));
        assert!(!same_origin("https://a.example", "a.example:80"));
        assert!(!same_origin("http://a.example@b.example", "b.example"));
        assert!(!same_origin("ftp://a.example", "a.example"));
    }

    #[test]
    fn token_protected_reads_take_the_token_or_a_ticket_for_the_stream() {
        let locked = access(Some(TOKEN), ReadAccess::Token);
        let via = admin_from("127.0.0.1");
        let none = headers(&[]);
        let right = headers(&[("authorization", &format!("Bearer {TOKEN}"))]);
        assert_eq!(
            locked.check(Need::Read, via, &none, None),
            Err(Refusal::MissingToken)
        );
        assert_eq!(locked.check(Need::Read, via, &right, None), Ok(()));
        let ticket = locked.tickets.issue().unwrap();
        assert_eq!(
            locked.check(Need::Read, via, &none, Some(&ticket)),
            Err(Refusal::MissingToken),
            "tickets open the stream only"
        );
        assert_eq!(
            locked.check(Need::Stream, via, &none, Some(&ticket)),
            Ok(())
        );
        assert_eq!(
            locked.check(Need::Stream, via, &none, Some(&ticket)),
            Err(Refusal::MissingToken),
            "a ticket is used once"
        );
        let public = access(Some(TOKEN), ReadAccess::Public);
        assert_eq!(public.check(Need::Read, via, &none, None), Ok(()));
        assert_eq!(public.check(Need::Stream, via, &none, None), Ok(()));
        assert_eq!(
            public.check(Need::Ticket, via, &none, None),
            Err(Refusal::MissingToken)
        );
    }
}
