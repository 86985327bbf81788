//! The client API's abuse endpoints (node/API.md §4.14, §4.15; MIMI.md §5.3.1, §5.8, §6.8):
//! the provider's franking agent, which a client puts in the GroupContext of the rooms it
//! creates here, and abuse reports, which the reporter's client sends to its own provider.
//!
//! A report names the authenticated client's user as `reportingUser`; it is validated and
//! stored here when the room is hosted here ([`crate::peering::record_report`]), and
//! otherwise forwarded unchanged to the room's hub as protocol-06 `reportAbuse`, whose answer
//! is relayed.

use http::StatusCode;
use mimid_actors::command::Submitter;
use mimid_actors::ids::{ClientId, RoomId};

use super::{ok_body, require_own_user, Answer, ClientApi, Refusal};
use crate::federation::S2sEndpoint;
use crate::h3::Request;
use crate::peering::{record_report, Forwarder};
use crate::wire::abuse::AbuseReport;
use crate::wire::Decode;

impl ClientApi {
    /// `GET frankingAgent`: this provider's `FrankingAgentData` (protocol-06 §5.4.1), the
    /// GroupContext component 0x0021 of franked rooms hosted here.
    pub(super) fn franking_agent(&self) -> Answer {
        let agent = self.franking.keys().agent().map_err(|e| {
            Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("encoding the franking agent: {e}"),
            )
        })?;
        ok_body(StatusCode::OK, &agent)
    }

    /// `POST reportAbuse/{room}` (protocol-06 §5.9): the user's report of franked messages it
    /// received in `room`.
    pub(super) async fn report_abuse(
        &self,
        req: Request,
        client: ClientId,
        room: RoomId,
    ) -> Answer {
        let report = AbuseReport::from_bytes(&req.body, &self.limits)?;
        let reporter = report.reporting_user.user("AbuseReport.reportingUser")?;
        require_own_user("reportingUser", &reporter, &client)?;
        if !self.is_local(&room) {
            let answer = self
                .forwarder
                .forward(
                    room.domain(),
                    S2sEndpoint::ReportAbuse,
                    room.as_str(),
                    req.body,
                )
                .await?;
            return Ok(Forwarder::relay(answer));
        }
        if !self.hub.hosts(&room).await? {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                format!("room {room} is not hosted by {}", self.domain),
            ));
        }
        record_report(
            &self.hub,
            &self.franking,
            room,
            &report,
            Submitter::Client(client),
        )
        .await
    }
}
