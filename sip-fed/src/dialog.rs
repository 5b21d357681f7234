//! RFC 3261 §12 dialogs, sans-IO: identity (Call-ID + tags), CSeq bookkeeping, remote target,
//! route set and in-dialog request construction with loose (`;lr`) and strict routing.
//!
//! Route and Record-Route values are copied byte for byte (Microsoft edges put state in
//! `opaque=` and sign it with `ms-route-sig=`; any change breaks the route). URIs stay raw
//! strings; the From/To of the dialog keep every parameter they were created with (`epid=`).
//!
//! Typical UAS use: `Dialog::uas(&invite, &new_tag(), contact)`, answer with
//! [`Dialog::response_to`], file it under [`Dialog::id`], later look it up with
//! [`DialogId::for_incoming_request`] and vet each request with
//! [`Dialog::on_remote_request`]. UAC: send the request, on a 1xx/2xx with a To tag call
//! [`Dialog::uac`], on the 2xx [`Dialog::confirm`] and send [`Dialog::ack`] (the ACK for a 2xx
//! is not part of any transaction, see `txn`).

use crate::hdr::{HdrError, NameAddr, new_branch, uri_has_param};
use crate::msg::SipMessage;

/// Why a dialog could not be created or updated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DialogError {
    /// A header needed for the dialog is missing or malformed.
    #[error(transparent)]
    Header(#[from] HdrError),
    /// From (UAS) or To (UAC) carries no tag.
    #[error("{0} header has no tag")]
    MissingTag(&'static str),
    /// The response cannot create or confirm a dialog (needs 101..=299).
    #[error("status {0} does not establish a dialog")]
    NotEstablishing(u16),
    /// Call-ID or tags of the response do not belong to this dialog or request.
    #[error("response does not belong to this dialog")]
    Mismatch,
}

/// Dialog identifier (§12): Call-ID, local tag, remote tag, seen from our side.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DialogId {
    /// Call-ID.
    pub call_id: String,
    /// Our tag.
    pub local_tag: String,
    /// The peer's tag.
    pub remote_tag: String,
}

fn tag_of(msg: &SipMessage, header: &'static str) -> Option<String> {
    let v = msg.header(header)?;
    NameAddr::parse(v).ok()?.tag().map(str::to_owned)
}

impl DialogId {
    /// For a request we received: local tag from To, remote tag from From. None when either
    /// tag is missing (not an in-dialog request).
    pub fn for_incoming_request(req: &SipMessage) -> Option<Self> {
        Some(Self {
            call_id: req.call_id()?.to_owned(),
            local_tag: tag_of(req, "To")?,
            remote_tag: tag_of(req, "From")?,
        })
    }

    /// For a response we received: local tag from From, remote tag from To.
    pub fn for_incoming_response(resp: &SipMessage) -> Option<Self> {
        Some(Self {
            call_id: resp.call_id()?.to_owned(),
            local_tag: tag_of(resp, "From")?,
            remote_tag: tag_of(resp, "To")?,
        })
    }
}

/// Early (after a 1xx with a tag) or confirmed (after a 2xx).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogState {
    /// Created by a provisional response.
    Early,
    /// Created or confirmed by a 2xx (or created as UAS).
    Confirmed,
}

/// One dialog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialog {
    /// Identity.
    pub id: DialogId,
    /// Early or confirmed.
    pub state: DialogState,
    /// Our party (From of our requests), with our tag.
    local: NameAddr,
    /// The peer (To of our requests), with its tag.
    remote: NameAddr,
    /// CSeq of the last request we sent in this dialog (0: none yet).
    pub local_cseq: u32,
    /// CSeq of the last request the peer sent (None: none yet).
    pub remote_cseq: Option<u32>,
    /// Where in-dialog requests go (the peer's Contact URI).
    pub remote_target: String,
    /// Route set, in the order our requests carry it, each value byte-exact.
    pub route_set: Vec<String>,
    /// `sips:` dialog (§12.1.1).
    pub secure: bool,
    /// Our Contact header value, sent in target-refresh requests and responses.
    pub local_contact: String,
}

