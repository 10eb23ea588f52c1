//! What a push carries, pure: an HTTP body (plain, or `multipart/*` with
//! an alert part and pictures) in, the vendor messages to pass on and the
//! pictures left out (names and sizes) out.
//!
//! Hikvision posts an alert as `multipart/form-data`: one part of XML or
//! JSON (`EventNotificationAlert`) and JPEG parts (`licensePlatePicture.jpg`,
//! `detectionPicture.jpg`); Dahua pushes text parts and pictures as
//! `multipart/x-mixed-replace` or `multipart/mixed`. Every part that is not
//! a picture (`image/*`, `application/octet-stream`, or a file name ending
//! in `.jpg`, `.jpeg`, `.png`, `.bmp`) is a message of its own, passed on
//! byte for byte; pictures never reach NATS.
//!
//! Limits: each message at most `max_message_bytes` ([`IntakeError::TooLarge`],
//! HTTP 413), at most [`MAX_PARTS`] parts and [`MAX_PART_HEAD_BYTES`] of
//! headers per part ([`IntakeError::Malformed`], HTTP 400).

use memchr::memmem;

/// Most parts one multipart body may have.
pub(crate) const MAX_PARTS: usize = 64;
/// Most bytes of one part's headers.
pub(crate) const MAX_PART_HEAD_BYTES: usize = 8 * 1024;
/// Longest picture name kept.
const MAX_NAME_CHARS: usize = 64;
/// Longest attachments text kept (the rest is summarised as a count).
const MAX_ATTACHMENTS_TEXT: usize = 1024;

/// Why a push cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IntakeError {
    /// A message is larger than allowed.
    TooLarge {
        /// Its size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The body is empty, not valid multipart, or holds no message.
    Malformed(String),
}

/// A picture left out of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attachment {
    /// Its file name (else part name), cleaned to a short token.
    pub(crate) name: String,
    /// Its size in bytes.
    pub(crate) bytes: usize,
}

/// What a push carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Extracted<'a> {
    /// The messages to pass on, in the order they came.
    pub(crate) messages: Vec<&'a [u8]>,
    /// The pictures left out.
    pub(crate) attachments: Vec<Attachment>,
}

/// Splits a push body of content type `content_type`.
pub(crate) fn extract<'a>(
    content_type: Option<&str>,
    body: &'a [u8],
    max_message_bytes: usize,
) -> Result<Extracted<'a>, IntakeError> {
    let boundary = content_type.and_then(multipart_boundary);
    let Some(boundary) = boundary else {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(IntakeError::Malformed("empty body".into()));
        }
        check_size(body, max_message_bytes)?;
        return Ok(Extracted {
            messages: vec![body],
            attachments: Vec::new(),
        });
    };
    let parts = split_multipart(body, &boundary)?;
    let mut extracted = Extracted {
        messages: Vec::new(),
        attachments: Vec::new(),
    };
    for part in parts {
        if part.is_picture() {
            extracted.attachments.push(Attachment {
                name: clean_name(part.filename.or(part.name).unwrap_or("unnamed")),
                bytes: part.body.len(),
            });
            continue;
        }
        if part.body.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        check_size(part.body, max_message_bytes)?;
        extracted.messages.push(part.body);
    }
    if extracted.messages.is_empty() {
        return Err(IntakeError::Malformed(
            "multipart body holds no alert part".into(),
        ));
    }
    Ok(extracted)
}

/// `name=bytes;...` of `attachments`, bounded; `None` when there are none.
pub(crate) fn attachments_text(attachments: &[Attachment]) -> Option<String> {
    if attachments.is_empty() {
        return None;
    }
    let mut text = String::new();
    for (index, attachment) in attachments.iter().enumerate() {
        let entry = format!("{}={}", attachment.name, attachment.bytes);
        if text.len() + entry.len() + 1 > MAX_ATTACHMENTS_TEXT {
            text.push_str(&format!(";+{} more", attachments.len() - index));
            break;
        }
        if !text.is_empty() {
            text.push(';');
        }
        text.push_str(&entry);
    }
    Some(text)
}

fn check_size(message: &[u8], limit: usize) -> Result<(), IntakeError> {
    if message.len() > limit {
        return Err(IntakeError::TooLarge {
            bytes: message.len(),
            limit,
        });
    }
    Ok(())
}

/// A picture's name as a short token: letters, digits, `.`, `-`, `_`.
fn clean_name(name: &str) -> String {
    name.chars()
        .take(MAX_NAME_CHARS)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// One part of a multipart body.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Part<'a> {
    name: Option<&'a str>,
    filename: Option<&'a str>,
    content_type: Option<&'a str>,
    body: &'a [u8],
}

