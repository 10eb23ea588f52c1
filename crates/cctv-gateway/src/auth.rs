//! Per-device authentication of HTTP pushes, a pure check: the device's
//! credential and what the request carries in, allowed or refused out.
//!
//! Basic auth (`Authorization: Basic base64(user:password)`, what Hikvision
//! and Dahua firmware send to an alarm host) or a token (`Authorization:
//! Bearer <token>`, or `?token=<token>` in the URL for devices that can set
//! nothing else). Secrets are compared in constant time. Digest auth is not
//! supported.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use cctv_normalize::Format;
use serde::Deserialize;

/// How a device proves who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    /// HTTP basic auth with the device's user name and password.
    Basic,
    /// A bearer token, in the `Authorization` header or the `token` query parameter.
    Token,
}

/// What a device must present, and what the gateway knows of it.
#[derive(Clone)]
pub(crate) struct Credential {
    /// Basic or token.
    pub(crate) kind: AuthKind,
    /// User name of basic auth.
    pub(crate) user: String,
    /// Password or token.
    pub(crate) secret: String,
    /// The format the device pushes.
    pub(crate) format: Format,
    /// The camera it is, when it is one.
    pub(crate) camera_id: Option<String>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("kind", &self.kind)
            .field("user", &self.user)
            .field("secret", &"<redacted>")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthFailure {
    /// Nothing usable was presented.
    Missing,
    /// Something was presented and it is wrong.
    Wrong,
}

/// Checks what a request presents against `credential`: its `Authorization`
/// header value and its `token` query parameter.
pub(crate) fn check(
    credential: &Credential,
    authorization: Option<&[u8]>,
    query_token: Option<&str>,
) -> Result<(), AuthFailure> {
    let header = authorization.and_then(|value| std::str::from_utf8(value).ok());
    match credential.kind {
        AuthKind::Basic => {
            let Some(encoded) = header.and_then(|value| strip_scheme(value, "basic")) else {
                return Err(AuthFailure::Missing);
            };
            let decoded = BASE64
                .decode(encoded.trim())
                .map_err(|_| AuthFailure::Wrong)?;
            let Some(colon) = decoded.iter().position(|&byte| byte == b':') else {
                return Err(AuthFailure::Wrong);
            };
            let (user, password) = (&decoded[..colon], &decoded[colon + 1..]);
            // Both compared, so the time does not tell which one was wrong.
            let user_ok = constant_time_eq(user, credential.user.as_bytes());
            let password_ok = constant_time_eq(password, credential.secret.as_bytes());
            if user_ok & password_ok {
                Ok(())
            } else {
                Err(AuthFailure::Wrong)
            }
        }
        AuthKind::Token => {
            let presented = header
                .and_then(|value| strip_scheme(value, "bearer"))
                .map(str::trim)
                .or(query_token);
            let Some(presented) = presented else {
                return Err(AuthFailure::Missing);
            };
            if constant_time_eq(presented.as_bytes(), credential.secret.as_bytes()) {
                Ok(())
            } else {
                Err(AuthFailure::Wrong)
            }
        }
    }
}

/// The rest of `value` after the auth scheme `scheme` (any case) and a space.
fn strip_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (given, rest) = value.trim_start().split_once(' ')?;
    given.eq_ignore_ascii_case(scheme).then_some(rest)
}

/// Equality whose time depends only on the lengths, not on where the
/// inputs differ.
fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    if left.len() != right.len() {
        return false;
    }
    left.iter()
        .zip(right)
        .fold(0u8, |difference, (a, b)| difference | (a ^ b))
        == 0
}

/// The value of the `token` parameter of a URL query, if any.
pub(crate) fn query_token(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| *name == "token")
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(kind: AuthKind) -> Credential {
        Credential {
            kind,
            user: "cam1".into(),
            secret: "s3cret".into(),
            format: Format::Hikvision,
            camera_id: None,
        }
    }

    fn basic(user_password: &str) -> Vec<u8> {
        format!("Basic {}", BASE64.encode(user_password)).into_bytes()
    }

    #[test]
    fn basic_auth_needs_the_user_and_the_password() {
        let basic_device = credential(AuthKind::Basic);
        assert_eq!(
            check(&basic_device, Some(&basic("cam1:s3cret")), None),
            Ok(())
        );
        let lower_scheme = format!("basic {}", BASE64.encode("cam1:s3cret"));
        assert_eq!(
            check(&basic_device, Some(lower_scheme.as_bytes()), None),
            Ok(())
        );
        for wrong in [
            "cam1:s3cre",
            "cam2:s3cret",
            "cam1:",
            "cam1s3cret",
            ":s3cret",
        ] {
            assert_eq!(
                check(&basic_device, Some(&basic(wrong)), None),
                Err(AuthFailure::Wrong),
                "{wrong}"
            );
        }
        assert_eq!(
            check(&basic_device, Some(b"Basic !!notbase64"), None),
            Err(AuthFailure::Wrong)
        );
        assert_eq!(check(&basic_device, None, None), Err(AuthFailure::Missing));
        // A token does not stand in for a password.
        assert_eq!(
            check(&basic_device, Some(b"Bearer s3cret"), Some("s3cret")),
            Err(AuthFailure::Missing)
        );
    }

    #[test]
    fn a_token_comes_in_the_header_or_the_query() {
        let token_device = credential(AuthKind::Token);
        assert_eq!(check(&token_device, Some(b"Bearer s3cret"), None), Ok(()));
        assert_eq!(check(&token_device, None, Some("s3cret")), Ok(()));
        assert_eq!(
            check(&token_device, Some(b"Bearer other"), Some("s3cret")),
            Err(AuthFailure::Wrong),
            "the header wins over the query"
        );
        assert_eq!(
            check(&token_device, None, Some("s3cre")),
            Err(AuthFailure::Wrong)
        );
        assert_eq!(check(&token_device, None, None), Err(AuthFailure::Missing));
    }

    #[test]
    fn query_tokens_and_redacted_debug() {
        assert_eq!(query_token(Some("a=1&token=xyz")), Some("xyz"));
        assert_eq!(query_token(Some("tokens=1")), None);
        assert_eq!(query_token(None), None);
        let text = format!("{:?}", credential(AuthKind::Token));
        assert!(!text.contains("s3cret"), "{text}");
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
