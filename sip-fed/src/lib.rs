//! fedgate-sip: SIP federation over mutual TLS on 5061 (Lync, Skype for Business, Office 365),
//! RFC 3263 / `_sipfederationtls._tcp` discovery, transactions and dialogs, and the XMPP⇄SIP
//! mapping of addresses, errors, presence and instant messages.
//!
//! Nothing lives here yet: the SIP federation issue fills this room. It may use `certs` and
//! `policy`, and hands stanzas to the router through typed channels; it may not know the router.