impl Part<'_> {
    fn is_picture(&self) -> bool {
        let content_type = self.content_type.unwrap_or("").trim().to_ascii_lowercase();
        if content_type.starts_with("image/") || content_type == "application/octet-stream" {
            return true;
        }
        let name = self.filename.unwrap_or("").to_ascii_lowercase();
        [".jpg", ".jpeg", ".png", ".bmp"]
            .iter()
            .any(|suffix| name.ends_with(suffix))
    }
}

/// The boundary of a `multipart/*` content type, if it is one.
fn multipart_boundary(content_type: &str) -> Option<String> {
    let mut pieces = content_type.split(';');
    let media_type = pieces.next()?.trim();
    if !media_type
        .get(..10)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("multipart/"))
    {
        return None;
    }
    pieces.find_map(|piece| {
        let (key, value) = piece.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"').to_string())
            .filter(|boundary| !boundary.is_empty() && boundary.len() <= 200)
    })
}

/// Splits `body` at `--boundary` lines. Tolerant of what devices send: a
/// preamble, LF instead of CRLF, a missing closing delimiter.
fn split_multipart<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, IntakeError> {
    let delimiter = format!("--{boundary}");
    let finder = memmem::Finder::new(delimiter.as_bytes());
    let malformed = |what: &str| IntakeError::Malformed(format!("multipart body: {what}"));
    let Some(first) = finder.find(body) else {
        return Err(malformed("no boundary line"));
    };
    let mut position = first + delimiter.len();
    let mut parts = Vec::new();
    loop {
        let rest = &body[position..];
        if rest.starts_with(b"--") {
            break;
        }
        // The rest of the delimiter line.
        let Some(line_end) = memchr::memchr(b'\n', rest) else {
            break;
        };
        let part_start = position + line_end + 1;
        let next = finder
            .find(&body[part_start..])
            .map(|offset| part_start + offset);
        let part_end = next.unwrap_or(body.len());
        let part = parse_part(&body[part_start..part_end], next.is_some())?;
        if parts.len() == MAX_PARTS {
            return Err(malformed(&format!("more than {MAX_PARTS} parts")));
        }
        parts.push(part);
        let Some(next) = next else { break };
        position = next + delimiter.len();
    }
    Ok(parts)
}

/// One part: headers, an empty line, the body (whose line break before the
/// next delimiter belongs to the delimiter).
fn parse_part(bytes: &[u8], delimited: bool) -> Result<Part<'_>, IntakeError> {
    let malformed = |what: &str| IntakeError::Malformed(format!("multipart part: {what}"));
    // A part without headers starts with its blank line.
    let headless = bytes
        .strip_prefix(b"\r\n")
        .or_else(|| bytes.strip_prefix(b"\n"));
    let (head, body) = if let Some(body) = headless {
        (&b""[..], body)
    } else {
        match memmem::find(bytes, b"\r\n\r\n") {
            Some(end) if memmem::find(&bytes[..end], b"\n\n").is_none() => {
                (&bytes[..end], &bytes[end + 4..])
            }
            _ => match memmem::find(bytes, b"\n\n") {
                Some(end) => (&bytes[..end], &bytes[end + 2..]),
                None => return Err(malformed("no blank line after the headers")),
            },
        }
    };
    if head.len() > MAX_PART_HEAD_BYTES {
        return Err(malformed("headers too long"));
    }
    let head = std::str::from_utf8(head).map_err(|_| malformed("headers not UTF-8"))?;
    let mut body = body;
    if delimited {
        body = body
            .strip_suffix(b"\r\n")
            .or_else(|| body.strip_suffix(b"\n"))
            .unwrap_or(body);
    } else {
        // No closing delimiter: trailing line breaks are not content.
        while let Some(shorter) = body
            .strip_suffix(b"\n")
            .or_else(|| body.strip_suffix(b"\r"))
        {
            body = shorter;
        }
    }
    let mut part = Part {
        name: None,
        filename: None,
        content_type: None,
        body,
    };
    for line in head.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let key = key.trim();
        if key.eq_ignore_ascii_case("content-type") {
            part.content_type = Some(value.trim());
        } else if key.eq_ignore_ascii_case("content-disposition") {
            part.name = disposition_parameter(value, "name");
            part.filename = disposition_parameter(value, "filename");
        }
    }
    Ok(part)
}

