//! The HTTP side of WHIP and WHEP that knows nothing of sessions: answers with their CORS
//! headers, the preflight, content types, the codec check of an
//! offer, the status for a refusal, and the ICE servers as `Link` headers.
//!
//! Pure functions of headers and bodies: nothing here talks to the hub or holds state.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use miclink_protocol::{ErrorCode, IceServer};

/// An HTTP answer with the CORS headers every WHIP answer carries (browser players and
/// publishers run on other origins).
pub(super) fn answer(status: StatusCode, body: impl Into<String>) -> Response {
    let mut r = (status, body.into()).into_response();
    cors(r.headers_mut());
    r
}

fn cors(h: &mut HeaderMap) {
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    h.insert(
        "access-control-expose-headers",
        HeaderValue::from_static("Location, Link, ETag, Accept-Post"),
    );
}

pub(super) async fn preflight() -> Response {
    let mut r = answer(StatusCode::NO_CONTENT, "");
    let h = r.headers_mut();
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("POST, PATCH, DELETE, OPTIONS"),
    );
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("Authorization, Content-Type, If-Match"),
    );
    h.insert("access-control-max-age", HeaderValue::from_static("600"));
    h.insert("accept-post", HeaderValue::from_static("application/sdp"));
    r
}

pub(super) fn content_type_is(headers: &HeaderMap, want: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(want))
}

pub(super) fn unauthorized(why: impl std::fmt::Display) -> Response {
    let mut r = answer(StatusCode::UNAUTHORIZED, format!("{why}\n"));
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// Whether an offer carries a codec the server forwards (Opus, VP8, H.264) in some m-section.
pub(super) fn has_forwarded_codec(sdp: &miclink_sfu::Sdp) -> bool {
    sdp.lists_codec(&["opus", "vp8", "h264"])
}

/// The HTTP status for a refused join or publish.
pub(super) fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Banned => StatusCode::FORBIDDEN,
        ErrorCode::RoomExists | ErrorCode::AlreadyJoined => StatusCode::CONFLICT,
        ErrorCode::RoomNotFound | ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::BadRequest | ErrorCode::BadSdp => StatusCode::BAD_REQUEST,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::NotImplemented => StatusCode::NOT_IMPLEMENTED,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// One `Link` value per ICE server URL (RFC 9725 section 4.6; one header line each, which
/// every client parses).
pub(super) fn links(servers: &[IceServer]) -> Vec<HeaderValue> {
    // A configured value with a quote or a backslash could not be quoted plainly; none the
    // server makes has one.
    let quoted = |s: &str| s.replace(['"', '\\'], "");
    servers
        .iter()
        .flat_map(|s| s.urls.iter().map(move |url| (s, url)))
        .filter_map(|(s, url)| {
            let mut v = format!("<{}>; rel=\"ice-server\"", quoted(url));
            if let (Some(u), Some(c)) = (&s.username, &s.credential) {
                v += &format!(
                    "; username=\"{}\"; credential=\"{}\"; credential-type=\"password\"",
                    quoted(u),
                    quoted(c)
                );
            }
            HeaderValue::from_str(&v).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::bearer;

    #[test]
    fn codecs_and_links() {
        let offer = |codec: &str| {
            let text = format!(
                "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
                 m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:96 {codec}/90000\r\n"
            );
            miclink_sfu::Sdp::parse(&text).expect("an offer")
        };
        assert!(has_forwarded_codec(&offer("H264")));
        assert!(!has_forwarded_codec(&offer("AV1")));
        let servers = vec![
            IceServer {
                urls: vec!["stun:127.0.0.1:3478".into()],
                username: None,
                credential: None,
            },
            IceServer {
                urls: vec!["turn:127.0.0.1:3478?transport=udp".into()],
                username: Some("1700000000:anchor".into()),
                credential: Some("c\"x".into()),
            },
        ];
        let links: Vec<String> = links(&servers)
            .iter()
            .map(|v| v.to_str().expect("ascii").to_owned())
            .collect();
        assert_eq!(
            links,
            vec![
                "<stun:127.0.0.1:3478>; rel=\"ice-server\"".to_owned(),
                "<turn:127.0.0.1:3478?transport=udp>; rel=\"ice-server\"; username=\"1700000000:anchor\"; credential=\"cx\"; credential-type=\"password\"".to_owned(),
            ]
        );
    }

    #[test]
    fn bearer_tokens() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer "));
        assert_eq!(bearer(&h), None);
    }
}