/// Methods that (re)set the remote target (RFC 3261 §12.2, RFC 6665 §4.1.2.1 for NOTIFY).
fn is_target_refresh(method: &str) -> bool {
    matches!(
        method,
        "INVITE" | "UPDATE" | "SUBSCRIBE" | "NOTIFY" | "REFER"
    )
}

fn is_sips(uri: &str) -> bool {
    uri.get(..5)
        .is_some_and(|s| s.eq_ignore_ascii_case("sips:"))
}

fn contact_uri(msg: &SipMessage) -> Result<String, DialogError> {
    let c = msg
        .headers("Contact")
        .next()
        .ok_or(HdrError::Missing("Contact"))?;
    Ok(NameAddr::parse(c)?.uri().to_owned())
}

fn name_addr(msg: &SipMessage, header: &'static str) -> Result<NameAddr, DialogError> {
    let v = msg.header(header).ok_or(HdrError::Missing(header))?;
    Ok(NameAddr::parse(v)?)
}

impl Dialog {
    /// The dialog a request we received creates, as UAS (§12.1.1). `local_tag` goes into the
    /// To of our responses (use `hdr::new_tag()`), `local_contact` is our Contact header value.
    /// The route set is the request's Record-Route, in order; the remote target its Contact.
    pub fn uas(
        request: &SipMessage,
        local_tag: &str,
        local_contact: &str,
    ) -> Result<Self, DialogError> {
        let call_id = request.call_id().ok_or(HdrError::Missing("Call-ID"))?;
        let remote = name_addr(request, "From")?;
        let remote_tag = remote
            .tag()
            .ok_or(DialogError::MissingTag("From"))?
            .to_owned();
        let mut local = name_addr(request, "To")?;
        local.set_tag(local_tag);
        let (cseq, _) = request.cseq().ok_or(HdrError::Missing("CSeq"))?;
        let uri = request.uri().unwrap_or_default();
        let tls = request
            .top_via()
            .and_then(|v| crate::hdr::Via::parse(v).ok())
            .is_some_and(|v| v.transport() == "TLS");
        Ok(Self {
            id: DialogId {
                call_id: call_id.to_owned(),
                local_tag: local_tag.to_owned(),
                remote_tag,
            },
            state: DialogState::Confirmed,
            local,
            remote,
            local_cseq: 0,
            remote_cseq: Some(cseq),
            remote_target: contact_uri(request)?,
            route_set: request.headers("Record-Route").map(str::to_owned).collect(),
            secure: is_sips(uri) && tls,
            local_contact: local_contact.to_owned(),
        })
    }

    /// The dialog a response to our request creates, as UAC (§12.1.2). The response must be
    /// 101..=299 with a To tag; a 1xx gives an early dialog. The route set is the response's
    /// Record-Route reversed; the remote target its Contact.
    pub fn uac(request_sent: &SipMessage, response: &SipMessage) -> Result<Self, DialogError> {
        let code = response.code().unwrap_or(0);
        if !(101..=299).contains(&code) {
            return Err(DialogError::NotEstablishing(code));
        }
        let call_id = request_sent.call_id().ok_or(HdrError::Missing("Call-ID"))?;
        if response.call_id() != Some(call_id) {
            return Err(DialogError::Mismatch);
        }
        let local = name_addr(request_sent, "From")?;
        let local_tag = local
            .tag()
            .ok_or(DialogError::MissingTag("From"))?
            .to_owned();
        let remote = name_addr(response, "To")?;
        let remote_tag = remote
            .tag()
            .ok_or(DialogError::MissingTag("To"))?
            .to_owned();
        let (cseq, _) = request_sent.cseq().ok_or(HdrError::Missing("CSeq"))?;
        let local_contact = request_sent
            .headers("Contact")
            .next()
            .ok_or(HdrError::Missing("Contact"))?
            .to_owned();
        let mut route_set: Vec<String> = response
            .headers("Record-Route")
            .map(str::to_owned)
            .collect();
        route_set.reverse();
        Ok(Self {
            id: DialogId {
                call_id: call_id.to_owned(),
                local_tag,
                remote_tag,
            },
            state: if code < 200 {
                DialogState::Early
            } else {
                DialogState::Confirmed
            },
            local,
            remote,
            local_cseq: cseq,
            remote_cseq: None,
            remote_target: contact_uri(response)?,
            route_set,
            secure: is_sips(request_sent.uri().unwrap_or_default()),
            local_contact,
        })
    }