/// A parameter of a `Content-Disposition` value (`name="x"`).
fn disposition_parameter<'a>(value: &'a str, wanted: &str) -> Option<&'a str> {
    value.split(';').find_map(|piece| {
        let (key, value) = piece.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case(wanted)
            .then(|| value.trim().trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALERT: &[u8] =
        include_bytes!("../../cctv-normalize/fixtures/hikvision/anpr_seatbelt.xml");

    /// What a Hikvision camera posts: the alert and two JPEGs.
    fn hikvision_multipart(boundary: &str, alert: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"anpr.xml\"; filename=\"anpr.xml\"\r\n\
                 Content-Type: application/xml\r\nContent-Length: {}\r\n\r\n",
                alert.len()
            )
            .as_bytes(),
        );
        body.extend_from_slice(alert);
        for (name, size) in [
            ("licensePlatePicture.jpg", 1200),
            ("detectionPicture.jpg", 48_213),
        ] {
            body.extend_from_slice(
                format!(
                    "\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\n\
                     Content-Type: image/jpeg\r\n\r\n"
                )
                .as_bytes(),
            );
            let mut jpeg = vec![0xff, 0xd8, 0xff, 0xe0];
            jpeg.resize(size, 0x5a);
            body.extend_from_slice(&jpeg);
        }
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        body
    }

    #[test]
    fn a_plain_body_is_one_message_and_an_empty_one_is_refused() {
        let extracted = extract(Some("application/xml"), ALERT, 1 << 20).unwrap();
        assert_eq!(extracted.messages, vec![ALERT]);
        assert!(extracted.attachments.is_empty());
        assert!(matches!(
            extract(None, b" \r\n", 100),
            Err(IntakeError::Malformed(_))
        ));
        assert_eq!(
            extract(None, &[b'x'; 101], 100),
            Err(IntakeError::TooLarge {
                bytes: 101,
                limit: 100
            })
        );
    }

    #[test]
    fn a_hikvision_multipart_push_passes_the_alert_on_byte_for_byte_and_keeps_the_pictures_out() {
        let body = hikvision_multipart("MIME_boundary", ALERT);
        let extracted = extract(
            Some("multipart/form-data; boundary=MIME_boundary"),
            &body,
            256 * 1024,
        )
        .unwrap();
        assert_eq!(extracted.messages, vec![ALERT]);
        assert_eq!(
            extracted.attachments,
            vec![
                Attachment {
                    name: "licensePlatePicture.jpg".into(),
                    bytes: 1200
                },
                Attachment {
                    name: "detectionPicture.jpg".into(),
                    bytes: 48_213
                },
            ]
        );
        assert_eq!(
            attachments_text(&extracted.attachments).as_deref(),
            Some("licensePlatePicture.jpg=1200;detectionPicture.jpg=48213")
        );
        // The alert's own limit applies to the alert, not to the pictures.
        assert!(matches!(
            extract(
                Some("multipart/form-data; boundary=MIME_boundary"),
                &body,
                100
            ),
            Err(IntakeError::TooLarge { .. })
        ));
    }

    #[test]
    fn lf_lines_a_quoted_boundary_and_a_missing_end_are_tolerated() {
        let body =
            b"preamble\n--b1\nContent-Type: text/plain\n\nCode=Heartbeat;action=Pulse;index=0\n\
                     --b1\nContent-Type: text/plain\n\nCode=TrafficParking;action=Start;index=1\n";
        let extracted = extract(
            Some("multipart/x-mixed-replace; boundary=\"b1\""),
            body,
            1024,
        )
        .unwrap();
        assert_eq!(
            extracted.messages,
            vec![
                &b"Code=Heartbeat;action=Pulse;index=0"[..],
                &b"Code=TrafficParking;action=Start;index=1"[..]
            ]
        );
    }

    #[test]
    fn broken_multipart_bodies_are_refused_with_a_reason() {
        let content_type = Some("multipart/form-data; boundary=zz");
        for (body, why) in [
            (&b"no delimiter at all"[..], "no boundary line"),
            (
                b"--zz\r\nContent-Type: text/plain\r\nno blank line",
                "blank line",
            ),
            (
                b"--zz\r\nContent-Type: image/jpeg\r\n\r\n\xff\xd8\r\n--zz--",
                "no alert part",
            ),
        ] {
            let Err(IntakeError::Malformed(reason)) = extract(content_type, body, 1024) else {
                panic!("accepted: {why}");
            };
            assert!(reason.contains(why), "{reason}");
        }
        let mut many = Vec::new();
        for _ in 0..=MAX_PARTS {
            many.extend_from_slice(b"--zz\r\nContent-Type: text/plain\r\n\r\nx\r\n");
        }
        assert!(matches!(
            extract(content_type, &many, 1024),
            Err(IntakeError::Malformed(_))
        ));
    }

    #[test]
    fn picture_names_are_cleaned_and_the_text_bounded() {
        let attachments: Vec<Attachment> = (0..100)
            .map(|n| Attachment {
                name: clean_name(&format!("pic {n};=\u{e9}.jpg")),
                bytes: n,
            })
            .collect();
        assert_eq!(attachments[1].name, "pic_1___.jpg");
        let text = attachments_text(&attachments).unwrap();
        assert!(text.len() <= MAX_ATTACHMENTS_TEXT + 16, "{}", text.len());
        assert!(text.ends_with(" more"), "{text}");
        assert_eq!(attachments_text(&[]), None);
        assert_eq!(multipart_boundary("application/json"), None);
        assert_eq!(
            multipart_boundary("Multipart/Mixed; charset=x; Boundary=ab"),
            Some("ab".into())
        );
    }
}
