//! protocol-06 §5.9 (MIMI.md §5.8): `POST /reportAbuse/{roomId}` bodies.

use openmls::extensions::AppDataDictionary;

use super::codec::{Decode, Encode, Mls, Reader, WireError, Writer};
use super::submit::Frank;
use super::types::IdentifierUri;

/// `AbusiveMessage`: a franked message the reporter received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbusiveMessage {
    /// For example the MIMI content bytes (the hub re-derives the franking tag from them).
    pub message_content: Vec<u8>,
    pub frank: Frank,
    pub accepted_timestamp: u64,
}

impl Encode for AbusiveMessage {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        w.opaque("AbusiveMessage.message_content", &self.message_content)?;
        self.frank.encode(w)?;
        w.u64(self.accepted_timestamp);
        Ok(())
    }
}

impl Decode for AbusiveMessage {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(AbusiveMessage {
            message_content: r.opaque_vec("AbusiveMessage.message_content")?,
            frank: Frank::decode(r)?,
            accepted_timestamp: r.u64("AbusiveMessage.accepted_timestamp")?,
        })
    }
}

/// `enum { reserved(0), (255) } AbuseType;`
///
/// [IMPL CHOICE] The draft defines no value but `reserved(0)` (the taxonomy is TBD), so
/// rejecting unknown values would make every report undecodable: any `uint8` is accepted and
/// carried through unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AbuseType(pub u8);

impl Encode for AbuseType {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        w.u8(self.0);
        Ok(())
    }
}

impl Decode for AbuseType {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        r.u8("AbuseReport.reasonCode").map(AbuseType)
    }
}

/// `AbuseReport`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbuseReport {
    pub reporting_user: IdentifierUri,
    pub alleged_abuser_uri: IdentifierUri,
    pub reason_code: AbuseType,
    /// UTF-8, may be empty.
    pub note: String,
    pub messages: Vec<AbusiveMessage>,
    pub abuse_extensions: Mls<AppDataDictionary>,
}

impl Encode for AbuseReport {
    fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
        self.reporting_user.encode(w)?;
        self.alleged_abuser_uri.encode(w)?;
        self.reason_code.encode(w)?;
        w.string("AbuseReport.note", &self.note)?;
        w.vector_of("AbuseReport.messages", &self.messages)?;
        self.abuse_extensions.encode(w)
    }
}

impl Decode for AbuseReport {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(AbuseReport {
            reporting_user: IdentifierUri::decode(r)?,
            alleged_abuser_uri: IdentifierUri::decode(r)?,
            reason_code: AbuseType::decode(r)?,
            note: r.string("AbuseReport.note")?,
            messages: r.vector_of("AbuseReport.messages")?,
            abuse_extensions: r.mls("AbuseReport.abuse_extensions")?,
        })
    }
}