    /// Confirm an early UAC dialog with the 2xx (§13.2.2.4): the route set is recomputed from
    /// its Record-Route and the remote target from its Contact.
    pub fn confirm(&mut self, response_2xx: &SipMessage) -> Result<(), DialogError> {
        let code = response_2xx.code().unwrap_or(0);
        if !(200..=299).contains(&code) {
            return Err(DialogError::NotEstablishing(code));
        }
        if DialogId::for_incoming_response(response_2xx).as_ref() != Some(&self.id) {
            return Err(DialogError::Mismatch);
        }
        self.remote_target = contact_uri(response_2xx)?;
        if self.state == DialogState::Early {
            let mut rs: Vec<String> = response_2xx
                .headers("Record-Route")
                .map(str::to_owned)
                .collect();
            rs.reverse();
            self.route_set = rs;
        }
        self.state = DialogState::Confirmed;
        Ok(())
    }

    /// The Call-ID.
    pub fn call_id(&self) -> &str {
        &self.id.call_id
    }

    /// Our URI (From of our requests), as written.
    pub fn local_uri(&self) -> &str {
        self.local.uri()
    }

    /// The peer's URI (To of our requests), as written.
    pub fn remote_uri(&self) -> &str {
        self.remote.uri()
    }

    /// The From header value of our requests (our name-addr with our tag).
    pub fn local_header(&self) -> String {
        self.local.to_string()
    }

    /// The To header value of our requests (the peer's name-addr with its tag).
    pub fn remote_header(&self) -> String {
        self.remote.to_string()
    }

    /// Build an in-dialog request with a fresh branch; see [`Dialog::request_with_branch`].
    pub fn request(&mut self, method: &str, via_sent_by: &str) -> SipMessage {
        self.request_with_branch(method, via_sent_by, &new_branch())
    }

    /// Build an in-dialog request (§12.2.1.1): CSeq is `local_cseq + 1` (ACK reuses
    /// `local_cseq`, the INVITE's), Via `SIP/2.0/TLS <via_sent_by>;branch=<branch>`,
    /// `Max-Forwards: 70`, From/To/Call-ID of the dialog, Contact for target-refresh methods,
    /// `Content-Length: 0`. Routing:
    /// * empty route set: Request-URI = remote target, no Route;
    /// * first route has `lr` (loose): Request-URI = remote target, Route = the route set;
    /// * otherwise (strict): Request-URI = the first route's URI (its `?headers` part removed),
    ///   Route = the rest of the route set followed by `<remote target>`.
    ///
    /// The caller sets the body and Content-Type.
    pub fn request_with_branch(
        &mut self,
        method: &str,
        via_sent_by: &str,
        branch: &str,
    ) -> SipMessage {
        if method == "ACK" {
            return self.build(method, self.local_cseq, via_sent_by, branch);
        }
        self.local_cseq = self.local_cseq.wrapping_add(1);
        self.build(method, self.local_cseq, via_sent_by, branch)
    }

    /// The ACK for a 2xx to our INVITE with CSeq `invite_cseq` (§13.2.2.4), fresh branch.
    pub fn ack(&self, invite_cseq: u32, via_sent_by: &str) -> SipMessage {
        self.build("ACK", invite_cseq, via_sent_by, &new_branch())
    }

