//! A small, bounded XML tree for the XML vendor formats (Hikvision ISAPI,
//! ONVIF WS-Notification).
//!
//! Built on quick-xml, which never fetches external entities. On top of it
//! this parser refuses any document type declaration (so no entity can be
//! declared, hence no expansion bomb), resolves only the five predefined
//! entities and character references, bounds the nesting depth, and keeps
//! element names without their namespace prefix so that both Hikvision
//! namespaces and any ONVIF prefix choice read the same.

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;
use quick_xml::XmlVersion;

use crate::outcome::{RejectReason, Rejection};

/// One element: local name, attributes (local names), text and children.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct XmlElement {
    /// Local name, namespace prefix removed.
    pub(crate) name: String,
    /// Attributes as (local name, unescaped value).
    pub(crate) attributes: Vec<(String, String)>,
    /// Concatenated text and CDATA directly inside this element, trimmed.
    pub(crate) text: String,
    /// Child elements in document order.
    pub(crate) children: Vec<XmlElement>,
}

impl XmlElement {
    /// The first child with this local name.
    pub(crate) fn child(&self, name: &str) -> Option<&XmlElement> {
        self.children.iter().find(|child| child.name == name)
    }

    /// Every child with this local name.
    pub(crate) fn children_named<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = &'a XmlElement> + 'a {
        self.children.iter().filter(move |child| child.name == name)
    }

    /// The trimmed, non-empty text of the first child with this name.
    pub(crate) fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name)
            .map(|child| child.text.as_str())
            .filter(|text| !text.is_empty())
    }

    /// Follows a path of child names.
    pub(crate) fn path(&self, names: &[&str]) -> Option<&XmlElement> {
        names
            .iter()
            .try_fold(self, |element, name| element.child(name))
    }

    /// An attribute's value by local name.
    pub(crate) fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Every element below (and including) this one with this local name,
    /// in document order.
    pub(crate) fn descendants_named<'a>(&'a self, name: &str, found: &mut Vec<&'a XmlElement>) {
        if self.name == name {
            found.push(self);
        }
        for child in &self.children {
            child.descendants_named(name, found);
        }
    }
}

/// Parses an XML document into its root element.
///
/// Rejections: `dtd_forbidden` for any `<!DOCTYPE`, `too_deep` beyond
/// `max_depth`, `malformed` for syntax errors, unknown entities, a missing
/// root or content after the root.
pub(crate) fn parse(text: &str, max_depth: usize) -> Result<XmlElement, Rejection> {
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<XmlElement> = Vec::new();
    let mut root: Option<XmlElement> = None;
    loop {
        let event = reader.read_event().map_err(|error| {
            Rejection::new(
                RejectReason::Malformed,
                format!(
                    "XML syntax error at byte {}: {error}",
                    reader.error_position()
                ),
            )
        })?;
        match event {
            Event::Start(start) => {
                if root.is_some() {
                    return Err(trailing());
                }
                if stack.len() >= max_depth {
                    return Err(Rejection::new(
                        RejectReason::TooDeep,
                        format!("XML nests deeper than {max_depth} elements"),
                    ));
                }
                stack.push(element(&start)?);
            }
            Event::Empty(start) => {
                if root.is_some() {
                    return Err(trailing());
                }
                let element = element(&start)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(element),
                    None => root = Some(element),
                }
            }
            Event::End(_) => {
                let Some(mut done) = stack.pop() else {
                    return Err(malformed("an end tag without a start tag"));
                };
                let trimmed = done.text.trim();
                if trimmed.len() != done.text.len() {
                    done.text = trimmed.to_string();
                }
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => root = Some(done),
                }
            }
            Event::Text(text) => {
                // Text is kept untrimmed until the element ends: entity
                // references split it into several events.
                if let Some(current) = stack.last_mut() {
                    current.text.push_str(&text.xml10_content());
                } else if !text.trim().is_empty() {
                    return Err(malformed("text outside the root element"));
                }
            }
            Event::CData(data) => {
                let Some(current) = stack.last_mut() else {
                    return Err(malformed("CDATA outside the root element"));
                };
                current.text.push_str(&data);
            }
            Event::GeneralRef(reference) => {
                let resolved = if reference.is_char_ref() {
                    reference
                        .resolve_char_ref()
                        .ok()
                        .flatten()
                        .ok_or_else(|| malformed("invalid character reference"))?
                } else {
                    predefined_entity(&reference)
                        .ok_or_else(|| malformed("reference to an undeclared entity"))?
                };
                if let Some(current) = stack.last_mut() {
                    current.text.push(resolved);
                }
            }
            Event::DocType(_) => {
                return Err(Rejection::new(
                    RejectReason::DtdForbidden,
                    "XML document type declarations (DTD, entities) are not accepted",
                ));
            }
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(malformed("the document ends inside an element"));
    }
    root.ok_or_else(|| malformed("the document has no root element"))
}

fn element(start: &BytesStart<'_>) -> Result<XmlElement, Rejection> {
    let name = start.name().local_name().as_ref().to_string();
    let mut attributes = Vec::new();
    for attribute in start.attributes() {
        let attribute =
            attribute.map_err(|error| malformed(&format!("bad attribute on <{name}>: {error}")))?;
        let key = attribute.key.local_name().as_ref().to_string();
        let value = attribute
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|error| malformed(&format!("bad attribute value on <{name}>: {error}")))?
            .into_owned();
        attributes.push((key, value));
    }
    Ok(XmlElement {
        name,
        attributes,
        ..XmlElement::default()
    })
}

fn predefined_entity(name: &str) -> Option<char> {
    match name {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        _ => None,
    }
}

fn malformed(what: &str) -> Rejection {
    Rejection::new(RejectReason::Malformed, format!("XML: {what}"))
}

fn trailing() -> Rejection {
    malformed("more than one root element")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_their_prefixes_and_entities_resolve() {
        let root = parse(
            r#"<?xml version="1.0"?><a:Root xmlns:a="urn:x" b:k="v&amp;w"><a:Item>1 &lt; 2&#33;</a:Item><Empty x="1"/></a:Root>"#,
            8,
        )
        .unwrap();
        assert_eq!(root.name, "Root");
        assert_eq!(root.attribute("k"), Some("v&w"));
        assert_eq!(root.child_text("Item"), Some("1 < 2!"));
        assert_eq!(
            root.child("Empty").and_then(|e| e.attribute("x")),
            Some("1")
        );
    }

    #[test]
    fn dtds_depth_and_broken_documents_are_refused() {
        let bomb = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]><a>&lol2;</a>"#;
        assert_eq!(
            parse(bomb, 8).unwrap_err().reason,
            RejectReason::DtdForbidden
        );
        let deep = format!("{}{}", "<a>".repeat(40), "</a>".repeat(40));
        assert_eq!(parse(&deep, 32).unwrap_err().reason, RejectReason::TooDeep);
        for broken in [
            "",
            "<a>",
            "<a></b>",
            "<a/><b/>",
            "text",
            "<a>&nope;</a>",
            "<a x=1/>",
        ] {
            assert_eq!(
                parse(broken, 8).unwrap_err().reason,
                RejectReason::Malformed,
                "{broken}"
            );
        }
    }
}
