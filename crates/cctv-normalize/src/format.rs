//! The payload formats named by the `<format>` token of `cctv.raw.<format>.<gateway_id>`.

/// A supported payload format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// The project's own canonical JSON (contract section 3).
    Canonical,
    /// Hikvision ISAPI `EventNotificationAlert`, XML or JSON.
    Hikvision,
    /// Dahua event stream text or RPC JSON.
    Dahua,
    /// ONVIF WS-Notification XML or onvif-ej JSON.
    Onvif,
    /// NVIDIA DeepStream `nvmsgconv` full schema.
    Deepstream,
    /// Frigate MQTT events.
    Frigate,
}

impl Format {
    /// Every format, in contract order.
    pub const ALL: [Format; 6] = [
        Format::Canonical,
        Format::Hikvision,
        Format::Dahua,
        Format::Onvif,
        Format::Deepstream,
        Format::Frigate,
    ];

    /// Parses the subject token; formats are lowercase on the wire.
    pub fn parse(token: &str) -> Option<Format> {
        Format::ALL
            .into_iter()
            .find(|format| format.as_str() == token)
    }

    /// The subject token and stored name of the format.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Canonical => "canonical",
            Format::Hikvision => "hikvision",
            Format::Dahua => "dahua",
            Format::Onvif => "onvif",
            Format::Deepstream => "deepstream",
            Format::Frigate => "frigate",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_unknown_tokens_are_refused() {
        for format in Format::ALL {
            assert_eq!(Format::parse(format.as_str()), Some(format));
        }
        assert_eq!(Format::parse("Canonical"), None);
        assert_eq!(Format::parse("axis"), None);
    }
}