    fn build(&self, method: &str, cseq: u32, via_sent_by: &str, branch: &str) -> SipMessage {
        let first_route = self.route_set.first().and_then(|r| NameAddr::parse(r).ok());
        let strict = first_route
            .as_ref()
            .is_some_and(|r| !uri_has_param(r.uri(), "lr"));
        let (ruri, routes): (String, Vec<String>) = match first_route {
            Some(first) if strict => {
                let uri = first.uri().split('?').next().unwrap_or_default().to_owned();
                let mut routes: Vec<String> = self.route_set[1..].to_vec();
                routes.push(format!("<{}>", self.remote_target));
                (uri, routes)
            }
            _ => (self.remote_target.clone(), self.route_set.clone()),
        };
        let mut m = SipMessage::request(method, ruri);
        m.push_header("Via", format!("SIP/2.0/TLS {via_sent_by};branch={branch}"));
        m.push_header("Max-Forwards", "70");
        for r in routes {
            m.push_header("Route", r);
        }
        m.push_header("From", self.local.to_string());
        m.push_header("To", self.remote.to_string());
        m.push_header("Call-ID", self.id.call_id.clone());
        m.push_header("CSeq", format!("{cseq} {method}"));
        if is_target_refresh(method) {
            m.push_header("Contact", self.local_contact.clone());
        }
        m.push_header("Content-Length", "0");
        m
    }

    /// Vet a request the peer sent in this dialog (§12.2.2) and apply it: wrong Call-ID or
    /// tags → `481`; no CSeq → `400`; a CSeq lower than the last one → `500`; otherwise the
    /// remote CSeq is updated and target-refresh requests (INVITE, UPDATE, SUBSCRIBE, NOTIFY,
    /// REFER) with a Contact update the remote target. ACK and CANCEL are checked for identity
    /// only.
    pub fn on_remote_request(&mut self, req: &SipMessage) -> Result<(), (u16, &'static str)> {
        if DialogId::for_incoming_request(req).as_ref() != Some(&self.id) {
            return Err((481, "Call/Transaction Does Not Exist"));
        }
        let Some((cseq, _)) = req.cseq() else {
            return Err((400, "Bad CSeq"));
        };
        let method = req.method().unwrap_or_default();
        if matches!(method, "ACK" | "CANCEL") {
            return Ok(());
        }
        if self.remote_cseq.is_some_and(|r| cseq < r) {
            return Err((500, "Server Internal Error"));
        }
        self.remote_cseq = Some(cseq);
        if is_target_refresh(method)
            && let Ok(target) = contact_uri(req)
        {
            self.remote_target = target;
        }
        Ok(())
    }

