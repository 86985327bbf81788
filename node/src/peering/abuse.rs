//! `reportAbuse` (protocol-06 §5.9, MIMI.md §5.8) as the hub of the reported room serves it,
//! to a reporter's provider, and what the client API shares with it ([`record_report`]).
//!
//! Every `AbusiveMessage` is validated before anything is stored
//! ([`crate::franking::FrankingKeys::validate_report`]): the content must name the reported
//! room and the alleged abuser (MIMI content extensions 2 and 1), the franking tag is
//! recomputed from the revealed content and its salt, `server_frank` from the tag, sender,
//! room and `accepted_timestamp` with our `hub_key`, and the integrity signature is checked
//! under our franking key. Any altered byte of content, timestamp, sender, room or signature
//! is a 400 naming the message and the check, and nothing is stored. A valid report is
//! recorded in the room's shard (201); a room at its bound of reports answers 507 and counts
//! `mimid_limit_hits_total{limit="abuse_reports"}`.
//!
//! The reporting user, when the report names one, must be a user of the calling provider
//! (MIMI.md §7.1 step 2) and not blocked here.

use http::StatusCode;
use mimid_actors::command::Submitter;
use mimid_actors::hub::Hub;
use mimid_actors::ids::RoomId;

use super::{created, forbidden, MimiService};
use crate::api::{Answer, Refusal};
use crate::federation::PeerRequest;
use crate::franking::Franking;
use crate::metrics::Limit;
use crate::wire::abuse::AbuseReport;
use crate::wire::Decode;

impl MimiService {
    /// protocol-06 §5.9 from the reporter's provider, for a room hosted here.
    pub(super) async fn report_abuse(&self, req: PeerRequest) -> Answer {
        let room = self.hosted_room(&req.param).await?;
        let report = AbuseReport::from_bytes(&req.body, &self.limits)?;
        if !report.reporting_user.as_bytes().is_empty() {
            let reporter = report.reporting_user.user("AbuseReport.reportingUser")?;
            if reporter.domain() != req.from {
                return Err(forbidden(format!(
                    "provider {} cannot report as {reporter}",
                    req.from
                )));
            }
            self.refuse_blocked(&reporter)?;
        }
        record_report(
            &self.hub,
            &self.franking,
            room,
            &report,
            Submitter::Provider(req.from),
        )
        .await
    }
}

/// Validates `report` for `room`, hosted here, and stores it (see the module docs): 201, 400
/// with the reason of the first refused message, or 507 when the room holds the most reports
/// it keeps.
pub(crate) async fn record_report(
    hub: &Hub,
    franking: &Franking,
    room: RoomId,
    report: &AbuseReport,
    submitter: Submitter,
) -> Answer {
    let alleged = report
        .alleged_abuser_uri
        .user("AbuseReport.allegedAbuserUri")?;
    let stored = franking
        .keys()
        .validate_report(&room, report, submitter)
        .map_err(|reason| {
            tracing::info!(%room, %alleged, %reason, "abuse report refused");
            Refusal::bad_request(reason)
        })?;
    match hub.record_abuse_report(room.clone(), stored).await? {
        Ok(count) => {
            tracing::info!(%room, %alleged, count, "abuse report recorded");
            Ok(created())
        }
        Err(full) => {
            let mut refusal = Refusal::new(
                StatusCode::INSUFFICIENT_STORAGE,
                format!("{full}: the operator has not worked through them yet"),
            );
            refusal.limit = Some(Limit::AbuseReports);
            Err(refusal)
        }
    }
}