    /// Our response to a request in (or creating) this dialog: `SipMessage::response_to` plus
    /// our To tag; for 101..=299 to a target-refresh request also our Contact, and for
    /// INVITE/SUBSCRIBE/REFER the request's Record-Route copied byte-exact (§12.1.1).
    pub fn response_to(&self, req: &SipMessage, code: u16, reason: &str) -> SipMessage {
        let mut resp = SipMessage::response_to(req, code, reason);
        let _ = resp.set_to_tag(&self.id.local_tag); // To was copied; it parsed when we built the dialog
        let method = req.method().unwrap_or_default();
        if (101..=299).contains(&code) {
            if matches!(method, "INVITE" | "SUBSCRIBE" | "REFER") {
                let after_via = resp.headers.iter().take_while(|h| h.is("Via")).count();
                let rr: Vec<_> = req
                    .headers
                    .iter()
                    .filter(|h| h.is("Record-Route"))
                    .cloned()
                    .collect();
                resp.headers.splice(after_via..after_via, rr);
            }
            if is_target_refresh(method) {
                let at = resp.headers.len() - 1; // before Content-Length
                resp.headers.insert(
                    at,
                    crate::msg::Header::new("Contact", self.local_contact.clone()),
                );
            }
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &[u8] = include_bytes!("../fixtures/ms-invite-im.sip");
    const MESSAGE: &[u8] = include_bytes!("../fixtures/ms-message-in-dialog.sip");
    const BYE: &[u8] = include_bytes!("../fixtures/ms-bye.sip");
    /// The To tag the fixtures' in-dialog requests carry.
    const GW_TAG: &str = "gw8Kq2Lm4Nn6Pp8R";
    const GW_CONTACT: &str = "<sip:alice@gw.example.test:5061;transport=tls>";
    const EDGE_RR: &str = "<sip:edge.lync.test:5061;transport=tls;opaque=state:T;lr;ms-route-sig=gaQ1w2E3r4T5y6U7i8O9p0AsDfGhJkL>";
    const FE_RR: &str = "<sip:fe01.lync.test:5061;transport=tls;opaque=state:T:F:Ci.R2b00;lr;ms-route-sig=faZxCvBnM1234567890qWeRtYuIoP>;tag=3B4C5D6E7F8091A2";

    fn parse(b: &[u8]) -> SipMessage {
        SipMessage::parse(b).expect("fixture parses")
    }

    fn uas() -> Dialog {
        Dialog::uas(&parse(INVITE), GW_TAG, GW_CONTACT).expect("uas dialog")
    }

    #[test]
    fn uas_dialog_from_microsoft_invite() {
        let d = uas();
        assert_eq!(d.id.call_id, "5c1f0e8a9b2d4e6f8a0b1c2d3e4f5a6b");
        assert_eq!(d.id.local_tag, GW_TAG);
        assert_eq!(d.id.remote_tag, "4a7c2e19d3");
        assert_eq!(
            d.remote_target,
            "sip:bob@lync.test;opaque=user:epid:qZ3kX9mPLk2Tn8YwR0aB4g;gruu"
        );
        assert_eq!(d.route_set, [EDGE_RR, FE_RR]);
        assert_eq!(d.remote_cseq, Some(1));
        assert_eq!(d.local_uri(), "sip:alice@example.test");
        assert_eq!(d.remote_uri(), "sip:bob@lync.test");
        assert!(!d.secure);
        assert_eq!(
            DialogId::for_incoming_request(&parse(MESSAGE)).as_ref(),
            Some(&d.id)
        );
    }

    #[test]
    fn uas_response_carries_tag_record_route_and_contact() {
        let d = uas();
        let inv = parse(INVITE);
        let ok = d.response_to(&inv, 200, "OK");
        assert_eq!(
            ok.header("To"),
            Some("<sip:alice@example.test>;tag=gw8Kq2Lm4Nn6Pp8R")
        );
        assert_eq!(
            ok.headers("Record-Route").collect::<Vec<_>>(),
            [EDGE_RR, FE_RR]
        );
        assert_eq!(ok.header("Contact"), Some(GW_CONTACT));
        let names: Vec<_> = ok.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "Via",
                "Via",
                "Record-Route",
                "Record-Route",
                "From",
                "To",
                "Call-ID",
                "CSeq",
                "Contact",
                "Content-Length"
            ]
        );
        let busy = d.response_to(&inv, 486, "Busy Here");
        assert_eq!(busy.header("Record-Route"), None);
        assert_eq!(busy.header("Contact"), None);
    }

    #[test]
    fn uas_in_dialog_request_uses_loose_routing_and_counts_cseq() {
        let mut d = uas();
        let bye = d.request_with_branch("BYE", "gw.example.test:5061", "z9hG4bKfixed");
        assert_eq!(bye.uri(), Some(d.remote_target.as_str()));
        assert_eq!(bye.headers("Route").collect::<Vec<_>>(), [EDGE_RR, FE_RR]);
        assert_eq!(
            bye.header("Via"),
            Some("SIP/2.0/TLS gw.example.test:5061;branch=z9hG4bKfixed")
        );
        assert_eq!(
            bye.header("From"),
            Some("<sip:alice@example.test>;tag=gw8Kq2Lm4Nn6Pp8R")
        );
        assert_eq!(
            bye.header("To"),
            Some("\"Bob Lync\" <sip:bob@lync.test>;tag=4a7c2e19d3;epid=7f3a92b01c")
        );
        assert_eq!(bye.cseq(), Some((1, "BYE")));
        assert_eq!(bye.header("Contact"), None);
        let msg = d.request("MESSAGE", "gw.example.test:5061");
        assert_eq!(msg.cseq(), Some((2, "MESSAGE")));
        let notify = d.request("NOTIFY", "gw.example.test:5061");
        assert_eq!(notify.header("Contact"), Some(GW_CONTACT));
        assert_ne!(msg.top_via(), notify.top_via(), "fresh branches");
        // It serializes and parses back.
        assert_eq!(SipMessage::parse(&bye.to_bytes()).expect("reparse"), bye);
    }

    #[test]
    fn remote_cseq_ordering_and_identity() {
        let mut d = uas();
        assert_eq!(d.on_remote_request(&parse(MESSAGE)), Ok(()));
        assert_eq!(d.remote_cseq, Some(2));
        assert_eq!(d.on_remote_request(&parse(BYE)), Ok(()));
        assert_eq!(d.remote_cseq, Some(3));
        // An older request is out of order.
        assert_eq!(
            d.on_remote_request(&parse(MESSAGE)),
            Err((500, "Server Internal Error"))
        );
        // Equal CSeq is not "lower".
        assert_eq!(d.on_remote_request(&parse(BYE)), Ok(()));
        // Another dialog.
        let mut other = parse(BYE);
        other.set_header("To", "<sip:alice@example.test>;tag=someoneelse");
        assert_eq!(
            d.on_remote_request(&other),
            Err((481, "Call/Transaction Does Not Exist"))
        );
        let mut no_cseq = parse(BYE);
        no_cseq.remove_headers("CSeq");
        assert_eq!(d.on_remote_request(&no_cseq), Err((400, "Bad CSeq")));
    }

    #[test]
    fn target_refresh_updates_remote_target() {
        let mut d = uas();
        let mut reinvite = parse(MESSAGE);
        reinvite.start = crate::msg::StartLine::Request {
            method: "INVITE".into(),
            uri: "sip:alice@gw.example.test:5061;transport=tls".into(),
        };
        reinvite.set_header("CSeq", "5 INVITE");
        reinvite.push_header("Contact", "<sip:bob@10.1.1.99:5061;transport=tls>");
        d.on_remote_request(&reinvite).expect("accepted");
        assert_eq!(d.remote_target, "sip:bob@10.1.1.99:5061;transport=tls");
        // A MESSAGE with a Contact does not refresh the target.
        let mut m = parse(MESSAGE);
        m.set_header("CSeq", "6 MESSAGE");
        m.push_header("Contact", "<sip:elsewhere@lync.test>");
        d.on_remote_request(&m).expect("accepted");
        assert_eq!(d.remote_target, "sip:bob@10.1.1.99:5061;transport=tls");
    }

    fn our_invite() -> SipMessage {
        let mut r = SipMessage::request("INVITE", "sip:bob@lync.test");
        r.push_header("Via", "SIP/2.0/TLS gw.example.test:5061;branch=z9hG4bK1");
        r.push_header("Max-Forwards", "70");
        r.push_header("From", "<sip:alice@example.test>;tag=ours");
        r.push_header("To", "<sip:bob@lync.test>");
        r.push_header("Call-ID", "cid@gw.example.test");
        r.push_header("CSeq", "10 INVITE");
        r.push_header("Contact", GW_CONTACT);
        r
    }

    fn their_response(code: u16, rr: &[&str]) -> SipMessage {
        let mut resp = SipMessage::response_to(&our_invite(), code, "OK");
        resp.set_to_tag("theirs").expect("tag");
        for r in rr {
            resp.push_header("Record-Route", *r);
        }
        resp.push_header("Contact", "<sip:bob@10.1.1.20:51234;transport=tls>");
        resp
    }

    #[test]
    fn uac_dialog_reverses_route_set_and_acks() {
        let resp = their_response(200, &[FE_RR, EDGE_RR]);
        let mut d = Dialog::uac(&our_invite(), &resp).expect("uac");
        assert_eq!(d.state, DialogState::Confirmed);
        assert_eq!(d.route_set, [EDGE_RR, FE_RR]);
        assert_eq!(d.id.local_tag, "ours");
        assert_eq!(d.id.remote_tag, "theirs");
        assert_eq!(DialogId::for_incoming_response(&resp).as_ref(), Some(&d.id));
        let ack = d.ack(10, "gw.example.test:5061");
        assert_eq!(ack.cseq(), Some((10, "ACK")));
        assert_eq!(ack.uri(), Some("sip:bob@10.1.1.20:51234;transport=tls"));
        assert_eq!(ack.headers("Route").collect::<Vec<_>>(), [EDGE_RR, FE_RR]);
        let msg = d.request("MESSAGE", "gw.example.test:5061");
        assert_eq!(msg.cseq(), Some((11, "MESSAGE")));
        assert_eq!(msg.header("To"), Some("<sip:bob@lync.test>;tag=theirs"));
    }

    #[test]
    fn strict_routing_when_first_route_lacks_lr() {
        let strict = "<sip:strict.lync.test:5061;transport=tls?X-Foo=1>";
        let loose = "<sip:edge.lync.test:5061;transport=tls;lr>";
        // Record-Route as received: [loose, strict] → route set reversed: [strict, loose].
        let resp = their_response(200, &[loose, strict]);
        let mut d = Dialog::uac(&our_invite(), &resp).expect("uac");
        let m = d.request("BYE", "gw.example.test:5061");
        assert_eq!(m.uri(), Some("sip:strict.lync.test:5061;transport=tls"));
        assert_eq!(
            m.headers("Route").collect::<Vec<_>>(),
            [loose, "<sip:bob@10.1.1.20:51234;transport=tls>"]
        );
    }

    #[test]
    fn early_dialog_is_confirmed_by_2xx() {
        let early = their_response(180, &["<sip:old.lync.test;lr>"]);
        let mut d = Dialog::uac(&our_invite(), &early).expect("early");
        assert_eq!(d.state, DialogState::Early);
        let ok = their_response(200, &[EDGE_RR]);
        d.confirm(&ok).expect("confirm");
        assert_eq!(d.state, DialogState::Confirmed);
        assert_eq!(d.route_set, [EDGE_RR]);
        let mut wrong = their_response(200, &[]);
        wrong.set_header("To", "<sip:bob@lync.test>;tag=fork2");
        assert_eq!(d.confirm(&wrong), Err(DialogError::Mismatch));
    }

    #[test]
    fn uac_refuses_non_establishing_responses() {
        let r = their_response(100, &[]);
        assert_eq!(
            Dialog::uac(&our_invite(), &r),
            Err(DialogError::NotEstablishing(100))
        );
        let mut untagged = SipMessage::response_to(&our_invite(), 200, "OK");
        untagged.push_header("Contact", "<sip:bob@x>");
        assert_eq!(
            Dialog::uac(&our_invite(), &untagged),
            Err(DialogError::MissingTag("To"))
        );
        let mut no_from_tag = parse(INVITE);
        no_from_tag.set_header("From", "<sip:bob@lync.test>");
        assert_eq!(
            Dialog::uas(&no_from_tag, "t", GW_CONTACT),
            Err(DialogError::MissingTag("From"))
        );
    }
}
